"""Writes torch/torchvision reference values for the detection ops, restating detectron2's semantics.

Usage: /work/venv/bin/python scripts/make_detection_fixtures.py
Output: Tests/DenseTests/Fixtures/detection.safetensors

Each case is a group of tensors "<case>/<tensor>" (float32, or int64 for indices, labels and sizes).
The reference math is written here from detectron2's definitions (read at detectron2 02b5c4e), using
torchvision only where it computes the same thing: `roi_align` (detectron2's ROIAlign calls it),
`nms` / `batched_nms` (detectron2's batched_nms calls it), `box_iou` (NaN for two empty boxes -> 0)
and the Matcher / BoxCoder (cross-checked, with argument order and label codes translated).
Traps avoided: torchvision's rounded cell anchors, its LevelMapper (eps outside the log), its
Detectron1-style paste_masks_in_image, tied scores in NMS/top-k (CPU sort is not stable), and
randperm-dependent sampling (only the deterministic counts are recorded).
CPU, seeded, so the file is reproducible.
"""
import math
import os

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import batched_nms, box_iou, nms, roi_align

OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "DenseTests", "Fixtures", "detection.safetensors")
torch.manual_seed(0)
torch.set_num_threads(1)
T = {}


def put(case, name, t):
    T[f"{case}/{name}"] = t.detach().contiguous().clone()


def random_boxes(n, lo=0.0, hi=40.0, min_side=1.0, max_side=20.0):
    xy = torch.rand(n, 2) * (hi - lo) + lo
    wh = torch.rand(n, 2) * (max_side - min_side) + min_side
    return torch.cat([xy, xy + wh], dim=1)


# --- IoU: detectron2 pairwise_iou (0 where the intersection is 0) --------------------------------
def d2_iou(a, b):
    area1 = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area2 = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.min(a[:, None, 2:], b[:, 2:]) - torch.max(a[:, None, :2], b[:, :2])).clamp(min=0)
    inter = wh.prod(dim=2)
    return torch.where(inter > 0, inter / (area1[:, None] + area2 - inter), torch.zeros(1))


a = random_boxes(9)
a[7] = torch.tensor([5.0, 5.0, 5.0, 9.0])    # empty (zero width)
a[8] = torch.tensor([50.0, 50.0, 50.0, 50.0])  # empty point
b = random_boxes(7)
b[5] = a[2]                                   # identical box: IoU 1
b[6] = torch.tensor([50.0, 50.0, 50.0, 50.0])  # the same empty point: tv NaN, d2 0
iou = d2_iou(a, b)
tv = box_iou(a, b)
assert torch.isnan(tv[8, 6]) and iou[8, 6] == 0
assert torch.equal(torch.nan_to_num(tv, nan=0.0), iou)
put("iou", "a", a); put("iou", "b", b); put("iou", "iou", iou)


# --- Anchors: detectron2 DefaultAnchorGenerator (unrounded cell anchors) --------------------------
def cell_anchors(sizes, ratios):
    out = []
    for s in sizes:
        for r in ratios:
            w = math.sqrt(s ** 2.0 / r)
            h = r * w
            out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(out).float()


def grid_anchors(sizes, ratios, stride, grid, offset):
    gh, gw = grid
    sx = torch.arange(offset * stride, gw * stride, step=stride, dtype=torch.float32)
    sy = torch.arange(offset * stride, gh * stride, step=stride, dtype=torch.float32)
    yy, xx = torch.meshgrid(sy, sx, indexing="ij")
    shifts = torch.stack((xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)), dim=1)
    return (shifts.view(-1, 1, 4) + cell_anchors(sizes, ratios).view(1, -1, 4)).reshape(-1, 4)


