"""Detection bootstrap fixture for Tests/TaskTests/DetectionBootstrapTests.swift, scored with pycocotools.

Four 24 x 24 images (ids 7, 3, 11, 5), two categories, rectangle objects of several sizes with
compressed-RLE masks, and detections of mixed quality (hits, misses, shifted boxes, a false
positive). For each resample (counts per image, in image order) the multiset is built the way
DetectionStatistic documents it: every drawn copy of an image is a new image (ids 1, 2, ... over
all copies in image order) with that image's annotations (new ids, running) and detections; then
pycocotools' COCOeval scores bbox and segm. Expected: the 12 stats x 100 of each.
"""
import contextlib
import io
import json
import os

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

H = W = 24
image_ids = [7, 3, 11, 5]


def rect(x, y, w, h):
    m = np.zeros((H, W), dtype=np.uint8, order="F")
    m[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle, float(m.sum())


# (image, category, x, y, w, h)
objects = [(7, 1, 2, 2, 8, 8), (7, 2, 12, 4, 10, 14), (3, 1, 1, 1, 20, 20), (11, 2, 3, 3, 4, 4),
           (11, 1, 10, 10, 12, 9), (5, 2, 5, 5, 6, 12)]
# (image, category, score, x, y, w, h)
dets = [(7, 1, 0.9, 2, 2, 8, 7), (7, 2, 0.6, 13, 5, 9, 12), (7, 1, 0.3, 14, 14, 6, 6), (3, 1, 0.8, 2, 2, 18, 18),
        (3, 2, 0.7, 1, 1, 20, 20), (11, 2, 0.5, 8, 8, 4, 4), (11, 1, 0.95, 10, 10, 12, 9), (5, 2, 0.4, 5, 6, 6, 10),
        (5, 1, 0.2, 0, 0, 5, 5)]

annotations = []
for n, (img, cat, x, y, w, h) in enumerate(objects):
    rle, area = rect(x, y, w, h)
    annotations.append({"id": 100 + n, "image_id": img, "category_id": cat, "bbox": [x, y, w, h], "area": area,
                        "iscrowd": 0, "segmentation": rle})
gt = {"images": [{"id": i, "width": W, "height": H, "file_name": f"{i}.png"} for i in image_ids],
      "annotations": annotations, "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "bar"}]}
results = []
for img, cat, score, x, y, w, h in dets:
    rle, _ = rect(x, y, w, h)
    results.append({"image_id": img, "category_id": cat, "score": score, "bbox": [x, y, w, h], "segmentation": rle})


def multiset(counts):
    images, anns, res = [], [], []
    for img, c in zip(image_ids, counts):
        for _ in range(c):
            new = len(images) + 1
            images.append({"id": new, "width": W, "height": H, "file_name": f"{img}.png"})
            for a in annotations:
                if a["image_id"] == img:
                    anns.append(dict(a, id=len(anns) + 1, image_id=new))
            res += [dict(d, image_id=new) for d in results if d["image_id"] == img]
    return {"images": images, "annotations": anns, "categories": gt["categories"]}, res


def score(counts):
    data, res = multiset(counts)
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
        dt = coco.loadRes([dict(d) for d in res])
        for kind in ("bbox", "segm"):
            e = COCOeval(coco, dt, kind)
            e.evaluate(); e.accumulate(); e.summarize()
            out[kind] = [float(v) * 100 for v in e.stats]
    return out


resamples = [[1, 1, 1, 1], [2, 0, 1, 1], [0, 3, 0, 1], [1, 0, 0, 3], [4, 0, 0, 0]]
fixture = {"ground_truth": gt, "detections": results, "image_ids": image_ids, "resamples": resamples,
           "expected": [score(c) for c in resamples]}
out = os.path.join(os.path.dirname(__file__), "..", "Tests", "TaskTests", "Fixtures", "detection_bootstrap.json")
with open(out, "w") as f:
    json.dump(fixture, f)
