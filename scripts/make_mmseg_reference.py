"""Reference predictions of a tiny mmsegmentation MAE UperNet, computed by mmseg itself, for the
`mae-eval segment --eval-only` parity tests (issue 15). Writes Tests/TaskTests/Fixtures/dense_reference/mmseg_*.

Run: /work/venv/bin/python scripts/make_mmseg_reference.py

Needs `pip install mmengine mmsegmentation==1.2.2 mmcv-lite==2.1.0 ftfy regex` in the venv (mmseg 1.2.2
refuses mmcv 2.2). mmcv-lite has no compiled ops: mmseg's package import pulls `mmcv.ops` for heads
this model does not use (point_sample, sigmoid_focal_loss, ...), so a sys.modules shim below stands in
for `mmcv.ops` with names that raise if ever called. Everything that runs is mmseg's / mmcv's own code.

The model is mmseg's `EncoderDecoder` as configs/_base_/models/upernet_mae.py builds it, at a tiny
size: `MAE` backbone (BEiT code) img 32, patch 4, width 32, 6 layers, 4 heads, out_indices [1, 2, 3, 5]
(mmseg's [3, 5, 7, 11] for 12 layers scaled to 6, as mae-eval's default), full qkv bias, LN eps 1e-6;
`Feature2Pyramid` (4, 2, 1, 0.5); `UPerHead` (pool scales 1, 2, 3, 6, 16 channels) and the `FCNHead`
auxiliary head on level 2 (8 channels), 4 classes, align_corners False. norm_cfg is BN (SyncBN in the
config; the same in one process, and the same parameter names). Weights random but seeded: BN running
stats away from 0/1, LN affines away from 1/0, non-zero biases, a non-zero abs pos_embed.

Two weight sets:
- `mmseg_upernet_tiny`: BEiT's layer scale gamma_1/gamma_2 = 1 and relative position bias tables 0,
  i.e. MAE's initial values (MAEAttention leaves the table at zero, init_values 1.0) - what mae-eval
  runs today; saved as safetensors and as an mmengine checkpoint (.pth: meta and state_dict).
- `mmseg_upernet_tiny_extras`: the same with trained-looking gammas (1 +- 0.3) and rel-pos tables
  (std 0.5), as a fine-tuned mmseg MAE UperNet holds them; safetensors only.

Test input as mmseg evaluates: LoadImageFromFile (cv2, BGR), Resize(scale=(4N, N), keep_ratio=True)
(cv2 bilinear), SegDataPreProcessor (BGR->RGB, mean/std of ImageNet on 0..255), then 'whole' or 'slide'
(crop N, stride N*2//3) inference, logits bilinearly resized to the original size, argmax. mmseg's MAE
adds a pos_embed of fixed size, so 'whole' runs only where the resized image is N x N (the square
images); 'slide' on every image (every resized side >= N). At N = 48 the pos_embed is resized at load
(`MAE.resize_abs_pos_embed`, bicubic, cls row kept), for the identity-extras weights only (their zero
tables need no resizing).
"""
import json
import os
import sys
import types

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ops = types.ModuleType("mmcv.ops")


def _not_built(*args, **kwargs):
    raise RuntimeError("mmcv.ops is not built in mmcv-lite; this model does not use it")


for _name in ["point_sample", "sigmoid_focal_loss", "CrissCrossAttention", "PSAMask", "DeformConv2d",
              "ModulatedDeformConv2d"]:
    setattr(ops, _name, _not_built)
sys.modules["mmcv.ops"] = ops

import mmcv  # noqa: E402
import mmengine  # noqa: E402
import mmseg  # noqa: E402
from mmengine import Config  # noqa: E402
from mmengine.runner.checkpoint import save_checkpoint  # noqa: E402
from mmseg.apis import inference_model, init_model  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "TaskTests", "Fixtures", "dense_reference")
DATA = os.path.join(OUT, "mmseg_val")
SEED = 15
IMG_SIZE, PATCH, WIDTH, DEPTH, HEADS, CLASSES = 32, 4, 32, 6, 4, 4
OUT_INDICES = [1, 2, 3, 5]
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
# (folder, stem, width, height): square images for 'whole', others (no resize / a downscale) for 'slide'.
IMAGES = [("square", "rings_40x40", 40, 40), ("square", "checker_32x32", 32, 32),
          ("wide", "bands_50x32", 50, 32), ("wide", "spots_45x72", 45, 72)]


