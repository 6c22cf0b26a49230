"""Linear-probe sanity check of pretrained Shapes backbones, independent of the Swift code.

Rebuilds each mae-eval safetensors checkpoint as a timm VisionTransformer (MAE's keys are timm's),
extracts features of the Shapes train and val splits and fits a logistic regression on train,
reporting val top-1. Features: `cls` is the cls token after the final norm (MAE's linear-probe
feature), `avg` the mean of the patch tokens after the final norm (or after fc_norm for a
global-pool model). Also reports an untrained ViT and raw pixels for reference.

usage: /work/venv/bin/python scripts/probe_sanity.py SHAPES_DIR CHECKPOINT [CHECKPOINT ...]
"""
import json
import os
import sys

import numpy as np
import timm
import torch
from PIL import Image
from safetensors import safe_open
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_split(root):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, name))):
            img = np.asarray(Image.open(os.path.join(root, name, f)).convert("RGB"), dtype=np.float32) / 255
            xs.append(((img - MEAN) / STD).transpose(2, 0, 1))
            ys.append(label)
    return torch.from_numpy(np.stack(xs)), np.array(ys)


def build(path):
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        weights = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("optim.")}
    cfg = json.loads(meta["config"])
    avg = cfg.get("pooling") == "avg"
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=cfg["imgSize"], patch_size=cfg["patchSize"], embed_dim=cfg["embedDim"], depth=cfg["depth"],
        num_heads=cfg["numHeads"], mlp_ratio=cfg["mlpHidden"] / cfg["embedDim"], num_classes=0,
        global_pool="avg" if avg else "token", fc_norm=avg)
    own = model.state_dict()
    used = {k: v for k, v in weights.items() if k in own}
    missing = [k for k in own if k not in used]
    assert not missing, f"{path}: missing {missing}"
    model.load_state_dict(used, strict=True)
    return model.eval(), meta.get("method", "?"), avg


@torch.no_grad()
def features(model, avg, x):
    out = {"cls": [], "avg": []}
    for i in range(0, len(x), 256):
        t = model.forward_features(x[i:i + 256])  # (B, 1+L, D), after norm unless fc_norm
        out["cls"].append(t[:, 0])
        pooled = t[:, 1:].mean(1)
        out["avg"].append(model.fc_norm(pooled) if avg else pooled)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def probe(ftr, ytr, fva, yva):
    scaler = StandardScaler().fit(ftr)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(ftr), ytr)
    return 100 * (clf.predict(scaler.transform(fva)) == yva).mean()


def main():
    torch.manual_seed(0)
    root = sys.argv[1]
    xtr, ytr = load_split(os.path.join(root, "train"))
    xva, yva = load_split(os.path.join(root, "val"))
    print(f"train {len(ytr)} images, val {len(yva)}, chance {100 / len(set(ytr)):.1f}%")
    print(f"raw pixels: {probe(xtr.flatten(1).numpy(), ytr, xva.flatten(1).numpy(), yva):.1f}%")
    rand = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, num_classes=0).eval()
    ftr, fva = features(rand, False, xtr), features(rand, False, xva)
    print("random init: " + ", ".join(f"{k} {probe(ftr[k], ytr, fva[k], yva):.1f}%" for k in ftr))
    for path in sys.argv[2:]:
        model, method, avg = build(path)
        ftr, fva = features(model, avg, xtr), features(model, avg, xva)
        print(f"{path} ({method}): " + ", ".join(f"{k} {probe(ftr[k], ytr, fva[k], yva):.1f}%" for k in ftr))


if __name__ == "__main__":
    main()
