"""ViTDet-B's backbone + simple feature pyramid in plain torch, for `bench_pytorch.py --model vitdet_b`.

The ViT is detectron2's (modeling/backbone/vit.py) built from timm's `vision_transformer_sam.Block`,
which is the same block (window partition with zero padding, decomposed rel-pos added to the scores)
running `F.scaled_dot_product_attention` with the rel-pos bias as its mask. Patch 16, width 768,
depth 12, 12 heads, window 14, global blocks 2, 5, 8, 11; pos_embed pretrained at 224 px (1 + 196 rows)
resized bicubically to the grid in every forward (detectron2's get_abs_pos). The pyramid restates
detectron2's SimpleFeaturePyramid (scale factors 4, 2, 1, 0.5; 256 channels; channel LayerNorm) and
LastLevelMaxPool (p6).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer_sam import Block


class ChannelLN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, 1e-6).permute(0, 3, 1, 2)


def conv_ln(cin, cout, k):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), ChannelLN(cout))


class ViTDet(nn.Module):
    def __init__(self, img_size=1024, patch=16, dim=768, depth=12, heads=12, window=14, global_blocks=(2, 5, 8, 11),
                 out_channels=256, pretrain_grid=14):
        super().__init__()
        grid = img_size // patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + pretrain_grid ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[
            Block(dim, heads, use_rel_pos=True, window_size=0 if i in global_blocks else window, input_size=(grid, grid))
            for i in range(depth)])
        for blk in self.blocks:
            nn.init.normal_(blk.attn.rel_pos_h, std=0.02)
            nn.init.normal_(blk.attn.rel_pos_w, std=0.02)
        self.stages = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), ChannelLN(dim // 2), nn.GELU(),
                          nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2), conv_ln(dim // 4, out_channels, 1),
                          conv_ln(out_channels, out_channels, 3)),
            nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), conv_ln(dim // 2, out_channels, 1),
                          conv_ln(out_channels, out_channels, 3)),
            nn.Sequential(conv_ln(dim, out_channels, 1), conv_ln(out_channels, out_channels, 3)),
            nn.Sequential(nn.MaxPool2d(2, 2), conv_ln(dim, out_channels, 1), conv_ln(out_channels, out_channels, 3)),
        ])

    def forward(self, x):
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        h, w = x.shape[1], x.shape[2]
        pos = self.pos_embed[:, 1:]
        size = int(math.sqrt(pos.shape[1]))
        x = x + F.interpolate(pos.reshape(1, size, size, -1).permute(0, 3, 1, 2), size=(h, w), mode="bicubic",
                              align_corners=False).permute(0, 2, 3, 1)
        x = self.blocks(x).permute(0, 3, 1, 2)
        levels = [stage(x) for stage in self.stages]
        levels.append(F.max_pool2d(levels[-1], kernel_size=1, stride=2))
        return levels
