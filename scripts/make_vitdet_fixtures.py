"""Writes PyTorch reference values for ViTDet's backbone and simple feature pyramid
(Sources/MAEModels/TransformerStack.swift window/rel-pos blocks, Sources/MAEDense/Backbone).

Usage: /work/venv/bin/python scripts/make_vitdet_fixtures.py
Output: Tests/DenseTests/Fixtures/vitdet.safetensors

detectron2's modeling/backbone/vit.py (ViT, Block, Attention, SimpleFeaturePyramid) and utils.py
(window_partition / window_unpartition, get_rel_pos, add_decomposed_rel_pos, get_abs_pos) and
fpn.py LastLevelMaxPool are restated here in plain torch, not imported or copied. A tiny model:
patch 4, width 16, 2 heads, depth 3 (blocks 0, 1 in 4 x 4 windows, block 2 global), pretraining
grid 4 x 4 (pos_embed with its cls row, 1 + 16 rows), dense input 24 x 28 px (a 6 x 7 grid, so the
windows pad to 8 x 8 and pos_embed is resized bicubically), rel-pos tables random (not zero) with the
global block's sized for a 28 px input (13 rows: the 6-row axis resizes them linearly to 11).
Pyramid: scale factors 4, 2, 1, 0.5 of the stride-4 map (strides 1, 2, 4, 8: simfp_0 .. simfp_3),
8 output channels, channel LN; p4 = max_pool2d(k 1, s 2) of the last.

Tensors: parameters under detectron2's names ("backbone.net.*", "backbone.simfp_*"), "images" (2, 3,
24, 28), "last_feat" (the ViT's output, B C H W), outputs "p0" .. "p4", their upstream gradients
"grad_p0" .. "grad_p4", and the gradients of sum_l sum(p_l * grad_p_l): "d_images", "d_<param>".
"""
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "DenseTests", "Fixtures", "vitdet.safetensors")
torch.manual_seed(0)
torch.set_num_threads(1)

PATCH, DIM, HEADS, DEPTH, WINDOW, GLOBAL, PRETRAIN_GRID, INPUT = 4, 16, 2, 3, 4, [2], 4, 28
OUT_CHANNELS, SCALES = 8, (4.0, 2.0, 1.0, 0.5)


def window_partition(x, w):
    b, h, wd, c = x.shape
    ph, pw = (w - h % w) % w, (w - wd % w) % w
    x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, wd + pw
    x = x.view(b, hp // w, w, wp // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w, w, c)
    return x, (hp, wp)


def window_unpartition(windows, w, pad_hw, hw):
    hp, wp = pad_hw
    h, wd = hw
    b = windows.shape[0] // (hp * wp // w // w)
    x = windows.view(b, hp // w, wp // w, w, w, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :wd, :]


def get_rel_pos(q_size, k_size, rel_pos):
    max_rel = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel:
        resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel, mode="linear")
        resized = resized.reshape(-1, max_rel).permute(1, 0)
    else:
        resized = rel_pos
    q = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    rel = (q - k) + (k_size - 1) * max(q_size / k_size, 1.0)
    return resized[rel.long()]


def add_decomposed_rel_pos(attn, q, rel_h_table, rel_w_table, q_size, k_size):
    qh, qw = q_size
    kh, kw = k_size
    rh = get_rel_pos(qh, kh, rel_h_table)
    rw = get_rel_pos(qw, kw, rel_w_table)
    b, _, dim = q.shape
    r_q = q.reshape(b, qh, qw, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    attn = attn.view(b, qh, qw, kh, kw) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return attn.view(b, qh * qw, kh * kw)


class Attention(nn.Module):
    def __init__(self, dim, heads, input_size):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.randn(2 * input_size[0] - 1, dim // heads) * 0.5)
        self.rel_pos_w = nn.Parameter(torch.randn(2 * input_size[1] - 1, dim // heads) * 0.5)

    def forward(self, x):
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.heads, h * w, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = add_decomposed_rel_pos(attn, q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        attn = attn.softmax(dim=-1)
        x = (attn @ v).view(b, self.heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, window, input_size):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, input_size if window == 0 else (window, window))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.window = window

    def forward(self, x):
        shortcut = x
        x = self.norm1(x)
        if self.window > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window)
        x = self.attn(x)
        if self.window > 0:
            x = window_unpartition(x, self.window, pad_hw, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, DIM, PATCH, PATCH)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)


class ViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = PatchEmbed()
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + PRETRAIN_GRID ** 2, DIM) * 0.5)
        grid = INPUT // PATCH
        self.blocks = nn.ModuleList(
            [Block(DIM, HEADS, 0 if i in GLOBAL else WINDOW, (grid, grid)) for i in range(DEPTH)])

    def forward(self, x):
        x = self.patch_embed(x)
        h, w = x.shape[1], x.shape[2]
        pos = self.pos_embed[:, 1:]
        size = int(math.sqrt(pos.shape[1]))
        pos = F.interpolate(pos.reshape(1, size, size, -1).permute(0, 3, 1, 2), size=(h, w), mode="bicubic",
                            align_corners=False).permute(0, 2, 3, 1)
        x = x + pos
        for blk in self.blocks:
            x = blk(x)
        return x.permute(0, 3, 1, 2)


class ChannelLN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c) + 0.3 * torch.randn(c))
        self.bias = nn.Parameter(0.3 * torch.randn(c))

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, 1e-6).permute(0, 3, 1, 2)


