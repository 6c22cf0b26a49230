#!/usr/bin/env python3
"""Reference fixtures for Tests/MetricsTests: pycocotools (COCOeval, mask API) and mmseg's metrics.

Run with the project venv:  /work/venv/bin/python scripts/make_metrics_fixtures.py
With --benchmark DIR it instead writes a COCO-val-sized synthetic pair (5000 images, ~36k annotations,
100 detections per image with boxes and RLE masks) to DIR for timing `mae-eval coco-eval`.
Writes Tests/MetricsTests/Fixtures/:
  rle_reference.json          mask API: encode/decode/area/toBbox/merge/iou/frPoly/frBbox/strings
  coco_<case>_gt.json, coco_<case>_dt.json, coco_<case>_expected.json
                              COCOeval stats and printed lines for bbox and segm
  seg_reference.json          label maps and mmseg intersect_and_union + total_area_to_metrics numbers
mmseg is not installed; its two functions are re-implemented below in numpy, line by line.
"""
import contextlib
import io
import json
import os

import numpy as np
from pycocotools import mask as maskUtils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "MetricsTests", "Fixtures")


def s(rle):
    """pycocotools RLE dict -> JSON-able (counts bytes -> str)."""
    c = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": c.decode() if isinstance(c, bytes) else c}


def uncompressed(rle):
    """Counts list of an RLE, by decoding and re-running (column-major)."""
    m = maskUtils.decode(rle).flatten(order="F")
    counts, prev, run = [], 0, 0
    for v in m:
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    return counts


def random_polygon(rng, cx, cy, r, n):
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = r * rng.uniform(0.6, 1.0, n)
    xs = cx + radii * np.cos(angles)
    ys = cy + radii * np.sin(angles)
    return [round(float(v), 2) for xy in zip(xs, ys) for v in xy]


