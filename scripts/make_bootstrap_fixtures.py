"""Paired-bootstrap fixture for Tests/TaskTests/BootstrapTests.swift, computed independently with numpy.

Classification: two backbones x two seeds of per-image top-1 hits on 200 images; 300 resamples of
image indices (numpy's generator) with each resample's delta (mean over seeds of A's top-1 minus
B's, percent) and the 95% percentile interval (np.percentile, linear); plus the interval of 20,000
numpy resamples, which the Swift bootstrap with its own generator must approach.
Segmentation: per-image per-class intersect / union / label areas of two backbones on 40 images,
3 classes (class 2 in a few images only, so some resamples lack it: nanmean), mmseg's mIoU, mAcc,
aAcc on each of 50 resamples, and the interval of the mIoU delta.
"""
import json
import numpy as np

rng = np.random.default_rng(7)
n = 200
a = [(rng.random(n) < p).astype(int) for p in (0.72, 0.70)]
b = [(rng.random(n) < p).astype(int) for p in (0.62, 0.64)]


def delta(idx):
    return np.mean([100 * x[idx].mean() for x in a]) - np.mean([100 * x[idx].mean() for x in b])


small = rng.integers(0, n, size=(300, n))
small_deltas = np.array([delta(i) for i in small])
large = rng.integers(0, n, size=(20000, n))
large_deltas = np.array([delta(i) for i in large])

m, c = 40, 3


def seg_areas(seed):
    r = np.random.default_rng(seed)
    label = r.integers(50, 200, size=(m, c)).astype(float)
    label[:, 2] = 0
    label[r.choice(m, 4, replace=False), 2] = 30
    pred = np.clip(label + r.integers(-40, 40, size=(m, c)), 0, None)
    pred[label[:, 2] == 0, 2] = 0
    inter = np.minimum(label, pred) * r.uniform(0.5, 1.0, size=(m, c))
    inter = np.floor(inter)
    union = label + pred - inter
    return inter, union, pred, label


def seg_metrics(areas, idx):
    inter, union, pred, label = (x[idx].sum(0) for x in areas)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
        acc = inter / label
    return {"mIoU": 100 * np.nanmean(iou), "mAcc": 100 * np.nanmean(acc), "aAcc": 100 * inter.sum() / label.sum()}


sa, sb = seg_areas(1), seg_areas(2)
seg_idx = np.random.default_rng(3).integers(0, m, size=(50, m))
seg_a = [seg_metrics(sa, i) for i in seg_idx]
seg_deltas = np.array([x["mIoU"] - seg_metrics(sb, i)["mIoU"] for x, i in zip(seg_a, seg_idx)])
fixture = {
    "classification": {
        "a": [x.tolist() for x in a], "b": [x.tolist() for x in b],
        "delta": float(delta(np.arange(n))),
        "resamples": small.tolist(), "resample_deltas": small_deltas.tolist(),
        "ci": np.percentile(small_deltas, [2.5, 97.5]).tolist(),
        "ci_20000": np.percentile(large_deltas, [2.5, 97.5]).tolist(),
    },
    "segmentation": {
        "a": {k: v.tolist() for k, v in zip(["intersect", "union", "pred_area", "label_area"], sa)},
        "b": {k: v.tolist() for k, v in zip(["intersect", "union", "pred_area", "label_area"], sb)},
        "resamples": seg_idx.tolist(), "a_metrics": seg_a,
        "ci": np.percentile(seg_deltas, [2.5, 97.5]).tolist(),
    },
}
with open("Tests/TaskTests/Fixtures/bootstrap.json", "w") as f:
    json.dump(fixture, f)
print("ci", fixture["classification"]["ci"], "ci_20000", fixture["classification"]["ci_20000"], "seg ci", fixture["segmentation"]["ci"])
