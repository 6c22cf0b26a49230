#!/usr/bin/env python3
"""Checks a `mae-eval data shapes` folder with outside tools: PIL opens every image and class map,
pycocotools loads both instances files and decodes every mask, and each visible mask agrees with
the class map. Also prints a difficulty reference: a linear probe on raw pixels (the floor a
backbone should beat by far).

Usage: /work/venv/bin/python scripts/check_shapes.py DIR
"""
import glob, json, os, sys
import numpy as np
from PIL import Image
from pycocotools.coco import COCO


def main(root):
    manifest = json.load(open(os.path.join(root, "shapes.json")))
    classes = manifest["classes"]
    n_png = 0
    for path in glob.glob(os.path.join(root, "**", "*.png"), recursive=True):
        with Image.open(path) as im:
            im.load()
            n_png += 1
    print(f"PIL opened {n_png} PNGs")
    for split in ["scenes_train", "scenes_val"]:
        coco = COCO(os.path.join(root, split, "instances.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == classes
        n_poly = n_rle = 0
        for img_id in coco.getImgIds():
            info = coco.loadImgs(img_id)[0]
            cmap = np.array(Image.open(os.path.join(root, split, "class_maps", info["file_name"])))
            assert cmap.shape == (info["height"], info["width"]), "class map size"
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
                m = coco.annToMask(ann).astype(bool)
                if isinstance(ann["segmentation"], list):
                    n_poly += 1
                    # Polygons rasterise slightly differently from our coverage test at the edges.
                    agree = (cmap[m] == ann["category_id"]).mean()
                    assert agree > 0.8, f"{split} image {img_id} polygon agrees {agree:.2f}"
                else:
                    n_rle += 1
                    assert m.sum() == ann["area"], "RLE area"
                    assert (cmap[m] == ann["category_id"]).all(), "RLE mask vs class map"
                x, y, w, h = ann["bbox"]
                assert w > 0 and h > 0
        print(f"{split}: pycocotools loaded {len(coco.getImgIds())} images, decoded {n_poly} polygon and {n_rle} RLE masks")

    def load(split):
        xs, ys = [], []
        for label, name in enumerate(sorted(classes)):
            for path in sorted(glob.glob(os.path.join(root, split, name, "*.png"))):
                xs.append(np.asarray(Image.open(path).convert("RGB"), np.float32).ravel() / 255)
                ys.append(label)
        return np.stack(xs), np.array(ys)

    from sklearn.linear_model import LogisticRegression
    xtr, ytr = load("train")
    xva, yva = load("val")
    probe = LogisticRegression(max_iter=300).fit(xtr, ytr)
    print(f"raw-pixel linear probe: train {100 * probe.score(xtr, ytr):.1f}%  val {100 * probe.score(xva, yva):.1f}%  "
          f"(chance {100 / len(classes):.1f}%)")


if __name__ == "__main__":
    main(sys.argv[1])