rounded = torchvision.models.detection.anchor_utils.AnchorGenerator((32,), (0.5,)).generate_anchors([32], [0.5])
assert rounded[0, 0].item() == -23.0 and abs(cell_anchors([32], [0.5])[0, 0].item() + 22.627) < 1e-3
vitdet = [grid_anchors([s], [0.5, 1.0, 2.0], st, g, 0.0)
          for s, st, g in zip([32, 64, 128], [4, 8, 16], [(3, 5), (2, 3), (1, 2)])]
put("anchors_vitdet", "anchors", torch.cat(vitdet))
put("anchors_vitdet", "sizes", torch.tensor([3, 5, 2, 3, 1, 2], dtype=torch.int64))
put("anchors_offset", "anchors", grid_anchors([16, 24], [0.5, 1.0, 2.0], 8, (2, 3), 0.5))


# --- Box coding: detectron2 Box2BoxTransform ------------------------------------------------------
def d2_get_deltas(src, tgt, w):
    sw, sh = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
    scx, scy = src[:, 0] + 0.5 * sw, src[:, 1] + 0.5 * sh
    tw, th = tgt[:, 2] - tgt[:, 0], tgt[:, 3] - tgt[:, 1]
    tcx, tcy = tgt[:, 0] + 0.5 * tw, tgt[:, 1] + 0.5 * th
    return torch.stack((w[0] * (tcx - scx) / sw, w[1] * (tcy - scy) / sh,
                        w[2] * torch.log(tw / sw), w[3] * torch.log(th / sh)), dim=1)


CLAMP = math.log(1000.0 / 16)


def d2_apply_deltas(deltas, boxes, w):
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    dx, dy = deltas[:, 0::4] / w[0], deltas[:, 1::4] / w[1]
    dw = torch.clamp(deltas[:, 2::4] / w[2], max=CLAMP)
    dh = torch.clamp(deltas[:, 3::4] / w[3], max=CLAMP)
    pcx, pcy = dx * widths[:, None] + cx[:, None], dy * heights[:, None] + cy[:, None]
    pw, ph = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
    out = torch.stack((pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph), dim=-1)
    return out.reshape(deltas.shape)


src = random_boxes(16)
tgt = random_boxes(16)
for name, w in [("coding_rpn", (1.0, 1.0, 1.0, 1.0)), ("coding_roi", (10.0, 10.0, 5.0, 5.0))]:
    deltas = d2_get_deltas(src, tgt, w)
    coder = det_utils.BoxCoder(w)
    assert torch.allclose(coder.encode_single(tgt, src), deltas, atol=1e-6)
    applied = torch.randn(16, 8) * 0.5
    applied[3, 2] = 9.0 * w[2]    # dw past the clamp
    applied[5, 7] = 12.0 * w[3]   # dh past the clamp (second box)
    decoded = d2_apply_deltas(applied, src, w)
    assert torch.allclose(coder.decode_single(applied[:, :4], src), decoded[:, :4], atol=1e-4)
    put(name, "src", src); put(name, "target", tgt); put(name, "deltas", deltas)
    put(name, "apply_deltas", applied); put(name, "decoded", decoded)


# --- Matcher: detectron2 Matcher (labels -1 / 0 / 1, low-quality ties) ----------------------------
def d2_match(q, thresholds, labels, low_quality):
    if q.numel() == 0:
        return torch.zeros(q.shape[1], dtype=torch.int64), torch.full((q.shape[1],), labels[0], dtype=torch.int64)
    vals, matches = q.max(dim=0)
    out = torch.ones_like(matches)
    th = [-float("inf")] + thresholds + [float("inf")]
    for l, lo, hi in zip(labels, th[:-1], th[1:]):
        out[(vals >= lo) & (vals < hi)] = l
    if low_quality:
        best, _ = q.max(dim=1)
        _, preds = torch.nonzero(q == best[:, None], as_tuple=True)
        out[preds] = 1
    return matches, out


gt = random_boxes(4, max_side=16.0)
anchors = torch.cat([random_boxes(26, max_side=16.0), gt[0:1] + 0.5, gt[0:1] + 0.5,  # tied best for gt 0
                     gt[1:2] * 1.02, gt[3:4]])
