"""Generates the small fixtures under Tests/FormatTests/Fixtures (run with /work/venv/bin/python).

Every file is built with the real tools (torch.save, safetensors.torch.save_file) so the Swift readers
are tested against what users' checkpoints actually contain. Expected values are stored beside them as
float32/int64 safetensors, converted by torch itself.
"""
import argparse
import collections
import os
import pickle
import sys

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "FormatTests", "Fixtures")
torch.manual_seed(0)


def dtypes():
    """One vector in every safetensors dtype, plus torch's own float32/int64 conversions of each."""
    base = torch.tensor([0.0, -0.0, 1.0, -2.5, 3.14159, 65504.0, 1e-7, -1e-5, 100.75, -7.0,
                         float("inf"), float("-inf"), 6.1e-5, 2.0 ** -24, 1234.5678, -0.333])
    tensors, expect = {}, {}
    for name, dt in [("f64", torch.float64), ("f32", torch.float32), ("f16", torch.float16),
                     ("bf16", torch.bfloat16)]:
        t = base.to(dt)
        tensors[name] = t
        expect[name] = t.float()
    ints = torch.tensor([0, 1, -1, 127, -128, 300, -70000, 2 ** 40, 5, 6, 7, 8, 9, 10, 11, 12])
    for name, dt in [("i64", torch.int64), ("i32", torch.int32), ("i16", torch.int16), ("i8", torch.int8),
                     ("u8", torch.uint8)]:
        t = ints.to(dt)  # wraps like a C cast: the expected values record what torch stored
        tensors[name] = t
        expect[name] = t.float()
        expect[name + "_as_i64"] = t.long()
    tensors["bool"] = ints % 2 == 1
    expect["bool"] = tensors["bool"].float()
    tensors["matrix"] = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 3)
    save_file(tensors, os.path.join(OUT, "dtypes.safetensors"), metadata={"note": "all dtypes", "quote": 'a "b"\n'})
    save_file({k: v.contiguous() for k, v in expect.items()}, os.path.join(OUT, "dtypes_expect.safetensors"))


def tiny_mae_state_dict(dim=32, depth=1, ddim=16, ddepth=1, patch=8, grid=2, chans=3, decoder=True):
    """Random weights under MAE's official key names (models_mae.MaskedAutoencoderViT), tiny sizes."""
    sd = collections.OrderedDict()
    L = grid * grid
    torch.manual_seed(dim * 1000 + depth)

    def block(prefix, d):
        sd[prefix + "norm1.weight"] = 1 + 0.1 * torch.randn(d)
        sd[prefix + "norm1.bias"] = 0.1 * torch.randn(d)
        sd[prefix + "attn.qkv.weight"] = torch.randn(3 * d, d) * 0.1
        sd[prefix + "attn.qkv.bias"] = torch.randn(3 * d) * 0.1
        sd[prefix + "attn.proj.weight"] = torch.randn(d, d) * 0.1
        sd[prefix + "attn.proj.bias"] = torch.randn(d) * 0.1
        sd[prefix + "norm2.weight"] = 1 + 0.1 * torch.randn(d)
        sd[prefix + "norm2.bias"] = 0.1 * torch.randn(d)
        sd[prefix + "mlp.fc1.weight"] = torch.randn(4 * d, d) * 0.1
        sd[prefix + "mlp.fc1.bias"] = torch.randn(4 * d) * 0.1
        sd[prefix + "mlp.fc2.weight"] = torch.randn(d, 4 * d) * 0.1
        sd[prefix + "mlp.fc2.bias"] = torch.randn(d) * 0.1

    sd["cls_token"] = torch.randn(1, 1, dim) * 0.02
    sd["pos_embed"] = torch.randn(1, 1 + L, dim) * 0.02
    sd["patch_embed.proj.weight"] = torch.randn(dim, chans, patch, patch) * 0.05
    sd["patch_embed.proj.bias"] = torch.randn(dim) * 0.05
    for i in range(depth):
        block(f"blocks.{i}.", dim)
    sd["norm.weight"] = 1 + 0.1 * torch.randn(dim)
    sd["norm.bias"] = 0.1 * torch.randn(dim)
    if decoder:
        sd["mask_token"] = torch.randn(1, 1, ddim) * 0.02
        sd["decoder_pos_embed"] = torch.randn(1, 1 + L, ddim) * 0.02
        sd["decoder_embed.weight"] = torch.randn(ddim, dim) * 0.1
        sd["decoder_embed.bias"] = torch.randn(ddim) * 0.1
        for j in range(ddepth):
            block(f"decoder_blocks.{j}.", ddim)
        sd["decoder_norm.weight"] = 1 + 0.1 * torch.randn(ddim)
        sd["decoder_norm.bias"] = 0.1 * torch.randn(ddim)
        sd["decoder_pred.weight"] = torch.randn(patch * patch * chans, ddim) * 0.1
        sd["decoder_pred.bias"] = torch.randn(patch * patch * chans) * 0.1
    return sd


