"""DeiT distilled parity fixtures (Tests/TaskTests/Fixtures/deit/), from timm in the reference venv.

A small random timm VisionTransformerDistilled (img 32, patch 8, dim 64, depth 2, heads 4, 5 classes):
its state dict as safetensors (heads in the metadata) and as a timm/DeiT-style .pth ({'model': ...}),
an ImageFolder of 4 PNGs, and timm's forward_features of those images (norm applied: every token,
the cls row, the dist row and the patch-token mean) in expect.safetensors.

    /work/venv/bin/python scripts/make_deit_fixtures.py            # the committed fixtures
    /work/venv/bin/python scripts/make_deit_fixtures.py --real224  # also /tmp/deit_tiny_distilled_224/*
                                                                   # (random deit_tiny_distilled_patch16_224,
                                                                   # 22 MB, for a manual check; not committed)
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
import timm
from timm.models.deit import VisionTransformerDistilled

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "Tests", "TaskTests", "Fixtures", "deit")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def images(folder, size, count_per_class, seed):
    """Writes an ImageFolder of random-texture PNGs (classes a, b); returns the normalised batch in
    ImageFolder order (classes, then file names, sorted)."""
    rng = np.random.default_rng(seed)
    batch = []
    for c in ["a", "b"]:
        os.makedirs(os.path.join(folder, c), exist_ok=True)
        for i in range(count_per_class):
            base = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((size, size), Image.NEAREST)
            img.save(os.path.join(folder, c, f"{i}.png"))
            x = (np.asarray(img, np.float32) / 255 - MEAN) / STD
            batch.append(x.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(batch))


def expectations(model, x):
    with torch.no_grad():
        f = model.forward_features(x)
    return {"input.images": x.contiguous(), "expect.forward_features": f.contiguous(),
            "expect.cls": f[:, 0].contiguous(), "expect.dist": f[:, 1].contiguous(),
            "expect.avg": f[:, 2:].mean(1).contiguous()}


def main():
    torch.manual_seed(0)
    model = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                       num_classes=5).eval()
    # timm starts the tokens and pos_embed near zero; spread them so a row mix-up shows.
    with torch.no_grad():
        for name in ["cls_token", "dist_token", "pos_embed"]:
            getattr(model, name).normal_(0, 0.5)
    os.makedirs(OUT, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(OUT, "deit_distilled_tiny.safetensors"),
              metadata={"config": json.dumps({"heads": 4})})
    torch.save({"model": sd, "epoch": 3}, os.path.join(OUT, "deit_distilled_tiny.pth"))
    x = images(os.path.join(OUT, "imagefolder"), 32, 2, seed=1)
    save_file(expectations(model, x), os.path.join(OUT, "expect.safetensors"))
    print("wrote", OUT, "keys:", list(sd)[:6], "...", list(sd)[-4:])

    if "--real224" in sys.argv:
        out = "/tmp/deit_tiny_distilled_224"
        os.makedirs(out, exist_ok=True)
        real = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False).eval()
        rsd = {k: v.contiguous() for k, v in real.state_dict().items()}
        save_file(rsd, os.path.join(out, "deit_tiny_distilled_patch16_224.safetensors"))
        torch.save({"model": rsd}, os.path.join(out, "deit_tiny_distilled_patch16_224.pth"))
        x = images(os.path.join(out, "imagefolder"), 224, 1, seed=2)
        exp = expectations(real, x)
        save_file(exp, os.path.join(out, "expect.safetensors"))
        json.dump({"cls": exp["expect.cls"].tolist()}, open(os.path.join(out, "expect_cls.json"), "w"))
        print("wrote", out, "pos_embed", tuple(real.pos_embed.shape))


if __name__ == "__main__":
    main()
