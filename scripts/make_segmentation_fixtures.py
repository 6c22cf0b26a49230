"""Writes PyTorch reference values for the segmentation heads (Sources/MAEDense/Segmentation).

Usage: /work/venv/bin/python scripts/make_segmentation_fixtures.py
Output: Tests/DenseTests/Fixtures/segmentation_heads.safetensors

mmsegmentation is not installed: its modules are restated here in plain torch with the same
attribute names, so the state_dict keys are mmseg's (neck.upsample_4x.1.running_mean,
decode_head.psp_modules.0.1.conv.weight, auxiliary_head.convs.0.bn.weight, ...):
  Feature2Pyramid (necks/featurepyramid.py): x4 ConvT-BN-GELU-ConvT, x2 ConvT, x1, x0.5 MaxPool 2.
  UPerHead (decode_heads/uper_head.py + psp_head.PPM): PPM (1, 2, 3, 6) on the last input, bottleneck
    3x3, lateral 1x1, top-down bilinear adds, fpn 3x3, concat, fpn_bottleneck 3x3, conv_seg 1x1;
    ConvModule = conv (no bias) + BN + ReLU; align_corners False; dropout set to 0 for parity.
  FCNHead (decode_heads/fcn_head.py), num_convs 1, concat_input False, on pyramid level 2.
  Loss: logits bilinearly resized to the label size, F.cross_entropy(ignore_index=255,
    reduction="none").mean() (mmseg's default, avg_non_ignore False), aux weight 0.4.
  DINOv2's BNHead: BatchNorm2d + conv_seg 1x1 on (already normalised) features.
Cases ("upernet/...", "linear/..."): the inputs "x0".."x3" (or "x"), labels as float, every
parameter and buffer under its mmseg name, eval-mode logits ("eval/decode", "eval/aux"), the
train-mode loss ("train/loss", BN on batch statistics) and its gradients ("grad/<name>",
"grad/x0".."grad/x3"). CPU, float32, seeded.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "DenseTests", "Fixtures", "segmentation_heads.safetensors")
torch.manual_seed(0)
torch.set_num_threads(1)


class ConvModule(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Feature2Pyramid(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.upsample_4x = nn.Sequential(nn.ConvTranspose2d(d, d, 2, 2), nn.BatchNorm2d(d), nn.GELU(),
                                         nn.ConvTranspose2d(d, d, 2, 2))
        self.upsample_2x = nn.Sequential(nn.ConvTranspose2d(d, d, 2, 2))
        self.downsample_2x = nn.MaxPool2d(2, 2)

    def forward(self, xs):
        return [self.upsample_4x(xs[0]), self.upsample_2x(xs[1]), xs[2], self.downsample_2x(xs[3])]


class UPerHead(nn.Module):
    def __init__(self, cin, ch, k, scales=(1, 2, 3, 6)):
        super().__init__()
        self.conv_seg = nn.Conv2d(ch, k, 1)
        self.psp_modules = nn.ModuleList([nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(cin, ch, 1)) for s in scales])
        self.bottleneck = ConvModule(cin + len(scales) * ch, ch, 3)
        self.lateral_convs = nn.ModuleList([ConvModule(cin, ch, 1) for _ in range(3)])
        self.fpn_convs = nn.ModuleList([ConvModule(ch, ch, 3) for _ in range(3)])
        self.fpn_bottleneck = ConvModule(4 * ch, ch, 3)

    def forward(self, xs):
        x = xs[-1]
        psp = [x] + [resize(m(x), x.shape[2:]) for m in self.psp_modules]
        laterals = [c(xs[i]) for i, c in enumerate(self.lateral_convs)]
        laterals.append(self.bottleneck(torch.cat(psp, 1)))
        for i in range(3, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [self.fpn_convs[i](laterals[i]) for i in range(3)] + [laterals[3]]
        outs = [outs[0]] + [resize(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.conv_seg(self.fpn_bottleneck(torch.cat(outs, 1)))


class FCNHead(nn.Module):
    def __init__(self, cin, ch, k):
        super().__init__()
        self.conv_seg = nn.Conv2d(ch, k, 1)
        self.convs = nn.Sequential(ConvModule(cin, ch, 3))

    def forward(self, x):
        return self.conv_seg(self.convs(x))


class UperNet(nn.Module):
    def __init__(self, d, ch, aux, k):
        super().__init__()
        self.neck = Feature2Pyramid(d)
        self.decode_head = UPerHead(d, ch, k)
        self.auxiliary_head = FCNHead(d, aux, k)

    def forward(self, xs):
        levels = self.neck(xs)
        return self.decode_head(levels), self.auxiliary_head(levels[2])


class BNHead(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv_seg = nn.Conv2d(c, k, 1)

    def forward(self, x):
        return self.conv_seg(self.bn(x))


class Linear(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.decode_head = BNHead(c, k)

    def forward(self, x):
        return self.decode_head(x)


def seg_loss(logits, labels, weight=1.0):
    up = resize(logits, labels.shape[1:])
    return F.cross_entropy(up, labels, ignore_index=255, reduction="none").mean() * weight


def randomise(model):
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)
            elif name.endswith("bn.weight") or name.endswith(".1.weight") and t.dim() == 1:
                t.copy_(torch.rand_like(t) + 0.5)
            else:
                t.copy_(torch.randn_like(t) * 0.3)


def labels_for(b, h, w, k):
    y = torch.randint(0, k, (b, h, w))
    y[torch.rand(b, h, w) < 0.15] = 255
    return y


tensors = {}


def put(name, t):
    tensors[name] = t.detach().float().contiguous().clone()


def case(prefix, model, inputs, labels, loss_fn):
    randomise(model)
    for name, t in model.state_dict().items():
        put(f"{prefix}/{name}", t)
    for i, x in enumerate(inputs):
        put(f"{prefix}/x{i}" if len(inputs) > 1 else f"{prefix}/x", x)
    put(f"{prefix}/labels", labels)
    model.eval()
    with torch.no_grad():
        out = model(inputs if len(inputs) > 1 else inputs[0])
    outs = out if isinstance(out, tuple) else (out,)
    for name, o in zip(["decode", "aux"], outs):
        put(f"{prefix}/eval/{name}", o)
    model.train()
    xs = [x.clone().requires_grad_(True) for x in inputs]
    out = model(xs if len(xs) > 1 else xs[0])
    loss = loss_fn(out, labels)
    loss.backward()
    put(f"{prefix}/train/loss", loss.reshape(1))
    for name, p in model.named_parameters():
        put(f"{prefix}/grad/{name}", p.grad)
    for i, x in enumerate(xs):
        put(f"{prefix}/grad/x{i}" if len(xs) > 1 else f"{prefix}/grad/x", x.grad)
    # BN running statistics after the one training forward (momentum 0.1, unbiased variance).
    for name, t in model.state_dict().items():
        if "running" in name:
            put(f"{prefix}/after/{name}", t)


d, ch, aux, k = 6, 5, 4, 3
upernet = UperNet(d, ch, aux, k)
maps = [torch.randn(2, d, 4, 4) for _ in range(4)]
case("upernet", upernet, maps, labels_for(2, 20, 20, k),
     lambda out, y: seg_loss(out[0], y) + seg_loss(out[1], y, 0.4))

linear = Linear(2 * d, k)
case("linear", linear, [torch.randn(2, 2 * d, 4, 4)], labels_for(2, 16, 16, k), lambda out, y: seg_loss(out, y))

os.makedirs(os.path.dirname(OUT), exist_ok=True)
save_file(tensors, OUT)
print(f"wrote {len(tensors)} tensors to {OUT}")