q = d2_iou(gt, anchors)
for name, th, lab, lq in [("match_rpn", [0.3, 0.7], [0, -1, 1], True), ("match_roi", [0.5], [0, 1], False)]:
    matches, labels = d2_match(q, th, lab, lq)
    tvm = det_utils.Matcher(th[-1], th[0], lq)(q)
    tv_labels = torch.where(tvm >= 0, 1, torch.where(tvm == -1, 0, -1))
    assert torch.equal(tv_labels, labels), name
    assert torch.equal(torch.where(tvm >= 0, tvm, matches), matches), name
    put(name, "gt", gt); put(name, "anchors", anchors); put(name, "quality", q)
    put(name, "matches", matches); put(name, "labels", labels)
assert int((q == q.max(dim=1, keepdim=True).values)[0].sum()) == 2, "gt 0 has a tied best"

# --- subsample_labels: only the deterministic counts (torchvision's sampler draws the same counts)
labels = torch.tensor([1] * 9 + [0] * 40 + [-1] * 11)[torch.randperm(60)]
pos_mask, neg_mask = det_utils.BalancedPositiveNegativeSampler(16, 0.25)([labels])
put("sample", "labels", labels)
put("sample", "counts", torch.tensor([int(pos_mask[0].sum()), int(neg_mask[0].sum())], dtype=torch.int64))


# --- NMS -----------------------------------------------------------------------------------------
centres = torch.rand(6, 2) * 30
boxes = torch.cat([random_boxes(1, lo=0, hi=1, min_side=6, max_side=12) + torch.cat([c, c]) + torch.randn(4) * 1.5
                   for c in centres.repeat_interleave(7, dim=0)])
boxes = torch.cat([boxes[:, :2].minimum(boxes[:, 2:]), boxes[:, :2].maximum(boxes[:, 2:])], dim=1)
scores = torch.randperm(len(boxes)).float() / len(boxes) + 0.01
groups = torch.randint(0, 3, (len(boxes),))
put("nms", "boxes", boxes); put("nms", "scores", scores); put("nms", "groups", groups)
for thr in (0.5, 0.7):
    put("nms", f"keep_{int(thr * 10)}", nms(boxes, scores, thr))
    put("nms", f"batched_keep_{int(thr * 10)}", batched_nms(boxes, scores, groups, thr))


# --- find_top_rpn_proposals ----------------------------------------------------------------------
grids, strides, sizes = [(4, 5), (2, 3), (1, 2)], [8, 16, 32], [16, 32, 64]
level_anchors = [grid_anchors([s], [0.5, 1.0, 2.0], st, g, 0.0) for s, st, g in zip(sizes, strides, grids)]
image_sizes = [(30, 38), (26, 40)]
pre, post = 20, 15
per_level_boxes, per_level_logits = [], []
for lvl, anc in enumerate(level_anchors):
    d = torch.randn(2, len(anc), 4) * 0.4
    logits = torch.randperm(2 * len(anc)).float().reshape(2, len(anc)) / 7 - 3
    put("proposals", f"anchors_{lvl}", anc); put("proposals", f"deltas_{lvl}", d); put("proposals", f"logits_{lvl}", logits)
    per_level_boxes.append(torch.stack([d2_apply_deltas(d[n], anc, (1, 1, 1, 1)) for n in range(2)]))
    per_level_logits.append(logits)
topk_boxes, topk_scores, level_ids = [], [], []
for lvl, (bx, lg) in enumerate(zip(per_level_boxes, per_level_logits)):
    k = min(lg.shape[1], pre)
    s, idx = lg.topk(k, dim=1)
    topk_boxes.append(bx[torch.arange(2)[:, None], idx]); topk_scores.append(s)
    level_ids.append(torch.full((k,), lvl, dtype=torch.int64))
