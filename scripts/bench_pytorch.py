"""The reference for `mae-eval bench`: the same three modes in PyTorch on the same cores.

Usage: python scripts/bench_pytorch.py --model vit_base_patch16 --img-size 224 --batch-size 8 \
           --mode forward|train|pretrain [--mask-ratio 0.75] [--iters 5]
Prints one JSON line in the format `mae-eval bench` prints. Needs torch and timm (pip install torch timm).
`--model vitdet_b` (forward only): ViTDet-B's backbone + simple feature pyramid (scripts/vitdet_pytorch.py).
"""
import argparse, json, time

import torch
import torch.nn as nn
import timm
from timm.models.vision_transformer import Block

PRESETS = {  # name: (width, depth, heads, patch)
    "vit_tiny_patch16": (192, 12, 3, 16), "vit_small_patch16": (384, 12, 6, 16),
    "vit_base_patch16": (768, 12, 12, 16), "vit_large_patch16": (1024, 24, 16, 16),
    "vit_huge_patch14": (1280, 32, 16, 14), "vit_shapes_patch4": (128, 6, 4, 4),
}


class MAE(nn.Module):
    """models_mae.MaskedAutoencoderViT's compute, built from timm blocks (fixed pos embeds)."""

    def __init__(self, img, patch, dim, depth, heads, ddim, ddepth, dheads):
        super().__init__()
        self.patch, self.L = patch, (img // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.L + 1, dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, heads, 4.0, qkv_bias=True, norm_layer=lambda d, **kw: nn.LayerNorm(d, eps=1e-6, **kw)) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.L + 1, ddim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(ddim, dheads, 4.0, qkv_bias=True, norm_layer=lambda d, **kw: nn.LayerNorm(d, eps=1e-6, **kw)) for _ in range(ddepth)])
        self.decoder_norm = nn.LayerNorm(ddim, eps=1e-6)
        self.decoder_pred = nn.Linear(ddim, patch * patch * 3)

    def forward(self, imgs, mask_ratio):
        x = self.patch_embed(imgs).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        N, L, D = x.shape
        keep = int(L * (1 - mask_ratio))
        noise = torch.rand(N, L)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones(N, L); mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(N, -1, -1), x], 1)
        for b in self.blocks: x = b(x)
        x = self.decoder_embed(self.norm(x))
        m = self.mask_token.repeat(N, L + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:], m], 1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], 1) + self.decoder_pos_embed
        for b in self.decoder_blocks: x = b(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        p, h = self.patch, imgs.shape[2] // self.patch
        t = imgs.reshape(N, 3, h, p, h, p).permute(0, 2, 4, 3, 5, 1).reshape(N, h * h, p * p * 3)
        t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** .5
        loss = ((pred - t) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum()


def build_model(a):
    """The model `a.model` in `a.mode`: timm's ViT classifier, the MAE above, or ViTDet-B (forward only)."""
    if a.model == "vitdet_b":
        if a.mode != "forward":
            raise SystemExit("vitdet_b is benchmarked in --mode forward only")
        from vitdet_pytorch import ViTDet
        return ViTDet(img_size=a.img_size)
    dim, depth, heads, patch = PRESETS[a.model]
    if a.mode == "pretrain":
        dd, ddepth, dheads = (64, 4, 4) if a.model == "vit_shapes_patch4" else (512, 8, 16)
        return MAE(a.img_size, patch, dim, depth, heads, dd, ddepth, dheads)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=a.img_size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
        num_classes=1000, global_pool="avg", fc_norm=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_base_patch16")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mode", default="forward", choices=["forward", "train", "pretrain"])
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(a)
    x = torch.randn(a.batch_size, 3, a.img_size, a.img_size)
    y = torch.randint(0, 1000, (a.batch_size,))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step():
        if a.mode == "forward":
            model.eval()
            with torch.no_grad():
                model(x)
            return
        model.train()
        opt.zero_grad()
        loss = model(x, a.mask_ratio) if a.mode == "pretrain" else crit(model(x), y)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(a.iters): step()
    s = time.perf_counter() - t0
    out = {"img_per_s": a.batch_size * a.iters / s, "model": a.model, "mode": a.mode, "batch_size": a.batch_size,
           "img_size": a.img_size, "threads": torch.get_num_threads(), "iters": a.iters,
           "seconds_per_iter": s / a.iters, "reference": f"pytorch {torch.__version__}"}
    if a.mode == "pretrain": out["mask_ratio"] = a.mask_ratio
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
