"""Generates Tests/DenseTests/Fixtures/roi_heads.safetensors (run with /work/venv/bin/python).

A plain-torch restatement of detectron2's RoI heads as ViTDet configures them (read at detectron2
02b5c4e: modeling/roi_heads/box_head.py FastRCNNConvFCHead, fast_rcnn.py FastRCNNOutputLayers.losses,
mask_head.py MaskRCNNConvUpsampleHead + mask_rcnn_loss, layers/batch_norm.py LayerNorm), on fixed pooled
RoI features at small widths. Parameters are stored under detectron2's names; each case holds the
input, outputs, losses and the gradients of (sum of its losses) with respect to the input and every
parameter.
"""
import math
import os
import pickle

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "DenseTests", "Fixtures")
torch.manual_seed(14)

C, CONV, FC, K, R = 6, 8, 16, 3, 5


def channel_ln(x, w, b, eps=1e-6):
    """detectron2.layers.LayerNorm: over channels at each pixel, biased variance."""
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    return w[:, None, None] * ((x - u) / torch.sqrt(s + eps)) + b[:, None, None]


def param(shape, scale):
    return (torch.randn(shape) * scale).requires_grad_()


def conv_ln_relu(prefix, params, cin):
    """The parameters of a detectron2 Conv2d(bias=False, norm=LN) + ReLU."""
    params[prefix + ".weight"] = param((CONV, cin, 3, 3), 0.3)
    params[prefix + ".norm.weight"] = (1 + 0.1 * torch.randn(CONV)).requires_grad_()
    params[prefix + ".norm.bias"] = param(CONV, 0.1)


def box_forward(p, x):
    h = x
    for k in range(4):
        pre = f"roi_heads.box_head.conv{k + 1}"
        h = F.relu(channel_ln(F.conv2d(h, p[pre + ".weight"], None, padding=1), p[pre + ".norm.weight"], p[pre + ".norm.bias"]))
    h = F.relu(F.linear(h.flatten(1), p["roi_heads.box_head.fc1.weight"], p["roi_heads.box_head.fc1.bias"]))
    return (F.linear(h, p["roi_heads.box_predictor.cls_score.weight"], p["roi_heads.box_predictor.cls_score.bias"]),
            F.linear(h, p["roi_heads.box_predictor.bbox_pred.weight"], p["roi_heads.box_predictor.bbox_pred.bias"]))


def mask_forward(p, x):
    h = x
    for k in range(4):
        pre = f"roi_heads.mask_head.mask_fcn{k + 1}"
        h = F.relu(channel_ln(F.conv2d(h, p[pre + ".weight"], None, padding=1), p[pre + ".norm.weight"], p[pre + ".norm.bias"]))
    h = F.relu(F.conv_transpose2d(h, p["roi_heads.mask_head.deconv.weight"], p["roi_heads.mask_head.deconv.bias"], stride=2))
    return F.conv2d(h, p["roi_heads.mask_head.predictor.weight"], p["roi_heads.mask_head.predictor.bias"])


def apply_deltas(deltas, boxes, weights=(10.0, 10.0, 5.0, 5.0), clamp=math.log(1000.0 / 16)):
    """detectron2 Box2BoxTransform.apply_deltas for (R, 4K) deltas and (R, 4) boxes."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw, dh = torch.clamp(deltas[:, 2::4] / ww, max=clamp), torch.clamp(deltas[:, 3::4] / wh, max=clamp)
    pcx, pcy = dx * widths[:, None] + cx[:, None], dy * heights[:, None] + cy[:, None]
    pw, ph = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
    out = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=2)
    return out.reshape(deltas.shape)


def inference_case(out, box_params, mask_params):
    """fast_rcnn_inference + mask_rcnn_inference on one pyramid level of stride 4 (two 48 x 40 inputs
    padded to 48 x 48), proposals fixed; roi_align(aligned=True, sampling_ratio=0) is detectron2's ROIAlignV2."""
    features = torch.randn(2, C, 12, 12)
    sizes = [(48, 40), (44, 48)]
    proposals = []
    for b in range(2):
        # Four overlapping proposals (so NMS suppresses) and three spread ones, some past the image (clipped).
        xy = torch.cat([10 + torch.rand(4, 2) * 4, torch.rand(3, 2) * 30])
        wh = torch.cat([12 + torch.rand(4, 2) * 3, 4 + torch.rand(3, 2) * 16])
        proposals.append(torch.cat([xy, xy + wh], 1))
    rois = torch.cat([torch.cat([torch.full((7, 1), float(b)), p], 1) for b, p in enumerate(proposals)])
    pooled = torchvision.ops.roi_align(features, rois, (7, 7), spatial_scale=0.25, sampling_ratio=0, aligned=True)
    with torch.no_grad():
        scores, deltas = box_forward(box_params, pooled)
        probs = F.softmax(scores, -1)
        out["infer/features"] = features
        for b in range(2):
            out[f"infer/proposals{b}"] = proposals[b]
            rows = slice(7 * b, 7 * b + 7)
            boxes = apply_deltas(deltas[rows], proposals[b]).view(7, K, 4)
            h, w = sizes[b]
            boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
            boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
            s = probs[rows, :-1]
            keep_mask = s > 0.05
            inds = keep_mask.nonzero()
            cand, cand_scores, cand_classes = boxes[inds[:, 0], inds[:, 1]], s[keep_mask], inds[:, 1]
            keep = torchvision.ops.batched_nms(cand, cand_scores, cand_classes, 0.5)[:100]
            kept_boxes = cand[keep]
            kept_rois = torch.cat([torch.zeros(len(keep), 1) + b, kept_boxes], 1)
            mask_in = torchvision.ops.roi_align(features, kept_rois, (14, 14), spatial_scale=0.25, sampling_ratio=0, aligned=True)
            logits = mask_forward(mask_params, mask_in)
            out[f"infer/boxes{b}"] = kept_boxes
            out[f"infer/scores{b}"] = cand_scores[keep]
            out[f"infer/classes{b}"] = cand_classes[keep].float()
            out[f"infer/masks{b}"] = logits[torch.arange(len(keep)), cand_classes[keep]].sigmoid()


