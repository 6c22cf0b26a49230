"""bf16 reference for Tests/TaskTests (extract --precision bf16), from the shipped MAE Shapes checkpoint.

The features `extract` writes (cls token after the final norm; mean of the normed patch tokens), as
PyTorch + timm compute them on the extract fixture's ImageFolder with MAE's eval transform (32 px,
crop 0.875), in fp32 and under torch.autocast('cpu', dtype=torch.bfloat16), and how far autocast's are
from fp32's: max |autocast - fp32| / max |fp32|. The test holds mae-eval's bf16 features to at most
2x that error from its own fp32 features.
Run: python scripts/make_bf16_fixtures.py   (after scripts/make_extract_fixtures.py made the images)
"""
import json, os
import torch
import torch.nn as nn
from PIL import Image
from safetensors import safe_open
from timm.models.vision_transformer import VisionTransformer
from torchvision import transforms

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "..", "Tests", "TaskTests", "Fixtures")
folder = os.path.join(root, "imagefolder")
checkpoint = os.path.join(here, "..", "Checkpoints", "mae_shapes.safetensors")

with safe_open(checkpoint, "pt") as f:
    config = json.loads(f.metadata()["config"])
    weights = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(("decoder", "mask_token"))}
size, crop = config["imgSize"], 0.875
model = VisionTransformer(img_size=size, patch_size=config["patchSize"], embed_dim=config["embedDim"],
                          depth=config["depth"], num_heads=config["numHeads"],
                          mlp_ratio=config["mlpHidden"] / config["embedDim"], num_classes=0,
                          norm_layer=lambda d, **kw: nn.LayerNorm(d, eps=1e-6, **kw), global_pool="token")
model.load_state_dict(weights, strict=True)
model.eval()

files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(folder) for f in fs)
t = transforms.Compose([transforms.Resize(int(size / crop), interpolation=transforms.InterpolationMode.BICUBIC),
                        transforms.CenterCrop(size), transforms.ToTensor(),
                        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
x = torch.stack([t(Image.open(f).convert("RGB")) for f in files])


def features(autocast):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        tokens = model.forward_features(x).float()
    return {"cls": tokens[:, 0], "avg": tokens[:, 1:].mean(1)}


fp32, bf16 = features(False), features(True)
out = {"checkpoint": "Checkpoints/mae_shapes.safetensors", "img_size": size, "crop_ratio": crop,
       "files": [os.path.relpath(f, folder) for f in files], "torch": torch.__version__}
for pool in ["cls", "avg"]:
    err = ((bf16[pool] - fp32[pool]).abs().max() / fp32[pool].abs().max()).item()
    out[pool] = {"fp32": fp32[pool].flatten().tolist(), "autocast": bf16[pool].flatten().tolist(),
                 "autocast_error": err}
    print(f"{pool}: autocast max |error| / max |fp32 feature| = {err:.3e}")
with open(os.path.join(root, "bf16_extract_expected.json"), "w") as fh:
    json.dump(out, fh)
