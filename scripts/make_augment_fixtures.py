#!/usr/bin/env python3
"""Generates the fine-tuning and dense-task augmentation fixtures in Tests/DataTests/Fixtures (files
named aug_*, listed in augment.json): timm's RandAugment ops (the functions timm's AugmentOp calls, on
PIL images, with timm's fill colour and interpolation), timm's level -> argument mappings, timm's
Mixup/CutMix in batch mode, and PIL's bilinear and nearest resizes used by the dense transforms.

Run with /work/venv/bin/python scripts/make_augment_fixtures.py (timm, Pillow, numpy, torch).
Raw little-endian files: *.rgb (H, W, 3 uint8), *.u8 (H, W uint8), *.f32 float32.
"""
import json, os
import numpy as np
import torch
from PIL import Image
import timm
from timm.data import auto_augment as aa
from timm.data.mixup import Mixup

OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "DataTests", "Fixtures")
FILL = (124, 116, 104)   # timm's img_mean hparam for ImageNet mean: round(255 * mean)
index = {"timm": timm.__version__, "pillow": Image.__version__, "ops": [], "levels": [], "mixup": [],
         "resize": []}


def natural(h, w, seed):
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([128 + 100 * np.sin(x / (3 + c) + y / (5 + 2 * c) + c) for c in range(3)], -1)
    img[(x - w / 2) ** 2 + (y - h / 3) ** 2 < (min(h, w) / 4) ** 2] = [250, 30, 60]
    img += r.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(name, array):
    array.tofile(os.path.join(OUT, name))


def ops():
    h, w = 19, 23
    src = natural(h, w, 7)
    # A low-contrast copy (values 60...144) so AutoContrast and Equalize have work to do.
    dull = (src // 3 + 60).astype(np.uint8)
    save("aug_src.rgb", src)
    save("aug_dull.rgb", dull)
    index["size"] = [w, h]
    bicubic, bilinear, nearest = Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.NEAREST
    cases = [("AutoContrast", None, {}), ("Equalize", None, {}), ("Invert", None, {})]
    cases += [("Rotate", d, {"resample": r}) for d in (27.0, -13.5, 3.0, 0.0) for r in (bicubic, bilinear)]
    cases += [(op, v, {"resample": nearest}) for op, v in (("Rotate", 21.6), ("ShearX", -0.27), ("TranslateYRel", 0.3))]
    cases += [("Posterize", b, {}) for b in (1, 3, 4)]
    cases += [("Solarize", t, {}) for t in (26, 128, 230, 256)]
    cases += [("SolarizeAdd", a, {}) for a in (99, 33)]
    for name in ("Color", "Contrast", "Brightness", "Sharpness"):
        cases += [(name, f, {}) for f in (0.19, 0.55, 1.81, 1.0)]
    for name in ("ShearX", "ShearY"):
        cases += [(name, f, {"resample": r}) for f in (0.27, -0.15) for r in (bicubic, bilinear)]
    for name in ("TranslateXRel", "TranslateYRel"):
        cases += [(name, p, {"resample": r}) for p in (0.405, -0.2) for r in (bicubic, bilinear)]
    for source_name, source in (("src", src), ("dull", dull)):
        im = Image.fromarray(source)
        for k, (op, arg, kw) in enumerate(cases):
            if source_name == "dull" and op not in ("AutoContrast", "Equalize", "Contrast", "Sharpness"):
                continue
            fn = aa.NAME_TO_OP[op]
            kwargs = dict(fillcolor=FILL, **kw)
            out = fn(im, arg, **kwargs) if arg is not None else fn(im, **kwargs)
            name = f"aug_{source_name}_{op}_{k}"
            save(name + ".rgb", np.asarray(out))
            interp = {bicubic: "bicubic", bilinear: "bilinear", nearest: "nearest"}.get(kw.get("resample"))
            index["ops"].append({"name": name, "source": source_name, "op": op, "arg": arg, "interpolation": interp})


def levels():
    # timm's level -> argument functions, with the random sign fixed to +: the sign is a coin flip.
    aa._randomly_negate = lambda v: v
    hp = dict(translate_const=100, img_mean=FILL)
    for op in aa._RAND_INCREASING_TRANSFORMS:
        fn = aa.LEVEL_TO_ARG[op]
        for m in (0.0, 2.5, 5.0, 9.0, 9.37, 10.0):
            args = list(fn(m, hp)) if fn is not None else []
            index["levels"].append({"op": op, "magnitude": m, "args": [float(a) for a in args]})


def mixup():
    b, c, h, w, k = 4, 3, 6, 9, 5
    for seed in range(8):
        x = torch.from_numpy(np.random.default_rng(100 + seed).normal(size=(b, c, h, w)).astype(np.float32))
        target = torch.tensor([(seed + i) % k for i in range(b)])
        # Replay timm's draws (Mixup._params_per_batch, then rand_bbox) to record the parameters.
        np.random.seed(seed)
        np.random.rand()                            # < prob (1.0: always mixes)
        use_cutmix = bool(np.random.rand() < 0.5)   # < switch_prob
        lam = float(np.random.beta(1.0, 1.0) if use_cutmix else np.random.beta(0.8, 0.8))
        cy = cx = -1
        if use_cutmix:
            cy, cx = int(np.random.randint(0, h)), int(np.random.randint(0, w))
        np.random.seed(seed)
        mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch",
                    label_smoothing=0.1, num_classes=k)
        x_in = x.clone()
        x_out, t_out = mix(x, target)
        name = f"aug_mixup_{seed}"
        save(name + "_in.f32", x_in.numpy())
        save(name + "_out.f32", x_out.numpy())
        save(name + "_target.f32", t_out.numpy().astype(np.float32))
        index["mixup"].append({"name": name, "batch": b, "channels": c, "height": h, "width": w, "classes": k,
                               "labels": target.tolist(), "cutmix": use_cutmix, "lam": lam, "cy": cy, "cx": cx})


def resizes():
    src = natural(13, 17, 9)
    save("aug_resize_src.rgb", src)
    labels = np.random.default_rng(3).integers(0, 6, (13, 17)).astype(np.uint8)
    save("aug_resize_labels.u8", labels)
    for (tw, th) in [(9, 7), (30, 25), (17, 26), (5, 13)]:
        out = np.asarray(Image.fromarray(src).resize((tw, th), Image.Resampling.BILINEAR))
        save(f"aug_bilinear_{tw}x{th}.rgb", out)
        nearest = np.asarray(Image.fromarray(labels).resize((tw, th), Image.Resampling.NEAREST))
        save(f"aug_nearest_{tw}x{th}.u8", nearest)
        index["resize"].append({"width": tw, "height": th})


def main():
    for f in os.listdir(OUT):
        if f.startswith("aug_"):
            os.remove(os.path.join(OUT, f))
    ops()
    levels()
    mixup()
    resizes()
    with open(os.path.join(OUT, "augment.json"), "w") as f:
        json.dump(index, f, indent=1)
    files = [f for f in os.listdir(OUT) if f.startswith("aug_")] + ["augment.json"]
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in files)
    print(f"wrote {len(files)} files, {total} bytes")


if __name__ == "__main__":
    main()
