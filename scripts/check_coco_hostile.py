"""What pycocotools' COCOeval does with the hostile ground-truth files coco-eval refuses.

pycocotools' behaviour is coco-eval's contract: where it raises or silently differs, coco-eval
refuses in one sentence (Tests/MetricsTests/MetricsTests.swift, COCOHostileInputTests). Run with the
reference venv: /work/venv/bin/python scripts/check_coco_hostile.py
"""
import contextlib
import copy
import io
import json
import os
import sys
import tempfile

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

FIX = os.path.join(os.path.dirname(__file__), "..", "Tests", "MetricsTests", "Fixtures")
gt0 = json.load(open(os.path.join(FIX, "coco_mixed_gt.json")))
dt = json.load(open(os.path.join(FIX, "coco_mixed_dt.json")))


def evaluate(gt, iou_type):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(gt, f)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(f.name)
            e = COCOeval(coco, coco.loadRes(copy.deepcopy(dt)), iou_type)
            e.evaluate(); e.accumulate(); e.summarize()
        return "AP %.4f" % e.stats[0]
    except Exception as x:  # the behaviour being recorded
        return "raises %s: %s" % (type(x).__name__, str(x)[:60])
    finally:
        os.unlink(f.name)


def case(name, edit):
    gt = copy.deepcopy(gt0)
    edit(gt)
    print("%-28s bbox: %-45s segm: %s" % (name, evaluate(gt, "bbox"), evaluate(gt, "segm")))


def set_(i, key, value):
    def edit(gt):
        gt["annotations"][i][key] = value
    return edit


def drop(i, key):
    def edit(gt):
        del gt["annotations"][i][key]
    return edit


case("unchanged", lambda gt: None)
case("duplicate annotation id", set_(3, "id", gt0["annotations"][0]["id"]))
case("no bbox", drop(0, "bbox"))
case("no area", drop(0, "area"))
case("no iscrowd", drop(0, "iscrowd"))
case("polygon of 3 numbers", set_(0, "segmentation", [[1, 2, 3]]))
case("polygon of 5 numbers", set_(0, "segmentation", [[1, 2, 3, 4, 5]]))
case("second polygon of 2 numbers", set_(0, "segmentation", [gt0["annotations"][0]["segmentation"][0], [1, 2]]))
case("empty polygon list", set_(0, "segmentation", []))
case("bbox 1e308", set_(0, "bbox", [1e308, 1, 2, 3]))
def dup_image(gt):
    gt["images"][1]["id"] = gt["images"][0]["id"]
case("duplicate image id", dup_image)
sys.exit(0)