# ---------------------------------------------------------------------------------------------
# Mask API
# ---------------------------------------------------------------------------------------------
def rle_reference(rng):
    out = {"masks": [], "polygons": [], "merges": [], "ious": [], "box_ious": [], "strings": []}
    shapes = [(7, 5), (16, 23), (31, 9), (1, 1), (12, 12)]
    for h, w in shapes:
        for kind in ("random", "blob", "empty", "full"):
            if kind == "random":
                m = (rng.random((h, w)) < 0.4).astype(np.uint8)
            elif kind == "blob":
                m = np.zeros((h, w), np.uint8)
                m[h // 4: h // 4 + max(1, h // 2), w // 3: w // 3 + max(1, w // 2)] = 1
            elif kind == "empty":
                m = np.zeros((h, w), np.uint8)
            else:
                m = np.ones((h, w), np.uint8)
            rle = maskUtils.encode(np.asfortranarray(m))
            out["masks"].append({
                "height": h, "width": w,
                "row_major": "".join(str(int(v)) for v in m.flatten(order="C")),
                "counts": uncompressed(rle), "string": s(rle)["counts"],
                "area": int(maskUtils.area(rle)), "bbox": [float(v) for v in maskUtils.toBbox(rle)],
            })
    # Polygons: regular, partly outside the image, with repeated points, tiny, and 4-number "boxes".
    cases = []
    for _ in range(12):
        h, w = int(rng.integers(8, 60)), int(rng.integers(8, 60))
        polys = [random_polygon(rng, rng.uniform(-5, w + 5), rng.uniform(-5, h + 5),
                                rng.uniform(1, 25), int(rng.integers(3, 12))) for _ in range(int(rng.integers(1, 3)))]
        cases.append((h, w, polys))
    cases.append((20, 30, [[2.0, 3.0, 2.0, 3.0, 10.5, 3.0, 10.5, 3.0, 10.5, 12.25, 2.0, 12.25]]))
    cases.append((20, 30, [[5.3, 5.3, 6.1, 5.2, 5.9, 6.4]]))
    cases.append((25, 25, [[0, 0, 24.9, 0, 24.9, 24.9, 0, 24.9]]))
    cases.append((25, 25, [[-10, -10, 40, -10, 40, 40, -10, 40]]))
    for h, w, polys in cases:
        rles = maskUtils.frPyObjects(polys, h, w)
        merged = maskUtils.merge(rles)
        out["polygons"].append({
            "height": h, "width": w, "polygons": polys,
            "parts": [s(r)["counts"] for r in rles], "merged": s(merged)["counts"],
            "area": int(maskUtils.area(merged)), "bbox": [float(v) for v in maskUtils.toBbox(merged)],
        })
    # Boxes through frBbox (rleFrPoly of the box outline).
    out["boxes"] = []
    for _ in range(6):
        h, w = int(rng.integers(8, 40)), int(rng.integers(8, 40))
        box = [float(v) for v in np.round(rng.uniform(-3, 30, 4), 2)]
        rle = maskUtils.frPyObjects(np.array([box]), h, w)[0]
        out["boxes"].append({"height": h, "width": w, "box": box, "string": s(rle)["counts"]})
    # Merge (union and intersection) of 2-3 random masks of one size.
    for _ in range(6):
        h, w = int(rng.integers(3, 20)), int(rng.integers(3, 20))
        n = int(rng.integers(2, 4))
        rles = [maskUtils.encode(np.asfortranarray((rng.random((h, w)) < 0.5).astype(np.uint8))) for _ in range(n)]
        out["merges"].append({
            "height": h, "width": w, "inputs": [s(r)["counts"] for r in rles],
            "union": s(maskUtils.merge(rles, intersect=False))["counts"],
            "intersection": s(maskUtils.merge(rles, intersect=True))["counts"],
        })
    # IoU between mask sets, with crowd flags.
    for _ in range(4):
        h, w = int(rng.integers(10, 40)), int(rng.integers(10, 40))

        def blob():
            m = np.zeros((h, w), np.uint8)
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            m[y0: y0 + int(rng.integers(1, h)), x0: x0 + int(rng.integers(1, w))] = 1
            m &= (rng.random((h, w)) < 0.85).astype(np.uint8)
            return maskUtils.encode(np.asfortranarray(m))
        dts = [blob() for _ in range(int(rng.integers(1, 6)))]
        gts = [blob() for _ in range(int(rng.integers(1, 6)))]
        crowd = [int(rng.random() < 0.3) for _ in gts]
        iou = maskUtils.iou(dts, gts, crowd)
        out["ious"].append({"height": h, "width": w, "dt": [s(r)["counts"] for r in dts],
                            "gt": [s(r)["counts"] for r in gts], "iscrowd": crowd,
                            "iou": np.asarray(iou).tolist()})
    for _ in range(4):
        dts = [[float(v) for v in np.round(rng.uniform(0, 50, 4), 2)] for _ in range(int(rng.integers(1, 6)))]
        gts = [[float(v) for v in np.round(rng.uniform(0, 50, 4), 2)] for _ in range(int(rng.integers(1, 6)))]
        crowd = [int(rng.random() < 0.3) for _ in gts]
        out["box_ious"].append({"dt": dts, "gt": gts, "iscrowd": crowd,
                                "iou": np.asarray(maskUtils.iou(dts, gts, crowd)).tolist()})
    # Compressed strings of long runs (multi-character numbers, negative differences).
    for counts in ([0, 100000, 3, 70000, 1], [5, 1, 40000, 2, 1, 90000], [1234567, 89, 10]):
        h = 1
        w = sum(counts)
        rle = maskUtils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        out["strings"].append({"height": h, "width": w, "counts": counts, "string": s(rle)["counts"]})
    return out


# ---------------------------------------------------------------------------------------------
# COCOeval cases
# ---------------------------------------------------------------------------------------------
CATEGORIES = [{"id": i, "name": f"c{i}", "supercategory": "shape"} for i in (1, 3, 7, 12, 20)]
# Category 20 never has ground truth (AP -1 for it); category 12 never gets a detection.


def make_gt(rng, n_images):
    images, anns = [], []
    ann_id = 1
    for img_id in range(1, n_images + 1):
        h, w = int(rng.integers(120, 260)), int(rng.integers(120, 260))
        images.append({"id": img_id * 10, "width": w, "height": h, "file_name": f"{img_id:06d}.jpg"})
        if img_id % 5 == 0:
            continue  # images without ground truth
        for _ in range(int(rng.integers(1, 7))):
            cat = int(rng.choice([1, 3, 7, 12]))
            scale = rng.choice([rng.uniform(2, 15), rng.uniform(18, 50), rng.uniform(55, 100)])
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            kind = rng.random()
            crowd = int(rng.random() < 0.12)
            if crowd or kind < 0.15:
                m = np.zeros((h, w), np.uint8)
                y0, x0 = int(max(0, cy - scale)), int(max(0, cx - scale))
                m[y0: int(cy + scale), x0: int(cx + scale)] = 1
                m &= (rng.random((h, w)) < 0.9).astype(np.uint8)
                if m.sum() == 0:
                    continue
                rle = maskUtils.encode(np.asfortranarray(m))
                seg = {"size": [h, w], "counts": uncompressed(rle)} if crowd else s(rle)
                area = float(maskUtils.area(rle))
                bbox = [float(v) for v in maskUtils.toBbox(rle)]
            else:
                polys = [random_polygon(rng, cx, cy, scale, int(rng.integers(3, 10)))]
                if rng.random() < 0.2:
                    polys.append(random_polygon(rng, cx + scale, cy, scale / 2, 5))
                seg = polys
                pts = np.array(polys[0]).reshape(-1, 2)
                x, y = pts[:, 0], pts[:, 1]
                # COCO's area is the polygon area, not the pixel count.
                area = float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
                allpts = np.concatenate([np.array(p).reshape(-1, 2) for p in polys])
                x0, y0 = allpts.min(0)
                x1, y1 = allpts.max(0)
                bbox = [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]
            anns.append({"id": ann_id, "image_id": img_id * 10, "category_id": cat, "bbox": bbox,
                         "area": round(area, 2), "iscrowd": crowd, "segmentation": seg})
            ann_id += 1
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def jitter_box(rng, b, amount):
    x, y, w, h = b
    return [round(float(v), 2) for v in (x + rng.normal(0, amount * w), y + rng.normal(0, amount * h),
                                         max(1.0, w * rng.uniform(1 - amount, 1 + amount)),
                                         max(1.0, h * rng.uniform(1 - amount, 1 + amount)))]


def make_dt(rng, gt, style, extra_per_image=3):
    coco = COCO()
    coco.dataset = json.loads(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    dets = []
    for img in gt["images"]:
        h, w = img["height"], img["width"]
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        cands = []
        for a in anns:
            if a["category_id"] == 12 or rng.random() < 0.15:
                continue
            for _ in range(int(rng.integers(1, 3))):
                cands.append((a["category_id"], jitter_box(rng, a["bbox"], rng.choice([0.02, 0.05, 0.15])), a))
        for _ in range(120 if img["id"] == 30 else extra_per_image):
            bw, bh = rng.uniform(3, 120), rng.uniform(3, 120)
            # Image 30 gets 120 detections of one category: more than maxDets=100 for one image/category.
            cands.append((1 if img["id"] == 30 else int(rng.choice([1, 3, 7, 20])),
                          [round(float(v), 2) for v in (rng.uniform(0, w), rng.uniform(0, h), bw, bh)], None))
        for cat, box, a in cands:
            # Scores on a coarse grid so that ties (and their stable ordering) are exercised.
            score = rng.beta(5, 2) if a is not None else rng.beta(2, 5)
            d = {"image_id": img["id"], "category_id": cat, "score": round(float(score), 2)}
            x, y, bw, bh = box
            x0, y0 = max(0, int(x)), max(0, int(y))
            m = np.zeros((h, w), np.uint8)
            m[y0: int(y + bh), x0: int(x + bw)] = 1
            if a is not None and rng.random() < 0.5:
                m = maskUtils.decode(coco.annToRLE(a)).copy()
                m &= (rng.random((h, w)) < 0.9).astype(np.uint8)
            if m.sum() == 0:
                m[min(h - 1, y0), min(w - 1, x0)] = 1
            rle = s(maskUtils.encode(np.asfortranarray(m)))
            if style == "bbox":
                d["bbox"] = box
            elif style == "segm":
                d["segmentation"] = rle
            else:  # both, with polygons for some (pycocotools needs the bbox to accept polygons)
                d["bbox"] = box
                if rng.random() < 0.4:
                    d["segmentation"] = [[x, y, x + bw, y, x + bw * 0.8, y + bh, x, y + bh * 0.7]]
                else:
                    d["segmentation"] = rle
            dets.append(d)
    return dets


def coco_eval(gt_path, dt_path, iou_type):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        gt = COCO(gt_path)
        dt = gt.loadRes(dt_path)
        E = COCOeval(gt, dt, iou_type)
        E.evaluate()
        E.accumulate()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        E.summarize()
    return [float(v) for v in E.stats], out.getvalue().splitlines()


def coco_cases(rng):
    for name, n_images, style in (("bboxres", 16, "bbox"), ("segmres", 14, "segm"), ("mixed", 16, "both"),
                                  ("dense", 31, "bbox")):
        gt = make_gt(rng, n_images)
        dt = make_dt(rng, gt, style)
        gt_path = os.path.join(OUT, f"coco_{name}_gt.json")
        dt_path = os.path.join(OUT, f"coco_{name}_dt.json")
        with open(gt_path, "w") as f:
            json.dump(gt, f)
        with open(dt_path, "w") as f:
            json.dump(dt, f)
        expected = {}
        for iou_type in ("bbox", "segm"):
            stats, lines = coco_eval(gt_path, dt_path, iou_type)
            expected[iou_type] = {"stats": stats, "lines": lines}
            print(name, iou_type, np.round(stats, 4).tolist())
        with open(os.path.join(OUT, f"coco_{name}_expected.json"), "w") as f:
            json.dump(expected, f, indent=1)


# ---------------------------------------------------------------------------------------------
# mmseg metrics (mmseg/core/evaluation/metrics.py, mmseg 0.x), in numpy
# ---------------------------------------------------------------------------------------------
def histc(values, num_classes):
    """torch.histc(values.float(), bins=num_classes, min=0, max=num_classes - 1) for integer values."""
    v = values.astype(np.float64)
    v = v[(v >= 0) & (v <= num_classes - 1)]
    if num_classes == 1:
        return np.array([len(v)], np.float64)
    idx = np.floor(v * num_classes / (num_classes - 1)).astype(np.int64)
    idx[idx == num_classes] = num_classes - 1
    return np.bincount(idx, minlength=num_classes).astype(np.float64)


def intersect_and_union(pred_label, label, num_classes, ignore_index, reduce_zero_label=False):
    label = label.astype(np.int64).copy()
    pred_label = pred_label.astype(np.int64)
    if reduce_zero_label:
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    mask = label != ignore_index
    pred_label = pred_label[mask]
    label = label[mask]
    intersect = pred_label[pred_label == label]
    area_intersect = histc(intersect, num_classes)
    area_pred_label = histc(pred_label, num_classes)
    area_label = histc(label, num_classes)
    area_union = area_pred_label + area_label - area_intersect
    return area_intersect, area_union, area_pred_label, area_label


def total_area_to_metrics(ti, tu, tp, tl):
    with np.errstate(divide="ignore", invalid="ignore"):
        all_acc = ti.sum() / tl.sum()
        iou = ti / tu
        acc = ti / tl
    return all_acc, iou, acc


def seg_reference(rng):
    cases = []
    for name, num_classes, ignore_index, reduce_zero in (("plain", 6, 255, False), ("reduce_zero", 5, 255, True),
                                                         ("ignore_3", 4, 3, False), ("absent", 8, 255, False)):
        # "absent": class 5 is only predicted (IoU 0, Acc NaN), 6-7 occur nowhere (NaN); predictions include 255.
        used = 6 if name == "absent" else num_classes
        preds, gts = [], []
        for _ in range(4):
            h, w = int(rng.integers(5, 14)), int(rng.integers(5, 14))
            hi = num_classes + 1 if reduce_zero else used
            # Class num_classes - 1 (or its shifted value) never occurs in the ground truth.
            gt = rng.integers(0, hi - 1, (h, w))
            gt[rng.random((h, w)) < 0.15] = 255
            pred = gt.copy()
            if reduce_zero:  # predictions are in the reduced label space
                pred = np.where((gt == 0) | (gt == 255), rng.integers(0, num_classes, (h, w)), gt - 1)
            flip = rng.random((h, w)) < 0.35
            pred[flip] = rng.integers(0, used, flip.sum())
            if name == "absent":
                pred[rng.random((h, w)) < 0.05] = 255
            preds.append(pred)
            gts.append(gt)
        totals = [np.zeros(num_classes) for _ in range(4)]
        for p, g in zip(preds, gts):
            for t, v in zip(totals, intersect_and_union(p, g, num_classes, ignore_index, reduce_zero)):
                t += v
        aacc, iou, acc = total_area_to_metrics(*totals)

        def nulls(a):
            return [None if np.isnan(v) else float(v) for v in a]
        with np.errstate(invalid="ignore"):
            cases.append({
                "name": name, "num_classes": num_classes, "ignore_index": ignore_index,
                "reduce_zero_label": reduce_zero,
                "images": [{"height": int(g.shape[0]), "width": int(g.shape[1]),
                            "gt": g.flatten().tolist(), "pred": p.flatten().tolist()} for p, g in zip(preds, gts)],
                "area_intersect": totals[0].tolist(), "area_union": totals[1].tolist(),
                "area_pred": totals[2].tolist(), "area_label": totals[3].tolist(),
                "IoU": nulls(iou), "Acc": nulls(acc), "aAcc": float(aacc) * 100,
                "mIoU": float(np.nanmean(iou)) * 100, "mAcc": float(np.nanmean(acc)) * 100,
            })
    return cases


def benchmark(out_dir, n_images=5000, per_image_gt=7.3, dets_per_image=100, n_cats=80):
    """A COCO val-sized GT/DT pair: polygon GT (some crowd RLE), box + compressed-RLE detections."""
    rng = np.random.default_rng(7)
    os.makedirs(out_dir, exist_ok=True)
    images, anns, dets = [], [], []
    cats = [{"id": i + 1, "name": f"c{i + 1}", "supercategory": "x"} for i in range(n_cats)]
    ann_id = 1
    for img_id in range(1, n_images + 1):
        h, w = int(rng.integers(360, 640)), int(rng.integers(400, 640))
        images.append({"id": img_id, "width": w, "height": h, "file_name": f"{img_id:012d}.jpg"})
        boxes = []
        for _ in range(int(rng.poisson(per_image_gt))):
            r = float(np.exp(rng.uniform(np.log(4), np.log(200))))
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            poly = random_polygon(rng, cx, cy, r, int(rng.integers(5, 16)))
            pts = np.array(poly).reshape(-1, 2)
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            bbox = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
            cat = int(rng.integers(1, n_cats + 1))
            anns.append({"id": ann_id, "image_id": img_id, "category_id": cat, "bbox": bbox,
                         "area": float(bbox[2] * bbox[3] * 0.7), "iscrowd": int(rng.random() < 0.01),
                         "segmentation": [poly]})
            ann_id += 1
            boxes.append((cat, bbox))
        det_boxes, det_cats = [], []
        for _ in range(dets_per_image):
            if boxes and rng.random() < 0.5:
                cat, b = boxes[int(rng.integers(len(boxes)))]
                b = jitter_box(rng, b, 0.1)
            else:
                cat = int(rng.integers(1, n_cats + 1))
                b = [float(rng.uniform(0, w)), float(rng.uniform(0, h)), float(rng.uniform(4, 200)), float(rng.uniform(4, 200))]
            det_boxes.append(b)
            det_cats.append(cat)
        rles = maskUtils.frPyObjects(np.array(det_boxes, dtype=np.float64), h, w)
        for b, cat, rle in zip(det_boxes, det_cats, rles):
            dets.append({"image_id": img_id, "category_id": cat, "bbox": [round(v, 2) for v in b],
                         "score": round(float(rng.random()), 3), "segmentation": s(rle)})
    with open(os.path.join(out_dir, "gt.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    with open(os.path.join(out_dir, "dt.json"), "w") as f:
        json.dump(dets, f)
    print(f"{len(images)} images, {len(anns)} annotations, {len(dets)} detections -> {out_dir}")


def main():
    import sys
    if len(sys.argv) == 3 and sys.argv[1] == "--benchmark":
        benchmark(sys.argv[2])
        return
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240607)
    with open(os.path.join(OUT, "rle_reference.json"), "w") as f:
        json.dump(rle_reference(rng), f)
    coco_cases(rng)
    with open(os.path.join(OUT, "seg_reference.json"), "w") as f:
        json.dump(seg_reference(rng), f)
    # numpy's linspace values used by COCOeval, to check the Swift thresholds bit for bit.
    from pycocotools.cocoeval import Params
    p = Params("bbox")
    with open(os.path.join(OUT, "coco_params.json"), "w") as f:
        json.dump({"iouThrs": [float(v) for v in p.iouThrs], "recThrs": [float(v) for v in p.recThrs]}, f)


if __name__ == "__main__":
    main()
