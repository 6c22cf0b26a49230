"""Reference detections of a tiny ViTDet Mask R-CNN, computed by detectron2 itself, for the
`mae-eval detect --eval-only` parity tests (issue 14). Writes Tests/TaskTests/Fixtures/dense_reference/vitdet_*.

Run: /work/venv/bin/python scripts/make_vitdet_reference.py [DETECTRON2_SOURCE_TREE]

detectron2 is imported from its source tree (default $DETECTRON2_SRC or /tmp/d2, e.g.
`git --git-dir=<mirror of facebookresearch/detectron2> archive HEAD | tar x -C /tmp/d2`), not built
and not vendored: its modelling code is pure Python (roi_align and nms go through torchvision), so
`detectron2._C` is never imported. It needs fvcore, iopath, omegaconf and cloudpickle in the venv.

The model is detectron2's ViTDet Mask R-CNN (configs/common/models/mask_rcnn_vitdet.py on
mask_rcnn_fpn.py) at a tiny size: ViT patch 16, width 32, depth 4, 4 heads, window 3 on blocks 0 and 2,
global blocks 1 and 3, rel-pos on, pretrain size 224 (a 14x14 pos_embed resized per forward), the
simple feature pyramid (4, 2, 1, 0.5) at 32 channels + LastLevelMaxPool, the RPN of ViTDet (2 convs),
4conv1fc box head and 4-conv mask head with LN at width 16 (FC 32), 3 classes; everything else as the
COCO config (anchors 32..512 at strides 4..64, RPN 1000/1000 at test, NMS 0.7, score > 0.05, NMS 0.5,
100 per image). The weights are random but seeded, and set so every piece matters: non-zero rel-pos
tables and pos_embed, LN affines away from 1/0, non-zero biases, box/mask predictors large enough to
move boxes and give masks with a margin around 0.5, the background logit biased so a few tens of
detections pass 0.05 per image.

Test input as detectron2 evaluates ViTDet: PIL decode to RGB, ResizeShortestEdge(N, max_size=N) (PIL
bilinear), RGB pixel mean/std on 0..255, square zero padding to N (SimpleFeaturePyramid.square_pad),
boxes rescaled to the original size and masks pasted there (detector_postprocess, paste_masks_in_image).
Outputs are detectron2's `instances_to_coco_json` with the dataset's category ids, as COCOEvaluator
writes them, and pycocotools' 12 numbers on them.

The same forward in float64 must give the same detections (count, classes, order); the script stops
otherwise, so no reference decision sits on a float32 rounding tie.
"""
import copy
import json
import os
import pickle
import sys
from functools import partial

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import save_file

D2_SRC = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DETECTRON2_SRC", "/tmp/d2")
sys.path.insert(0, D2_SRC)

from detectron2.data import transforms as T  # noqa: E402
from detectron2.evaluation.coco_evaluation import instances_to_coco_json  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import SimpleFeaturePyramid, ViT  # noqa: E402
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator  # noqa: E402
from detectron2.modeling.backbone.fpn import LastLevelMaxPool  # noqa: E402
from detectron2.modeling.box_regression import Box2BoxTransform  # noqa: E402
from detectron2.modeling.matcher import Matcher  # noqa: E402
from detectron2.modeling.meta_arch import GeneralizedRCNN  # noqa: E402
from detectron2.modeling.poolers import ROIPooler  # noqa: E402
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead  # noqa: E402
from detectron2.modeling.roi_heads import (  # noqa: E402
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
    StandardROIHeads,
)
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "TaskTests", "Fixtures", "dense_reference")
IMAGES = os.path.join(OUT, "vitdet_images")

SEED = int(os.environ.get("SEED", "15"))
IMG_SIZE, PATCH, WIDTH, DEPTH, HEADS, WINDOW = 128, 16, 32, 4, 4, 3
WINDOW_BLOCKS, GLOBAL_BLOCKS = [0, 2], [1, 3]
PYRAMID, HEAD_CONV, HEAD_FC, CLASSES = 32, 16, 32, 3
PIXEL_MEAN, PIXEL_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
# The dataset's category ids (not contiguous, as COCO's are): detectron2 maps them in sorted order.
CATEGORIES = [{"id": 2, "name": "ellipse"}, {"id": 5, "name": "bar"}, {"id": 9, "name": "blob"}]