topk_boxes, topk_scores, level_ids = torch.cat(topk_boxes, 1), torch.cat(topk_scores, 1), torch.cat(level_ids)
for n, (h, w) in enumerate(image_sizes):
    bx = topk_boxes[n].clone()
    bx[:, 0::2] = bx[:, 0::2].clamp(min=0, max=w)
    bx[:, 1::2] = bx[:, 1::2].clamp(min=0, max=h)
    keep = ((bx[:, 2] - bx[:, 0]) > 0) & ((bx[:, 3] - bx[:, 1]) > 0)
    bx, sc, lv = bx[keep], topk_scores[n][keep], level_ids[keep]
    k = batched_nms(bx, sc, lv, 0.7)[:post]
    put("proposals", f"boxes_image{n}", bx[k]); put("proposals", f"logits_image{n}", sc[k])
    put("proposals", f"levels_image{n}", lv[k])
put("proposals", "sizes", torch.tensor([h for hw in image_sizes for h in hw] + [pre, post], dtype=torch.int64))


# --- RoIAlign forward and backward (torchvision's kernel, detectron2's aligned=True) --------------
def roi_case(name, x, rois, out_size, scale, sampling, aligned):
    leaf = x.clone().requires_grad_(True)
    out = roi_align(leaf, rois, out_size, scale, sampling, aligned)
    g = torch.randn_like(out)
    out.backward(g)
    x64 = x.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois.double(), out_size, scale, sampling, aligned), (x64,))
    put(name, "input", x); put(name, "rois", rois); put(name, "out", out); put(name, "grad_out", g)
    put(name, "d_input", leaf.grad)
    put(name, "sizes", torch.tensor([*x.shape, *out_size, sampling, int(aligned)], dtype=torch.int64))
    put(name, "scale", torch.tensor([scale]))


x = torch.randn(2, 3, 10, 12)
rois = torch.tensor([
    [0, 2.3, 3.1, 15.7, 12.9],     # ordinary
    [1, -6.0, -3.0, 9.0, 8.0],     # starts outside (coordinates <= 0 clamp)
    [1, -9.0, -9.0, -3.5, -2.5],   # wholly beyond -1 after scaling: zeros
    [0, 20.0, 15.0, 30.0, 26.0],   # past the last row/column
    [0, 4.0, 4.0, 4.6, 4.3],       # smaller than a cell
    [1, 7.0, 7.0, 7.0, 7.0],       # empty: aligned gives no samples
    [0, 0.0, 0.0, 24.0, 20.0],     # the whole map
])
roi_case("roi_aligned", x, rois, (3, 4), 0.5, 0, True)
roi_case("roi_sampling2", x, rois, (2, 3), 0.5, 2, True)
roi_case("roi_legacy", x, rois, (3, 4), 0.5, 0, False)
roi_case("roi_7x7", torch.randn(1, 2, 16, 16), torch.tensor([[0, 3.0, 5.0, 50.0, 41.0], [0, 20.5, 1.5, 63.0, 30.0]]),
         (7, 7), 0.25, 0, True)


