"""Held-out segmentation data unlike Shapes, in ADE20K's layout, for checking UperNet transfer off the
Shapes scenes: Voronoi mosaics of six textures (the classic texture-segmentation benchmark, after
Brodatz mosaics), each cell a random texture in random colours, so neither colour nor outline names
the class. Written as ADE20K ships (JPEG images, PNG annotations, `images/{training,validation}`,
`annotations/{training,validation}`, same stems), with ADE's convention that label 0 is "other":
the 1-pixel seams between cells are 0, so `--reduce-zero-label` ignores them and textures 1..6 become
classes 0..5. Non-square (96 x 72) so the resize / pad paths run.

Usage: python scripts/make_texture_ade.py OUT_DIR [--train 300] [--val 100] [--seed 0]
Then:  mae-eval segment --task shapes-segment --train-images OUT_DIR/images/training \
         --train-labels OUT_DIR/annotations/training --val-images OUT_DIR/images/validation \
         --val-labels OUT_DIR/annotations/validation --num-classes 6 --reduce-zero-label
"""
import argparse
import os

import numpy as np
from PIL import Image

CLASSES = ["horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard", "dots", "blotches"]
W, H = 96, 72


def texture(kind, rng):
    """A (H, W) pattern in [0, 1] for texture class `kind`, at a random period and phase."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    period = rng.uniform(4, 8)
    phase = rng.uniform(0, period)
    if kind == 0:
        return ((y + phase) % period < period / 2).astype(float)
    if kind == 1:
        return ((x + phase) % period < period / 2).astype(float)
    if kind == 2:
        sign = rng.choice([-1, 1])
        return ((x + sign * y + phase) % (period * 1.4) < period * 0.7).astype(float)
    if kind == 3:
        return (((x + phase) // (period / 2) + (y + phase) // (period / 2)) % 2).astype(float)
    if kind == 4:
        cx, cy = (x + phase) % period - period / 2, (y + phase) % period - period / 2
        return (cx * cx + cy * cy < (period / 3.2) ** 2).astype(float)
    # blotches: smooth noise, thresholded (no period)
    coarse = rng.random((H // 6 + 2, W // 6 + 2))
    smooth = np.array(Image.fromarray((coarse * 255).astype(np.uint8)).resize((W + 12, H + 12), Image.BICUBIC))
    return (smooth[6:6 + H, 6:6 + W] > 127).astype(float)


def mosaic(rng):
    """One image (H, W, 3) uint8 and its annotation (H, W) uint8: labels 1..6, seams 0."""
    cells = rng.integers(3, 7)
    seeds = rng.random((cells, 2)) * [W, H]
    y, x = np.mgrid[0:H, 0:W]
    d = (x[None] - seeds[:, 0, None, None]) ** 2 + (y[None] - seeds[:, 1, None, None]) ** 2
    order = np.sort(d, axis=0)
    owner = np.argmin(d, axis=0)
    seam = np.sqrt(order[1]) - np.sqrt(order[0]) < 1.0
    kinds = rng.integers(0, len(CLASSES), cells)
    image = np.zeros((H, W, 3))
    label = np.zeros((H, W), np.uint8)
    for c in range(cells):
        pattern = texture(kinds[c], rng)
        fg, bg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        cell = owner == c
        image[cell] = (pattern[cell, None] * fg + (1 - pattern[cell, None]) * bg)
        label[cell] = kinds[c] + 1
    label[seam] = 0
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    return image, label


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    for split, count in (("training", a.train), ("validation", a.val)):
        os.makedirs(f"{a.out}/images/{split}", exist_ok=True)
        os.makedirs(f"{a.out}/annotations/{split}", exist_ok=True)
        for i in range(count):
            image, label = mosaic(rng)
            stem = f"tex_{split[:3]}_{i:06d}"
            Image.fromarray(image).save(f"{a.out}/images/{split}/{stem}.jpg", quality=90)
            Image.fromarray(label).save(f"{a.out}/annotations/{split}/{stem}.png")
    print(f"{a.out}: {a.train} training and {a.val} validation mosaics of {len(CLASSES)} textures: {', '.join(CLASSES)}")


if __name__ == "__main__":
    main()
