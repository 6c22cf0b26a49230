"""Writes PyTorch reference values for the image-op kernels (conv, transposed conv, pooling, resize).

Usage: /work/venv/bin/python scripts/make_kernel_fixtures.py
Output: Tests/KernelTests/Fixtures/image_ops.json (index) and image_ops.bin (little-endian float32).

Every case holds its op, its configuration (integer lists, flags as 0/1), and named tensors: the
inputs, a random upstream gradient `grad_out`, the forward output `out`, and the gradients torch's
autograd gives for sum(out * grad_out). CPU, float32, seeded, so the file is reproducible.
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT_DIR = os.path.join(os.path.dirname(__file__), "..", "Tests", "KernelTests", "Fixtures")
torch.manual_seed(0)
torch.set_num_threads(1)

cases = []
chunks = []
offset = 0


def add_tensor(tensors, name, t):
    global offset
    a = t.detach().to(torch.float32).contiguous().numpy().astype("<f4")
    tensors[name] = {"offset": offset, "shape": list(a.shape)}
    chunks.append(a.tobytes())
    offset += a.size


def record(op, name, config, inputs, fn):
    """Runs fn(**inputs) forward and backward; stores inputs, grad_out, out and every input grad."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    out = fn(**leaves)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    tensors = {}
    for k, v in inputs.items():
        add_tensor(tensors, k, v)
    add_tensor(tensors, "grad_out", grad_out)
    add_tensor(tensors, "out", out)
    for k, v in leaves.items():
        add_tensor(tensors, "d_" + k, v.grad)
    cases.append({"op": op, "name": name, "config": config, "tensors": tensors})


def conv(name, b, c, h, w, oc, k, s=(1, 1), p=(0, 0), d=(1, 1), bias=True):
    inputs = {"input": torch.randn(b, c, h, w), "weight": torch.randn(oc, c, *k) * 0.3}
    if bias:
        inputs["bias"] = torch.randn(oc)
    config = {"shape": [b, c, h, w, oc], "kernel": list(k), "stride": list(s), "padding": list(p),
              "dilation": list(d), "bias": [int(bias)]}
    record("conv2d", name, config, inputs,
           lambda input, weight, bias=None: F.conv2d(input, weight, bias, s, p, d))


def conv_t(name, b, c, h, w, oc, k, s=(1, 1), p=(0, 0), op=(0, 0), d=(1, 1), bias=True):
    inputs = {"input": torch.randn(b, c, h, w), "weight": torch.randn(c, oc, *k) * 0.3}
    if bias:
        inputs["bias"] = torch.randn(oc)
    config = {"shape": [b, c, h, w, oc], "kernel": list(k), "stride": list(s), "padding": list(p),
              "output_padding": list(op), "dilation": list(d), "bias": [int(bias)]}
    record("conv_transpose2d", name, config, inputs,
           lambda input, weight, bias=None: F.conv_transpose2d(input, weight, bias, s, p, op, 1, d))


def max_pool(name, b, c, h, w, k, s, p):
    x = torch.randn(b, c, h, w)
    config = {"shape": [b, c, h, w], "kernel": list(k), "stride": list(s), "padding": list(p)}
    _, idx = F.max_pool2d(x, k, s, p, return_indices=True)
    record("max_pool2d", name, config, {"input": x}, lambda input: F.max_pool2d(input, k, s, p))
    add_tensor(cases[-1]["tensors"], "indices", idx.to(torch.float32))


def avg_pool(name, b, c, h, w, k, s, p, include_pad=True):
    config = {"shape": [b, c, h, w], "kernel": list(k), "stride": list(s), "padding": list(p),
              "count_include_pad": [int(include_pad)]}
    record("avg_pool2d", name, config, {"input": torch.randn(b, c, h, w)},
           lambda input: F.avg_pool2d(input, k, s, p, count_include_pad=include_pad))


def adaptive(name, b, c, h, w, oh, ow):
    config = {"shape": [b, c, h, w], "out_size": [oh, ow]}
    record("adaptive_avg_pool2d", name, config, {"input": torch.randn(b, c, h, w)},
           lambda input: F.adaptive_avg_pool2d(input, (oh, ow)))