def build_model():
    """detectron2's ViTDet Mask R-CNN at the tiny sizes above, as the LazyConfig would build it."""
    net = ViT(img_size=IMG_SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
              drop_path_rate=0.1, window_size=WINDOW, mlp_ratio=4, qkv_bias=True,
              norm_layer=partial(nn.LayerNorm, eps=1e-6), window_block_indexes=WINDOW_BLOCKS,
              residual_block_indexes=[], use_rel_pos=True, out_feature="last_feat")
    backbone = SimpleFeaturePyramid(net=net, in_feature="last_feat", out_channels=PYRAMID,
                                    scale_factors=(4.0, 2.0, 1.0, 0.5), top_block=LastLevelMaxPool(),
                                    norm="LN", square_pad=IMG_SIZE)
    rpn = RPN(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=StandardRPNHead(in_channels=PYRAMID, num_anchors=3, conv_dims=[-1, -1]),
        anchor_generator=DefaultAnchorGenerator(sizes=[[32], [64], [128], [256], [512]],
                                                aspect_ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64], offset=0.0),
        anchor_matcher=Matcher(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256, positive_fraction=0.5, pre_nms_topk=(2000, 1000), post_nms_topk=(1000, 1000),
        nms_thresh=0.7)
    scales = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)
    roi_heads = StandardROIHeads(
        num_classes=CLASSES, batch_size_per_image=512, positive_fraction=0.25,
        proposal_matcher=Matcher(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
        box_in_features=["p2", "p3", "p4", "p5"],
        box_pooler=ROIPooler(output_size=7, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2"),
        box_head=FastRCNNConvFCHead(ShapeSpec(channels=PYRAMID, height=7, width=7), conv_dims=[HEAD_CONV] * 4,
                                    fc_dims=[HEAD_FC], conv_norm="LN"),
        box_predictor=FastRCNNOutputLayers(ShapeSpec(channels=HEAD_FC), test_score_thresh=0.05,
                                           box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
                                           num_classes=CLASSES),
        mask_in_features=["p2", "p3", "p4", "p5"],
        mask_pooler=ROIPooler(output_size=14, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2"),
        mask_head=MaskRCNNConvUpsampleHead(ShapeSpec(channels=PYRAMID, width=14, height=14), num_classes=CLASSES,
                                           conv_dims=[HEAD_CONV] * 5, conv_norm="LN"))
    return GeneralizedRCNN(backbone=backbone, proposal_generator=rpn, roi_heads=roi_heads,
                           pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD, input_format="RGB")


def randomise(model, g):
    """Seeded weights that exercise every term (see the module doc)."""
    def normal(p, std, mean=0.0):
        with torch.no_grad():
            p.copy_(mean + std * torch.randn(p.shape, generator=g))

    for name, p in model.named_parameters():
        fan_in = p[0].numel() if p.dim() > 1 else 1
        if "rel_pos" in name:
            normal(p, 0.3)
        elif name.endswith("pos_embed"):
            normal(p, 0.3)
        elif p.dim() == 1 and ("norm" in name) and name.endswith("weight"):
            normal(p, 0.15, 1.0)
        elif name.endswith("bias"):
            normal(p, 0.05)
        elif "objectness_logits" in name or "anchor_deltas" in name:
            normal(p, 1.0 / fan_in ** 0.5)
        elif "cls_score" in name:
            normal(p, 1.0 / fan_in ** 0.5)
        elif "bbox_pred" in name:
            normal(p, 0.3 / fan_in ** 0.5)
        elif "mask_head.predictor" in name:
            normal(p, 3.0 / fan_in ** 0.5)
        else:
            normal(p, 1.2 / fan_in ** 0.5)


def calibrate_classifier(model, coco, spread, background):
    """Sets the class logits so no class wins everywhere (a random head's FC features share one large
    common part): at the mean box-head feature over these images' proposals every class logit is 0 and
    the background's is `background`; the weights are scaled so the logits vary by `spread` (std)
    around it. Seeded and deterministic, like the rest of the weights."""
    features = []
    hook = model.roi_heads.box_head.register_forward_hook(lambda m, i, o: features.append(o.detach()))
    infer(model, coco, torch.float32)
    hook.remove()
    f = torch.cat(features)
    mean = f.mean(0)
    layer = model.roi_heads.box_predictor.cls_score
    with torch.no_grad():
        std = ((f - mean) @ layer.weight.T).std().item()
        layer.weight *= spread / std
        layer.bias.copy_(-(layer.weight @ mean))
        layer.bias[-1] += background


def ellipse_mask(h, w, cy, cx, ry, rx, angle):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    u, v = ((x - cx) * c + (y - cy) * s) / rx, (-(x - cx) * s + (y - cy) * c) / ry
    return u * u + v * v <= 1.0


def polygon_of_ellipse(cy, cx, ry, rx, angle, n=24):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(angle), np.sin(angle)
    x = cx + rx * np.cos(t) * c - ry * np.sin(t) * s
    y = cy + rx * np.cos(t) * s + ry * np.sin(t) * c
    return [float(round(v, 2)) for pair in zip(x, y) for v in pair]


def make_images(rng):
    """Three procedural held-out images unlike Shapes (other sizes, non-square, PNG and JPEG): a noisy
    gradient or striped background with ellipses and bars, and their COCO instances (polygons)."""
    specs = [("ellipses_160x100.png", 160, 100), ("stripes_90x120.jpg", 90, 120), ("field_128x72.png", 128, 72)]
    images, annotations = [], []
    for image_id, (name, w, h) in enumerate(specs, start=1):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        if "stripes" in name:
            base = 110 + 70 * np.sign(np.sin(x / 5.0 + y / 9.0))[..., None] * np.array([1.0, 0.6, 0.2])
        else:
            base = np.stack([60 + 120 * x / w, 90 + 80 * y / h, 160 - 60 * x / w], -1)
        pixels = base + rng.normal(0, 18, (h, w, 3))
        for k in range(3):
            category = CATEGORIES[(image_id + k) % 3]["id"]
            cy, cx = rng.uniform(0.25 * h, 0.75 * h), rng.uniform(0.2 * w, 0.8 * w)
            ry, rx = rng.uniform(0.12, 0.3) * h, rng.uniform(0.1, 0.25) * w
            if category == 5:
                rx = ry * 0.25  # a bar: a thin ellipse
            angle = rng.uniform(0, np.pi)
            pixels[ellipse_mask(h, w, cy, cx, ry, rx, angle)] = rng.uniform(0, 255, 3)
            poly = polygon_of_ellipse(cy, cx, ry, rx, angle)
            xs, ys = np.clip(poly[0::2], 0, w), np.clip(poly[1::2], 0, h)
            poly = [float(v) for pair in zip(xs, ys) for v in pair]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
            area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "segmentation": [poly], "area": float(area),
                                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "iscrowd": 0})
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        path = os.path.join(IMAGES, name)
        if name.endswith(".jpg"):
            img.save(path, quality=90)
        else:
            img.save(path)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def infer(model, coco, dtype):
    """detectron2's test path per image: read_image (PIL, RGB), ResizeShortestEdge(N, N), the model's
    inference with detector_postprocess at the original size."""
    resize = T.ResizeShortestEdge(short_edge_length=IMG_SIZE, max_size=IMG_SIZE)
    model = model.to(dtype)
    outputs = []
    with torch.no_grad():
        for info in coco["images"]:
            original = np.asarray(Image.open(os.path.join(IMAGES, info["file_name"])).convert("RGB"))
            image = resize.get_transform(original).apply_image(original)
            tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).to(dtype)
            out = model([{"image": tensor, "height": info["height"], "width": info["width"]}])[0]["instances"]
            outputs.append(out.to("cpu"))
    return outputs