class ConvLN(nn.Module):
    """detectron2 Conv2d(bias=False, norm=LN): conv weight at .weight, the norm at .norm."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) / math.sqrt(cin * k * k))
        self.norm = ChannelLN(cout)
        self.pad = k // 2

    def forward(self, x):
        return self.norm(F.conv2d(x, self.weight, padding=self.pad))


class Pyramid(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.names = []
        for scale in SCALES:
            out_dim = DIM
            if scale == 4.0:
                layers = [nn.ConvTranspose2d(DIM, DIM // 2, 2, 2), ChannelLN(DIM // 2), nn.GELU(),
                          nn.ConvTranspose2d(DIM // 2, DIM // 4, 2, 2)]
                out_dim = DIM // 4
            elif scale == 2.0:
                layers = [nn.ConvTranspose2d(DIM, DIM // 2, 2, 2)]
                out_dim = DIM // 2
            elif scale == 1.0:
                layers = []
            else:
                layers = [nn.MaxPool2d(2, 2)]
            layers += [ConvLN(out_dim, OUT_CHANNELS, 1), ConvLN(OUT_CHANNELS, OUT_CHANNELS, 3)]
            stage = int(math.log2(int(PATCH / scale)))
            self.add_module(f"simfp_{stage}", nn.Sequential(*layers))
            self.names.append(f"simfp_{stage}")

    def forward(self, x):
        feat = self.net(x)
        outs = [getattr(self, n)(feat) for n in self.names]
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2, padding=0))
        return feat, outs


model = Pyramid(ViT())
images = torch.randn(2, 3, 24, 28, requires_grad=True)
feat, outs = model(images)
tensors = {}
total = 0
for i, o in enumerate(outs):
    g = torch.randn_like(o)
    tensors[f"p{i}"] = o.detach().clone()
    tensors[f"grad_p{i}"] = g
    total = total + (o * g).sum()
total.backward()
tensors["images"] = images.detach().clone()
tensors["d_images"] = images.grad.clone()
tensors["last_feat"] = feat.detach().clone()
for name, p in model.named_parameters():
    key = "backbone." + name
    tensors[key] = p.detach().clone()
    tensors["d_" + key] = p.grad.clone()
save_file({k: v.contiguous() for k, v in tensors.items()}, OUT)
os.chmod(OUT, 0o644)
print(f"wrote {len(tensors)} tensors to {OUT}")
