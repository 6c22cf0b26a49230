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


def main():
    os.makedirs(OUT, exist_ok=True)
    dtypes()


if __name__ == "__main__":
    main()