def same_detections(a, b, box_tolerance, score_tolerance):
    """The same detections up to order (near-equal scores may swap): a one-to-one match of equal
    classes with boxes within `box_tolerance` px and scores within `score_tolerance`."""
    if len(a) != len(b):
        print(f"  {len(a)} vs {len(b)} detections")
        return False
    if not len(a):
        return True
    boxes_a, boxes_b = a.pred_boxes.tensor.double(), b.pred_boxes.tensor.double()
    distance = (boxes_a[:, None, :] - boxes_b[None, :, :]).abs().amax(-1)
    distance[a.pred_classes[:, None] != b.pred_classes[None, :]] = float("inf")
    nearest = distance.argmin(1)
    worst_box = distance.min(1).values.max().item()
    worst_score = (a.scores.double() - b.scores.double()[nearest]).abs().max().item()
    one_to_one = len(set(nearest.tolist())) == len(a)
    print(f"  max box difference {worst_box:.2e} px, score {worst_score:.2e}, one-to-one {one_to_one}")
    return one_to_one and worst_box < box_tolerance and worst_score < score_tolerance


def coco_numbers(gt_path, results, iou_type):
    gt = COCO(gt_path)
    ev = COCOeval(gt, gt.loadRes(results), iou_type)
    ev.evaluate(); ev.accumulate(); ev.summarize()
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    return {n: float(v * 100) for n, v in zip(names, ev.stats)}


