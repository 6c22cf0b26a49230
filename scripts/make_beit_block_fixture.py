"""Reference values of one BEiT transformer block with layer scale and relative position bias, computed
by mmsegmentation's own `BEiTTransformerEncoderLayer` (mmseg 1.2.2 backbones/beit.py, as mmseg's MAE
backbone builds it), for Tests/ModelTests/BEiTBlockTests.swift.

Run: /work/venv/bin/python scripts/make_beit_block_fixture.py
Output: Tests/ModelTests/Fixtures/beit_block.safetensors

Needs mmengine, mmsegmentation 1.2.2 and mmcv-lite in the venv (see scripts/make_mmseg_reference.py; the
same `mmcv.ops` shim stands in for compiled ops this block never calls). The block: width 16, 4 heads,
MLP 64, full qkv bias, LN eps 1e-6, a 3 x 3 window (so N = 1 + 9 tokens with the cls token, and a
(5 * 5 + 3, 4) table), init_values 1.0, no dropout or drop path; gammas 1 +- 0.3, the table std 0.5,
every other parameter random. Computed in float64, stored as float32.

Tensors: the block's parameters under mmseg's names ("ln1.weight", "attn.qkv.weight", "gamma_1",
"attn.relative_position_bias_table", ...), "relative_position_index" (10, 10) as float, "x" (2, 10,
16), "out", "grad_out", and the gradients of sum(out * grad_out): "d_x", "d_<param>".
"""
import os
import sys
import types

import torch
from safetensors.torch import save_file

ops = types.ModuleType("mmcv.ops")


def _not_built(*args, **kwargs):
    raise RuntimeError("mmcv.ops is not built in mmcv-lite; this block does not use it")


for _name in ["point_sample", "sigmoid_focal_loss", "CrissCrossAttention", "PSAMask", "DeformConv2d",
              "ModulatedDeformConv2d"]:
    setattr(ops, _name, _not_built)
sys.modules["mmcv.ops"] = ops

from mmseg.models.backbones.beit import BEiTTransformerEncoderLayer  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "ModelTests", "Fixtures", "beit_block.safetensors")
WIDTH, HEADS, HIDDEN, WINDOW, BATCH = 16, 4, 64, 3, 2


def main():
    g = torch.Generator().manual_seed(15)
    layer = BEiTTransformerEncoderLayer(embed_dims=WIDTH, num_heads=HEADS, feedforward_channels=HIDDEN, bias=True,
                                        norm_cfg=dict(type="LN", eps=1e-6), window_size=(WINDOW, WINDOW),
                                        init_values=1.0).double().eval()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("gamma_"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            elif name.endswith("relative_position_bias_table"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            elif name.startswith("ln"):
                p.copy_((1 if name.endswith("weight") else 0) + 0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    n = 1 + WINDOW * WINDOW
    x = torch.randn(BATCH, n, WIDTH, generator=g, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(BATCH, n, WIDTH, generator=g, dtype=torch.float64)
    out = layer(x)
    (out * grad_out).sum().backward()
    tensors = {"x": x.detach(), "out": out.detach(), "grad_out": grad_out, "d_x": x.grad,
               "relative_position_index": layer.attn.relative_position_index.double()}
    for name, p in layer.named_parameters():
        tensors[name] = p.detach()
        tensors["d_" + name] = p.grad
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, OUT)
    print(f"wrote {OUT}: {sorted(tensors)}")


if __name__ == "__main__":
    main()