def box_case(out):
    p = {}
    for k in range(4):
        conv_ln_relu(f"roi_heads.box_head.conv{k + 1}", p, C if k == 0 else CONV)
    p["roi_heads.box_head.fc1.weight"] = param((FC, CONV * 49), 0.05)
    p["roi_heads.box_head.fc1.bias"] = param(FC, 0.1)
    p["roi_heads.box_predictor.cls_score.weight"] = param((K + 1, FC), 0.3)
    p["roi_heads.box_predictor.cls_score.bias"] = param(K + 1, 0.1)
    p["roi_heads.box_predictor.bbox_pred.weight"] = param((4 * K, FC), 0.3)
    p["roi_heads.box_predictor.bbox_pred.bias"] = param(4 * K, 0.1)
    x = torch.randn(R, C, 7, 7).requires_grad_()
    scores, deltas = box_forward(p, x)
    gt_classes = torch.tensor([2, 3, 0, 1, 3])  # 3 = background (last)
    target_deltas = torch.randn(R, 4)
    loss_cls = F.cross_entropy(scores, gt_classes, reduction="mean")
    fg = (gt_classes >= 0) & (gt_classes < K)
    fg_deltas = deltas.view(R, K, 4)[fg, gt_classes[fg]]
    # smooth_l1 with beta 0 is L1; summed, divided by every sampled proposal (R), not the fg count.
    loss_box = F.l1_loss(fg_deltas, target_deltas[fg], reduction="sum") / max(gt_classes.numel(), 1)
    (loss_cls + loss_box).backward()
    out["box/x"] = x.detach()
    out["box/gt_classes"] = gt_classes.float()
    out["box/target_deltas"] = target_deltas
    out["box/scores"] = scores.detach()
    out["box/deltas"] = deltas.detach()
    out["box/loss_cls"] = loss_cls.detach().reshape(1)
    out["box/loss_box_reg"] = loss_box.detach().reshape(1)
    out["box/d_x"] = x.grad
    for name, t in p.items():
        out["box/" + name] = t.detach()
        out["box/d_" + name] = t.grad
    return p


def mask_case(out):
    p = {}
    for k in range(4):
        conv_ln_relu(f"roi_heads.mask_head.mask_fcn{k + 1}", p, C if k == 0 else CONV)
    p["roi_heads.mask_head.deconv.weight"] = param((CONV, CONV, 2, 2), 0.3)
    p["roi_heads.mask_head.deconv.bias"] = param(CONV, 0.1)
    p["roi_heads.mask_head.predictor.weight"] = param((K, CONV, 1, 1), 0.3)
    p["roi_heads.mask_head.predictor.bias"] = param(K, 0.1)
    x = torch.randn(R, C, 14, 14).requires_grad_()
    logits = mask_forward(p, x)
    classes = torch.tensor([1, 0, 2, 2, 1])
    targets = (torch.rand(R, 28, 28) > 0.5).float()
    picked = logits[torch.arange(R), classes]
    loss = F.binary_cross_entropy_with_logits(picked, targets, reduction="mean")
    loss.backward()
    out["mask/x"] = x.detach()
    out["mask/classes"] = classes.float()
    out["mask/targets"] = targets
    out["mask/logits"] = logits.detach()
    out["mask/loss_mask"] = loss.detach().reshape(1)
    out["mask/d_x"] = x.grad
    for name, t in p.items():
        out["mask/" + name] = t.detach()
        out["mask/d_" + name] = t.grad
    return p


def main():
    out = {}
    box_params = box_case(out)
    mask_params = mask_case(out)
    inference_case(out, box_params, mask_params)
    # The same heads as detectron2 checkpoints: a model-zoo style .pkl of numpy arrays and a torch.save
    # state dict, both {"model": {name: weight}}.
    weights = {k: v.detach().clone() for k, v in {**box_params, **mask_params}.items()}
    with open(os.path.join(OUT, "roi_heads_d2.pkl"), "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in weights.items()}, "__author__": "mae-eval fixture"}, f)
    torch.save({"model": weights}, os.path.join(OUT, "roi_heads_d2.pth"))
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "roi_heads.safetensors"))


if __name__ == "__main__":
    main()
