"""Reference features for Tests/TaskTests (extract parity), from the shared mae_tiny fixture weights.

An ImageFolder of small PNG and JPEG images, and what PyTorch + timm compute from it with MAE's
eval transform (PIL bicubic resize of the short side to int(size / crop_ratio), center crop,
ToTensor, ImageNet Normalize): the cls token after the final norm and the mean of the normed patch
tokens, at the checkpoint's 32 px and at 48 px with pos_embed interpolated as MAE does.
Run: python scripts/make_extract_fixtures.py
"""
import json, os
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer
from torchvision import transforms

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "..", "Tests", "TaskTests", "Fixtures")
folder = os.path.join(root, "imagefolder")
weights = load_file(os.path.join(here, "..", "Tests", "TestSupport", "Fixtures", "mae_tiny.safetensors"))

rng = np.random.default_rng(0)
files = []
for cls in ["alpha", "beta"]:
    os.makedirs(os.path.join(folder, cls), exist_ok=True)
    for i in range(3):
        w, h = [(40, 36), (32, 32), (50, 44)][i]
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 5 + i * 40) % 256, (yy * 6 + (cls == "beta") * 90) % 256,
                        ((xx + yy) * 3) % 256], -1).astype(np.float64)
        img += rng.normal(0, 12, img.shape)
        img = np.clip(img, 0, 255).astype(np.uint8)
        ext = "jpg" if i == 2 else "png"
        path = os.path.join(folder, cls, f"img{i}.{ext}")
        Image.fromarray(img).save(path, quality=92) if ext == "jpg" else Image.fromarray(img).save(path)
        files.append(path)


def model_at(size):
    m = VisionTransformer(img_size=size, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0,
                          norm_layer=lambda d, **kw: nn.LayerNorm(d, eps=1e-6, **kw), global_pool="token")
    sd = {k: v for k, v in weights.items() if not k.startswith(("decoder", "mask_token", "expect", "input", "grad"))}
    pos = sd["pos_embed"]
    g = size // 8
    if pos.shape[1] != g * g + 1:  # MAE's interpolate_pos_embed
        tokens = pos[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
        tokens = F.interpolate(tokens, size=(g, g), mode="bicubic", align_corners=False)
        sd["pos_embed"] = torch.cat([pos[:, :1], tokens.permute(0, 2, 3, 1).flatten(1, 2)], 1)
    m.load_state_dict(sd, strict=True)
    return m.eval()


out = {"files": [os.path.relpath(f, folder) for f in sorted(files)], "cases": []}
for size, crop in [(32, 0.875), (32, 1.0), (48, 0.875)]:
    t = transforms.Compose([transforms.Resize(int(size / crop), interpolation=transforms.InterpolationMode.BICUBIC),
                            transforms.CenterCrop(size), transforms.ToTensor(),
                            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    x = torch.stack([t(Image.open(f).convert("RGB")) for f in sorted(files)])
    with torch.no_grad():
        tokens = model_at(size).forward_features(x)
    out["cases"].append({"img_size": size, "crop_ratio": crop, "cls": tokens[:, 0].flatten().tolist(),
                         "avg": tokens[:, 1:].mean(1).flatten().tolist()})
# A checkpoint never seen elsewhere: 3 heads, width 48, patch 16, 48 px, saved as MAE's
# main_pretrain.py saves a training checkpoint (model + optimizer + epoch + scaler + argparse args).
import argparse
torch.manual_seed(1)
other = VisionTransformer(img_size=48, patch_size=16, embed_dim=48, depth=2, num_heads=3, num_classes=0,
                          norm_layer=lambda d, **kw: nn.LayerNorm(d, eps=1e-6, **kw), global_pool="token")
with torch.no_grad():
    for p_ in other.parameters():
        p_.add_(torch.randn_like(p_) * 0.05)
opt = torch.optim.AdamW(other.parameters(), lr=1e-4)
other(torch.randn(1, 3, 48, 48)).sum().backward()
opt.step()
torch.save({"model": other.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0},
            "args": argparse.Namespace(model="mae_vit_custom", mask_ratio=0.75, blr=1.5e-4, epochs=4)},
           os.path.join(root, "train_ckpt_heads3.pth"))
t = transforms.Compose([transforms.Resize(int(48 / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
                        transforms.CenterCrop(48), transforms.ToTensor(),
                        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
x = torch.stack([t(Image.open(f).convert("RGB")) for f in sorted(files)])
with torch.no_grad():
    tokens = other.eval().forward_features(x)
out["heads3"] = {"img_size": 48, "crop_ratio": 0.875, "cls": tokens[:, 0].flatten().tolist(),
                 "avg": tokens[:, 1:].mean(1).flatten().tolist()}
with open(os.path.join(root, "extract_expected.json"), "w") as f:
    json.dump(out, f)
print("wrote", len(files), "images and", len(out["cases"]), "cases")