# --- Multi-level pooler: detectron2 assign_boxes_to_levels + ROIAlignV2 ---------------------------
pyr_strides = [4, 8, 16, 32]
feats = [torch.randn(2, 2, 256 // s, 256 // s) for s in pyr_strides]
sides = [20.0, 111.9, 112.0, 150.0, 223.9, 224.0, 300.0, 447.9, 448.0, 600.0]
box_list = []
for i, side in enumerate(sides):
    x0, y0 = (i * 13) % 60 + 0.3, (i * 29) % 50 + 0.7
    box_list.append([i % 2, x0, y0, x0 + side, y0 + side * (0.9 if i % 3 == 0 else 1.0)])
prois = torch.tensor(box_list)
area = (prois[:, 3] - prois[:, 1]) * (prois[:, 4] - prois[:, 2])
levels = torch.clamp(torch.floor(4 + torch.log2(torch.sqrt(area) / 224 + 1e-8)), min=2, max=5).long() - 2
leaves = [f.clone().requires_grad_(True) for f in feats]
pooled = torch.zeros(len(prois), 2, 7, 7)
for lvl in range(4):
    inds = torch.nonzero(levels == lvl).flatten()
    pooled = pooled.index_put((inds,), roi_align(leaves[lvl], prois[inds], (7, 7), 1.0 / pyr_strides[lvl], 0, True))
g = torch.randn_like(pooled)
pooled.backward(g)
for lvl in range(4):
    put("pooler", f"p{lvl + 2}", feats[lvl]); put("pooler", f"d_p{lvl + 2}", leaves[lvl].grad)
put("pooler", "rois", prois); put("pooler", "levels", levels); put("pooler", "out", pooled); put("pooler", "grad_out", g)


# --- Mask targets: BitMasks.crop_and_resize = ROIAlign(28, 1.0, 0, aligned=True) >= 0.5 -----------
H, W = 40, 50
yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
masks = torch.stack([((xx - 14) ** 2 + (yy - 12) ** 2 < 81).float(),
                     ((xx > 20) & (xx < 44) & (yy > 18) & (yy < 35) & ((xx - yy) > 0)).float(),
                     ((xx - 30) ** 2 / 200 + (yy - 20) ** 2 / 60 < 1).float()])
mboxes = torch.tensor([[4.6, 2.2, 23.9, 21.7], [19.3, 17.8, 45.1, 36.2], [14.0, 11.5, 46.5, 28.0]])
rois = torch.cat([torch.arange(3).float()[:, None], mboxes], dim=1)
targets = (roi_align(masks[:, None], rois, (28, 28), 1.0, 0, aligned=True).squeeze(1) >= 0.5).float()
put("mask_targets", "masks", masks); put("mask_targets", "boxes", mboxes); put("mask_targets", "targets", targets)


# --- Mask pasting: detectron2 paste_masks_in_image (grid_sample, CPU one box at a time) -----------
def d2_paste(mask, box, img_h, img_w):
    x0i = max(int(math.floor(box[0])) - 1, 0); y0i = max(int(math.floor(box[1])) - 1, 0)
    x1i = min(int(math.ceil(box[2])) + 1, img_w); y1i = min(int(math.ceil(box[3])) + 1, img_h)
    out = torch.zeros(img_h, img_w)
    img_y = (torch.arange(y0i, y1i, dtype=torch.float32) + 0.5 - box[1]) / (box[3] - box[1]) * 2 - 1
    img_x = (torch.arange(x0i, x1i, dtype=torch.float32) + 0.5 - box[0]) / (box[2] - box[0]) * 2 - 1
    gx = img_x[None, :].expand(len(img_y), len(img_x))
    gy = img_y[:, None].expand(len(img_y), len(img_x))
    grid = torch.stack([gx, gy], dim=2)[None]
    sampled = F.grid_sample(mask[None, None], grid, align_corners=False)[0, 0]
    out[y0i:y1i, x0i:x1i] = (sampled >= 0.5).float()
    return out


probs = torch.sigmoid(F.avg_pool2d(torch.randn(5, 1, 30, 30) * 6, 3, 1)[:, 0])
pboxes = torch.tensor([[3.3, 4.7, 20.2, 18.9], [-5.0, 10.5, 12.0, 33.0], [25.25, 2.0, 41.0, 9.5],
                       [10.0, 10.0, 11.2, 10.8], [0.0, 0.0, 40.0, 30.0]])
pasted = torch.stack([d2_paste(probs[i], pboxes[i], 30, 40) for i in range(5)])
put("paste", "probabilities", probs); put("paste", "boxes", pboxes); put("paste", "masks", pasted)

save_file(T, OUT)
os.chmod(OUT, 0o644)
print(f"{OUT}: {len(T)} tensors, {os.path.getsize(OUT)} bytes")