def resize(mode, name, b, c, h, w, oh, ow):
    x = torch.randn(b, c, h, w)
    for align in (False, True):
        config = {"shape": [b, c, h, w], "out_size": [oh, ow], "align_corners": [int(align)]}
        record(mode, f"{name}_align{int(align)}", config, {"input": x},
               lambda input: F.interpolate(input, size=(oh, ow), mode=mode, align_corners=align))


conv("k3s1p1", 2, 3, 7, 9, 4, (3, 3), p=(1, 1))
conv("k3s2p1", 2, 3, 9, 8, 5, (3, 3), s=(2, 2), p=(1, 1))
conv("k3x2_s2x1_p1x0", 1, 2, 8, 7, 3, (3, 2), s=(2, 1), p=(1, 0))
conv("k3d2p2_nobias", 2, 3, 9, 9, 4, (3, 3), p=(2, 2), d=(2, 2), bias=False)
conv("pointwise", 2, 6, 5, 7, 4, (1, 1))
conv("patch4", 1, 3, 8, 12, 5, (4, 4), s=(4, 4))
conv("k5s3p2_big_pad", 1, 2, 6, 7, 3, (5, 5), s=(3, 3), p=(2, 3))

conv_t("k2s2", 2, 4, 3, 5, 3, (2, 2), s=(2, 2))
conv_t("k3s2p1op1", 2, 3, 4, 5, 2, (3, 3), s=(2, 2), p=(1, 1), op=(1, 1))
conv_t("k4s2p1_nobias", 1, 3, 3, 4, 2, (4, 4), s=(2, 2), p=(1, 1), bias=False)
conv_t("k3d2p1", 1, 2, 5, 4, 3, (3, 3), p=(1, 2), d=(2, 2))
conv_t("k3x4_s2x3_op1x2", 1, 2, 3, 4, 2, (3, 4), s=(2, 3), p=(1, 0), op=(1, 2))

max_pool("k3s2p1", 2, 3, 9, 8, (3, 3), (2, 2), (1, 1))
max_pool("k2s2_floor", 1, 2, 7, 9, (2, 2), (2, 2), (0, 0))
max_pool("k3s1p1", 1, 2, 5, 6, (3, 3), (1, 1), (1, 1))
max_pool("k1s2", 1, 2, 7, 8, (1, 1), (2, 2), (0, 0))
max_pool("k3x2_s1x2_p1x1", 1, 2, 6, 7, (3, 2), (1, 2), (1, 1))

avg_pool("k3s2p1", 2, 3, 9, 8, (3, 3), (2, 2), (1, 1))
avg_pool("k3s2p1_exclude_pad", 2, 3, 9, 8, (3, 3), (2, 2), (1, 1), include_pad=False)
avg_pool("k2s2_floor", 1, 2, 7, 9, (2, 2), (2, 2), (0, 0))
avg_pool("k3x2_s2x1_p1x1", 1, 2, 6, 7, (3, 2), (2, 1), (1, 1))

adaptive("7x9_to_3x4", 2, 2, 7, 9, 3, 4)
adaptive("5x5_to_7x3", 1, 2, 5, 5, 7, 3)
adaptive("8x6_to_1x1", 1, 3, 8, 6, 1, 1)
adaptive("14x14_to_6x6", 1, 2, 14, 14, 6, 6)

for mode in ("bilinear", "bicubic"):
    resize(mode, "5x7_to_9x13", 2, 2, 5, 7, 9, 13)
    resize(mode, "9x13_to_4x5", 1, 2, 9, 13, 4, 5)
    resize(mode, "6x6_to_6x12", 1, 2, 6, 6, 6, 12)
    resize(mode, "5x4_to_1x3", 1, 2, 5, 4, 1, 3)
    resize(mode, "3x3_to_8x8", 1, 2, 3, 3, 8, 8)
    resize(mode, "14x14_to_16x16", 1, 3, 14, 14, 16, 16)

os.makedirs(OUT_DIR, exist_ok=True)
with open(os.path.join(OUT_DIR, "image_ops.bin"), "wb") as f:
    for c in chunks:
        f.write(c)
with open(os.path.join(OUT_DIR, "image_ops.json"), "w") as f:
    json.dump({"generator": "scripts/make_kernel_fixtures.py", "torch": torch.__version__,
               "dtype": "float32 little-endian", "cases": cases}, f, indent=1)
print(f"{len(cases)} cases, {offset} floats ({4 * offset} bytes)")