def expect(name, tensors):
    """The tensors as torch sees them (float32 / int64 / contiguous), for element-wise comparison."""
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, os.path.join(OUT, name))


class Shell:
    """Pickles as a call of `function(argument)`: what a malicious checkpoint does."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return (self.function, (self.argument,))


def torch_checkpoints():
    path = lambda name: os.path.join(OUT, name)

    # A training checkpoint as MAE's main_pretrain.py saves it (misc.save_model).
    sd = tiny_mae_state_dict()
    params = [torch.nn.Parameter(v.clone()) for v in sd.values()]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    sum((p ** 2).sum() for p in params).backward()
    opt.step()
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 7}
    args = argparse.Namespace(batch_size=64, epochs=400, model="mae_vit_tiny_patch8", input_size=16,
                              mask_ratio=0.75, norm_pix_loss=True, weight_decay=0.05, blr=1.5e-4,
                              data_path="/datasets/imagenet", output_dir="./output_dir", device="cuda",
                              seed=0, pin_mem=True, world_size=1, dist_url="env://")
    torch.save({"model": sd, "optimizer": opt.state_dict(), "epoch": 3, "scaler": scaler, "args": args},
               path("train_ckpt.pth"))
    expect("train_ckpt_expect.safetensors", sd)

    # MAE's released encoder-only file: {'model': state_dict} without the decoder.
    enc = tiny_mae_state_dict(decoder=False)
    torch.save({"model": enc}, path("mae_encoder.pth"))
    expect("mae_encoder_expect.safetensors", enc)

    # A timm model's bare state_dict (global_pool='avg' gives fc_norm + head, as MAE fine-tuning does).
    import timm
    vit = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1,
                                                           num_heads=2, num_classes=5, global_pool="avg",
                                                           fc_norm=True)
    bare = vit.state_dict()
    torch.save(bare, path("timm_bare.pth"))
    expect("timm_bare_expect.safetensors", bare)

    # DataParallel / DDP style: 'module.' prefix under 'state_dict'.
    torch.save({"state_dict": collections.OrderedDict(("module." + k, v) for k, v in bare.items()),
                "epoch": 9}, path("module_prefixed.pth"))

    # Half-precision weights.
    half = collections.OrderedDict((k, v.half()) for k, v in enc.items())
    torch.save({"model": half}, path("fp16.pth"))
    expect("fp16_expect.safetensors", {k: v.float() for k, v in half.items()})

    # Views: transposed, strided slices, storage offsets, shared storage, other dtypes, parameters.
    base = torch.arange(60, dtype=torch.float32).reshape(5, 12) / 7
    views = collections.OrderedDict()
    views["transposed"] = base.t()
    views["slice"] = base[1:4, 2:11:3]
    views["offset_row"] = base[3]
    views["whole"] = base
    views["permuted"] = torch.arange(24.0).reshape(2, 3, 4).permute(2, 0, 1)
    views["scalar"] = torch.tensor(3.5)
    views["empty"] = torch.zeros(0, 4)
    views["double"] = torch.linspace(-1, 1, 7, dtype=torch.float64)
    views["bf16"] = torch.linspace(-3, 3, 9).bfloat16()
    views["long"] = torch.tensor([1, -2, 2 ** 40])
    views["int"] = torch.tensor([7, -9], dtype=torch.int32)
    views["bool"] = torch.tensor([True, False, True])
    views["uint8"] = torch.tensor([0, 255, 3], dtype=torch.uint8)
    views["parameter"] = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    torch.save(views, path("views.pth"))
    expect("views_expect.safetensors", {k: (v.float() if v.dtype in (torch.float64, torch.bfloat16) else v)
                                        for k, v in views.items()})

    # Hostile files. The evil ones would create a marker file if anything ran them.
    marker = "/tmp/mae_eval_formats_pwned"
    data = open(path("views.pth"), "rb").read()
    open(path("truncated.pth"), "wb").write(data[: len(data) // 2])
    open(path("empty.pth"), "wb").write(b"")
    open(path("random.pth"), "wb").write(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                                        dtype=torch.uint8).numpy().tobytes())
    torch.save({"model": enc, "payload": Shell(os.system, "touch " + marker)}, path("evil_system.pth"))
    torch.save({"model": enc, "payload": Shell(eval, "open('%s', 'w')" % marker)}, path("evil_eval.pth"))
    torch.save({"model": enc}, path("legacy.pth"), _use_new_zipfile_serialization=False)

    # The same archive recompressed with deflate (some tools do this): refused with a clear message.
    import zipfile
    with zipfile.ZipFile(path("timm_bare.pth")) as src, \
            zipfile.ZipFile(path("compressed.pth"), "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))


def layouts():
    """Key names and shapes (no weights) of the checkpoints users bring, built on the meta device."""
    import json
    import timm
    from timm.models.vision_transformer import VisionTransformer

    def shapes(sd):
        return [[k, list(v.shape)] for k, v in sd.items()]

    out = {}
    with torch.device("meta"):
        for name in ["vit_base_patch16_224", "vit_base_patch16_224.mae", "vit_large_patch16_224.mae",
                     "vit_huge_patch14_224.mae", "deit_small_patch16_224", "deit_tiny_distilled_patch16_224",
                     "vit_tiny_patch16_224", "vit_base_patch16_clip_224"]:
            out["timm:" + name] = shapes(timm.create_model(name, pretrained=False).state_dict())
        # MAE's models_vit fine-tuning form: global_pool -> fc_norm, no final norm.
        ft = VisionTransformer(patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=1000,
                               global_pool="avg", fc_norm=True)
        out["mae:finetuned_vit_base"] = shapes(ft.state_dict())
        # MAE's main_linprobe: head = Sequential(BatchNorm1d(affine=False), Linear), saved under 'model'.
        lp = VisionTransformer(patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=1000)
        lp.head = torch.nn.Sequential(torch.nn.BatchNorm1d(768, affine=False, eps=1e-6), lp.head)
        out["mae:linprobe_vit_base"] = shapes(lp.state_dict())
        # MAE pretrain ViT-L with the decoder (mae_pretrain_vit_large_full.pth / mae_visualize_vit_large.pth).
        out["mae:pretrain_full_vit_large"] = shapes(tiny_mae_state_dict(dim=1024, depth=24, ddim=512, ddepth=8,
                                                                         patch=16, grid=14))
    with open(os.path.join(OUT, "layouts.json"), "w") as f:
        json.dump(out, f)


def main():
    os.makedirs(OUT, exist_ok=True)
    dtypes()
    torch_checkpoints()
    layouts()


if __name__ == "__main__":
    main()