def config(size, mode):
    norm = dict(type="BN", requires_grad=True)
    test_cfg = dict(mode="whole") if mode == "whole" else dict(mode="slide", crop_size=(size, size),
                                                             stride=(size * 2 // 3, size * 2 // 3))
    model = dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=MEAN, std=STD, bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255),
        backbone=dict(type="MAE", img_size=(size, size), patch_size=PATCH, embed_dims=WIDTH, num_layers=DEPTH,
                      num_heads=HEADS, mlp_ratio=4, out_indices=OUT_INDICES, attn_drop_rate=0.0, drop_path_rate=0.1,
                      norm_cfg=dict(type="LN", eps=1e-6), act_cfg=dict(type="GELU"), norm_eval=False,
                      init_values=1.0),
        neck=dict(type="Feature2Pyramid", embed_dim=WIDTH, rescales=[4, 2, 1, 0.5], norm_cfg=norm),
        decode_head=dict(type="UPerHead", in_channels=[WIDTH] * 4, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                         channels=16, dropout_ratio=0.1, num_classes=CLASSES, norm_cfg=norm, align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        auxiliary_head=dict(type="FCNHead", in_channels=WIDTH, in_index=2, channels=8, num_convs=1,
                            concat_input=False, dropout_ratio=0.1, num_classes=CLASSES, norm_cfg=norm,
                            align_corners=False,
                            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
        train_cfg=dict(), test_cfg=test_cfg)
    pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(4 * size, size), keep_ratio=True),
                dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
    return Config(dict(model=model, test_pipeline=pipeline))


def randomise(model, g, trained_extras):
    def normal(p, std, mean=0.0):
        with torch.no_grad():
            p.copy_(mean + std * torch.randn(p.shape, generator=g))

    for name, p in model.named_parameters():
        fan_in = p[0].numel() if p.dim() > 1 else 1
        if "relative_position_bias_table" in name:
            normal(p, 0.5 if trained_extras else 0.0)
        elif "gamma_" in name:
            normal(p, 0.3 if trained_extras else 0.0, 1.0)
        elif name.endswith("pos_embed") or name.endswith("cls_token"):
            normal(p, 0.3)
        elif p.dim() == 1 and name.endswith("weight"):  # LN and BN scales
            normal(p, 0.15, 1.0)
        elif name.endswith("bias"):
            normal(p, 0.05)
        elif "conv_seg" in name:
            normal(p, 3.0 / fan_in ** 0.5)
        else:
            normal(p, 1.2 / fan_in ** 0.5)
    for name, b in model.named_buffers():
        with torch.no_grad():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + 1.5 * torch.rand(b.shape, generator=g))
            elif name.endswith("num_batches_tracked"):
                b.fill_(1000)


