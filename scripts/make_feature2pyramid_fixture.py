"""Fixture for mmseg's second Feature2Pyramid, rescales (2, 1, 0.5, 0.25): x2 ConvT, x1, x0.5 MaxPool 2,
x0.25 MaxPool 4 (mmseg 1.2.2, mmseg/models/necks/featurepyramid.py, the module itself). Four random
(2, 6, 8, 8) maps, the levels, and the gradients of sum_k <level_k, w_k> for random w_k.

Usage: python scripts/make_feature2pyramid_fixture.py Tests/DenseTests/Fixtures/feature2pyramid_quarter.safetensors
"""
import importlib.util
import os
import sys

import mmseg
import torch
from safetensors.torch import save_file

# The module file itself: importing mmseg.models needs mmcv's compiled ops, which mmcv-lite lacks.
path = os.path.join(os.path.dirname(mmseg.__file__), "models/necks/featurepyramid.py")
spec = importlib.util.spec_from_file_location("featurepyramid", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
Feature2Pyramid = module.Feature2Pyramid

torch.manual_seed(0)
neck = Feature2Pyramid(embed_dim=6, rescales=[2, 1, 0.5, 0.25], norm_cfg=dict(type='BN', requires_grad=True)).double()
xs = [torch.randn(2, 6, 8, 8, dtype=torch.float64, requires_grad=True) for _ in range(4)]
levels = neck(xs)
ws = [torch.randn(l.shape, dtype=torch.float64) for l in levels]
sum((l * w).sum() for l, w in zip(levels, ws)).backward()
out = {f"neck.{k}": v.detach().float().contiguous() for k, v in neck.state_dict().items()}
for i in range(4):
    out[f"x{i}"] = xs[i].detach().float()
    out[f"level{i}"] = levels[i].detach().float().contiguous()
    out[f"w{i}"] = ws[i].float()
    out[f"grad/x{i}"] = xs[i].grad.float()
for k, p in neck.named_parameters():
    out[f"grad/neck.{k}"] = p.grad.float().contiguous()
save_file(out, sys.argv[1])
print(sys.argv[1], sorted(out))