def main():
    os.makedirs(IMAGES, exist_ok=True)
    torch.manual_seed(0)
    model = build_model()
    randomise(model, torch.Generator().manual_seed(SEED))
    model.eval()
    coco = make_images(np.random.default_rng(SEED))
    gt_path = os.path.join(OUT, "vitdet_val.json")
    with open(gt_path, "w") as f:
        json.dump(coco, f)

    calibrate_classifier(model, coco, spread=2.0, background=8.0)
    state = {k: v.detach().clone().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(OUT, "vitdet_tiny.safetensors"))
    # detectron2's Checkpointer.save: torch.save({"model": state_dict, **extra}).
    torch.save({"model": state, "iteration": 1234}, os.path.join(OUT, "vitdet_tiny.pth"))
    # A model-zoo .pkl (as tools/convert-*-to-d2.py write them): plain pickle of numpy arrays.
    with open(os.path.join(OUT, "vitdet_tiny.pkl"), "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "mae-eval reference",
                     "matching_heuristics": False}, f)

    float32 = infer(model, coco, torch.float32)
    model = model.float()
    # detectron2's batched_nms casts boxes to float32; for the float64 check only, NMS takes both in float64.
    import torchvision.ops.boxes as tv_boxes
    nms = tv_boxes.nms
    tv_boxes.nms = lambda boxes, scores, threshold: nms(boxes.double(), scores.double(), threshold)
    float64 = infer(model, coco, torch.float64)
    tv_boxes.nms = nms
    # Weights perturbed by a relative 1e-6 (about what another float32 summation order moves) must not
    # change a decision (count, classes, one-to-one boxes); their boxes and scores move more than float64's
    # (up to ~5e-3 px and ~6e-4 measured: near-duplicate proposals and RoIAlign's adaptive sampling count
    # make a detection's value jump a little), so they are held to 1e-2 px and 1e-3.
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in perturbed.parameters():
            p.mul_(1 + 1e-6 * torch.randn(p.shape, generator=g))
    jittered = infer(perturbed, coco, torch.float32)
    for info, a, b, c in zip(coco["images"], float32, float64, jittered):
        if not same_detections(a, b, 1e-3, 1e-4) or not same_detections(a, c, 1e-2, 1e-3):
            sys.exit(f"{info['file_name']}: the float64 or perturbed detections differ; change the seed")
        masks32 = a.pred_masks.numpy()
        masks64 = b.pred_masks.numpy()
        flips = int((masks32 != masks64).sum())
        print(f"{info['file_name']}: {len(a)} detections, classes {np.bincount(a.pred_classes.numpy(), minlength=3)}, "
              f"scores {a.scores.min():.3f}..{a.scores.max():.3f}, mask pixels flipping in float64: {flips}")

    # Contiguous class -> the dataset's id, as detectron2's thing_dataset_id_to_contiguous_id inverts it.
    ids = sorted(c["id"] for c in CATEGORIES)
    results = []
    for info, instances in zip(coco["images"], float32):
        for r in instances_to_coco_json(instances, info["id"]):
            r["category_id"] = ids[r["category_id"]]
            results.append(r)
    with open(os.path.join(OUT, "vitdet_detections.json"), "w") as f:
        json.dump(results, f)
    metrics = {"bbox": coco_numbers(gt_path, results, "bbox"), "segm": coco_numbers(gt_path, results, "segm")}
    with open(os.path.join(OUT, "vitdet_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)

    commit = os.popen(f"git -C {D2_SRC} rev-parse HEAD 2>/dev/null").read().strip() or "02b5c4e (archive)"
    config = {
        "reference": "detectron2 GeneralizedRCNN (ViT + SimpleFeaturePyramid, RPN, StandardROIHeads), imported from source",
        "detectron2": commit, "torch": torch.__version__,
        "img_size": IMG_SIZE, "patch_size": PATCH, "embed_dim": WIDTH, "depth": DEPTH, "num_heads": HEADS,
        "mlp_ratio": 4, "window_size": WINDOW, "window_block_indexes": WINDOW_BLOCKS,
        "global_block_indexes": GLOBAL_BLOCKS, "pretrain_img_size": 224, "pretrain_use_cls_token": True,
        "use_rel_pos": True, "square_pad": IMG_SIZE, "pyramid_channels": PYRAMID,
        "scale_factors": [4.0, 2.0, 1.0, 0.5], "norm": "LN",
        "anchor_sizes": [[32], [64], [128], [256], [512]], "aspect_ratios": [0.5, 1.0, 2.0],
        "anchor_strides": [4, 8, 16, 32, 64], "rpn_conv_dims": [-1, -1], "rpn_pre_nms_topk_test": 1000,
        "rpn_post_nms_topk_test": 1000, "rpn_nms_thresh": 0.7, "box_head": "4conv1fc LN", "box_head_conv": HEAD_CONV,
        "box_head_fc": HEAD_FC, "mask_head_conv": HEAD_CONV, "mask_head_convs": 4, "num_classes": CLASSES,
        "test_score_thresh": 0.05, "test_nms_thresh": 0.5, "detections_per_image": 100,
        "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "input_format": "RGB",
        "test_resize": f"ResizeShortestEdge({IMG_SIZE}, max_size={IMG_SIZE}), PIL bilinear",
        "category_ids": ids,
    }
    with open(os.path.join(OUT, "vitdet_config.json"), "w") as f:
        json.dump(config, f, indent=1)


if __name__ == "__main__":
    main()
