"""Writes PyTorch reference values for the dense layers (Sources/MAEDense/Layers).

Usage: /work/venv/bin/python scripts/make_dense_layer_fixtures.py
Output: Tests/DenseTests/Fixtures/dense_layers.safetensors

Each case is a group of tensors named "<case>/<tensor>": the input "x", the parameters under their
torch names ("weight", "bias", BatchNorm's buffers "running_mean", "running_var",
"num_batches_tracked" as float), a random upstream gradient "grad_out", the output "out", and the
gradients autograd gives for sum(out * grad_out): "d_x", "d_weight", "d_bias". BatchNorm's training
case also stores the buffers after the step ("after/running_mean", ...). CPU, float32, seeded.

detectron2's "LN" (detectron2/layers/batch_norm.py LayerNorm) is restated as F.layer_norm over the
channels of the NHWC permutation, eps 1e-6; everything else is the torch module itself.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "DenseTests", "Fixtures", "dense_layers.safetensors")
torch.manual_seed(0)
torch.set_num_threads(1)
tensors = {}


def put(case, name, t):
    tensors[f"{case}/{name}"] = t.detach().float().contiguous().clone()


def run_module(case, module, x, training=False):
    """Stores the module's state, x, out, grad_out and the gradients of sum(out * grad_out)."""
    module.train(training)
    for name, t in module.state_dict().items():
        put(case, name, t)
    x = x.clone().requires_grad_(True)
    out = module(x)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    put(case, "x", x)
    put(case, "out", out)
    put(case, "grad_out", g)
    put(case, "d_x", x.grad)
    for name, p in module.named_parameters():
        put(case, "d_" + name, p.grad)
    if training:
        for name, t in module.state_dict().items():
            if "running" in name or "tracked" in name:
                put(case, "after/" + name, t)


class ChannelLN(nn.Module):
    """detectron2 LayerNorm: normalise over C at each pixel, biased variance."""

    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


conv = nn.Conv2d(3, 4, 3, stride=1, padding=1, bias=True)
run_module("conv3x3_s1", conv, torch.randn(2, 3, 7, 6))
conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False)
run_module("conv3x3_s2", conv, torch.randn(2, 3, 9, 7))
convt = nn.ConvTranspose2d(4, 3, 2, stride=2, bias=True)
run_module("convT_k2s2", convt, torch.randn(2, 4, 3, 5))

ln = ChannelLN(5)
with torch.no_grad():
    ln.weight.copy_(torch.randn(5))
    ln.bias.copy_(torch.randn(5))
run_module("channel_ln", ln, torch.randn(2, 5, 3, 4) * 2 + 0.5)


def batch_norm(seed):
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(4))
        bn.bias.copy_(torch.randn(4))
        bn.running_mean.copy_(torch.randn(4))
        bn.running_var.copy_(torch.rand(4) + 0.5)
        bn.num_batches_tracked.fill_(3)
    return bn


x = torch.randn(3, 4, 5, 6) * 1.5 + torch.tensor([0.5, -1.0, 2.0, 0.0]).view(1, 4, 1, 1)
run_module("bn_train", batch_norm(1), x, training=True)
run_module("bn_eval", batch_norm(1), x, training=False)

run_module("maxpool_2", nn.MaxPool2d(2, 2), torch.randn(2, 3, 7, 6))
run_module("linear", nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), torch.randn(4, 3, 2, 2))

save_file(tensors, OUT)
print(f"wrote {len(tensors)} tensors to {OUT}")