def make_images(rng):
    """Procedural held-out images unlike Shapes (rings, checker, bands, spots over noise) and their
    4-class label maps (a few pixels 255, mmseg's ignore index)."""
    for folder, stem, w, h in IMAGES:
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        if "rings" in stem:
            r = np.hypot(x - w * 0.45, y - h * 0.55)
            labels = (r // 6).astype(np.int64) % CLASSES
        elif "checker" in stem:
            labels = ((x // 8 + y // 8) % 2 + 2 * (x > y)).astype(np.int64) % CLASSES
        elif "bands" in stem:
            labels = ((x + 0.5 * y) // 11).astype(np.int64) % CLASSES
        else:
            labels = np.zeros((h, w), np.int64)
            for k in range(6):
                cy, cx, rad = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, 14)
                labels[np.hypot(x - cx, y - cy) < rad] = 1 + k % (CLASSES - 1)
        palette = rng.uniform(20, 235, (CLASSES, 3))
        pixels = palette[labels] + rng.normal(0, 20, (h, w, 3))
        labels = labels.astype(np.uint8)
        labels[rng.uniform(size=(h, w)) < 0.02] = 255
        for sub, array in [("images", np.clip(pixels, 0, 255).astype(np.uint8)), ("labels", labels)]:
            os.makedirs(os.path.join(DATA, folder, sub), exist_ok=True)
            Image.fromarray(array).save(os.path.join(DATA, folder, sub, stem + ".png"))


def predict(model, folder, out_dir):
    """mmseg's inference_model on each image of `folder`: label maps at the original size, saved as PNG."""
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for _, stem, _, _ in [i for i in IMAGES if i[0] == folder]:
        result = inference_model(model, os.path.join(DATA, folder, "images", stem + ".png"))
        labels = result.pred_sem_seg.data[0].numpy().astype(np.uint8)
        Image.fromarray(labels).save(os.path.join(out_dir, stem + ".png"))
        logits = result.seg_logits.data.sort(0, descending=True).values
        counts[stem] = {"classes": np.bincount(labels.ravel(), minlength=CLASSES).tolist(),
                        "min_top2_margin": float((logits[0] - logits[1]).min()),
                        "pixels_within_1e-3_of_a_tie": int(((logits[0] - logits[1]) < 1e-3).sum())}
    return counts


def calibrate_classifier(model, spread=2.0):
    """Sets conv_seg so no class wins everywhere (a random head's features share one large common
    part): at the mean input feature over the square images ('whole' needs N x N) every class logit is 0, and the weights are
    scaled so the logits vary by `spread` (std) around it. Seeded and deterministic like the rest."""
    features = []
    hook = model.decode_head.conv_seg.register_forward_pre_hook(
        lambda m, args: features.append(args[0].detach().permute(0, 2, 3, 1).reshape(-1, args[0].shape[1])))
    for folder, stem, _, _ in [i for i in IMAGES if i[0] == "square"]:
        inference_model(model, os.path.join(DATA, folder, "images", stem + ".png"))
    hook.remove()
    f = torch.cat(features)
    mean = f.mean(0)
    conv = model.decode_head.conv_seg
    with torch.no_grad():
        w = conv.weight.view(conv.out_channels, -1)
        std = ((f - mean) @ w.T).std().item()
        conv.weight *= spread / std
        conv.bias.copy_(-(w @ mean) * spread / std)


def build(size, mode, state):
    model = init_model(config(size, mode), checkpoint=None, device="cpu")
    if state is not None:
        state = dict(state)
        if size != IMG_SIZE:
            # The tables are all zero here (identity extras only), so mmseg's resize_rel_pos_embed would
            # give the new model's zero tables; its index buffers are its own.
            assert all(not v.any() for k, v in state.items() if k.endswith("relative_position_bias_table"))
            state = {k: v for k, v in state.items() if "relative_position" not in k}
            assert all(not v.any() for k, v in model.state_dict().items() if k.endswith("relative_position_bias_table"))
        state["backbone.pos_embed"] = model.backbone.resize_abs_pos_embed(
            {"pos_embed": state["backbone.pos_embed"]})["pos_embed"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all("relative_position" in k for k in missing), (missing, unexpected)
    model.eval()
    return model


def main():
    register_all_modules()
    make_images(np.random.default_rng(SEED))
    summary = {}
    for variant, extras in [("mmseg_upernet_tiny", False), ("mmseg_upernet_tiny_extras", True)]:
        torch.manual_seed(SEED)
        model = build(IMG_SIZE, "whole", None)
        randomise(model, torch.Generator().manual_seed(SEED), extras)
        calibrate_classifier(model)
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(OUT, variant + ".safetensors"))
        if not extras:
            meta = {"mmseg_version": mmseg.__version__, "mmengine_version": mmengine.__version__,
                    "mmcv_version": mmcv.__version__, "seed": SEED, "epoch": 0, "iter": 160000,
                    "experiment_name": "mae-eval tiny MAE UperNet reference",
                    "dataset_meta": {"classes": ("a", "b", "c", "d"),
                                     "palette": [[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50]]}}
            # No message_hub: a training checkpoint's pickles getattr(HistoryBuffer, "min") etc., which
            # mae-eval's restricted unpickler refuses as hostile; released models carry meta + state_dict.
            save_checkpoint({"meta": meta, "state_dict": state},
                            os.path.join(OUT, variant + ".pth"))
        runs = {"whole32": (IMG_SIZE, "whole", ["square"]), "slide32": (IMG_SIZE, "slide", ["square", "wide"])}
        if not extras:
            runs["whole48"] = (48, "whole", ["square"])
        for run, (size, mode, folders) in runs.items():
            reference = model if (size, mode) == (IMG_SIZE, "whole") else build(size, mode, state)
            for folder in folders:
                out_dir = os.path.join(OUT, "mmseg_pred", variant, run, folder)
                summary[f"{variant}/{run}/{folder}"] = predict(reference, folder, out_dir)
    for key, value in summary.items():
        print(key, value)
    with open(os.path.join(OUT, "mmseg_config.json"), "w") as f:
        json.dump({
            "reference": "mmsegmentation EncoderDecoder (MAE, Feature2Pyramid, UPerHead, FCNHead) via mmseg.apis",
            "mmseg": mmseg.__version__, "mmengine": mmengine.__version__, "mmcv_lite": mmcv.__version__,
            "torch": torch.__version__, "img_size": IMG_SIZE, "patch_size": PATCH, "embed_dims": WIDTH,
            "num_layers": DEPTH, "num_heads": HEADS, "mlp_ratio": 4, "out_indices": OUT_INDICES,
            "qkv_bias": True, "init_values": 1.0, "final_norm": False, "neck_rescales": [4, 2, 1, 0.5],
            "pool_scales": [1, 2, 3, 6], "decode_channels": 16, "aux_channels": 8, "aux_in_index": 2,
            "num_classes": CLASSES, "align_corners": False, "mean": MEAN, "std": STD, "bgr_to_rgb": True,
            "test_resize": "Resize(scale=(4N, N), keep_ratio=True), cv2 bilinear",
            "slide": "crop N, stride N*2//3", "runs": {"whole32": "N=32 whole, square/", "slide32": "N=32 slide, square/ and wide/",
                                                        "whole48": "N=48 whole (pos_embed resized at load), square/, mmseg_upernet_tiny only"},
            "predictions": summary}, f, indent=1)


if __name__ == "__main__":
    main()
