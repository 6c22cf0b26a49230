"""Writes PyTorch reference values for the fused attention, ViTDet's decomposed relative position
terms and window partition kernels (Sources/MAEKernels/FlashAttention.swift, RelPos.swift, Window.swift).

Usage: /work/venv/bin/python scripts/make_attention_fixtures.py
Output: Tests/KernelTests/Fixtures/{flash_attention,relpos,relpos_global,window}.safetensors

Each case is a group of tensors named "<case>/<tensor>": its sizes as an int64 tensor "<case>/sizes",
the inputs, a random upstream gradient ("grad_out", or one per output), the outputs, and the gradients
autograd gives for sum(out * grad_out) ("d_<input>"). CPU, float32, seeded, so the files are reproducible.

The detectron2 semantics (detectron2/modeling/backbone/utils.py: get_rel_pos, add_decomposed_rel_pos,
window_partition, window_unpartition) are restated here in plain torch, not imported or copied:
  - rel-pos table of length L is resized with F.interpolate(mode="linear") on (1, C, L) when
    L != 2 max(q, k) - 1; R[i, j] = table[long(i max(k/q,1) - j max(q/k,1) + (k-1) max(q/k,1))];
  - rel_h[b,(y,x),kh] = q[b,(y,x)] . Rh[y,kh], rel_w[b,(y,x),kw] = q[b,(y,x)] . Rw[x,kw] with the
    UNSCALED q, added to (q * scale) k^T as attn[(y,x),(kh,kw)] += rel_h[kh] + rel_w[kw];
  - windows: zero-pad bottom/right to multiples of w, windows in row-major order, crop on the way back.
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT_DIR = os.path.join(os.path.dirname(__file__), "..", "Tests", "KernelTests", "Fixtures")
torch.manual_seed(0)
torch.set_num_threads(1)


class Recorder:
    def __init__(self):
        self.tensors = {}

    def put(self, case, name, t):
        self.tensors[f"{case}/{name}"] = t.detach().contiguous().clone()

    def sizes(self, case, values):
        self.tensors[f"{case}/sizes"] = torch.tensor(values, dtype=torch.int64)

    def run(self, case, inputs, fn):
        """fn(**leaves) -> dict of outputs; stores inputs, outputs, grad_<out> and d_<input>."""
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        outs = fn(**leaves)
        total = 0
        for k, v in outs.items():
            g = torch.randn_like(v)
            self.put(case, k, v)
            if v.requires_grad:
                self.put(case, "grad_" + k, g)
                total = total + (v * g).sum()
        total.backward()
        for k, v in inputs.items():
            self.put(case, k, v)
            self.put(case, "d_" + k, leaves[k].grad)

    def save(self, name):
        path = os.path.join(OUT_DIR, name)
        save_file(self.tensors, path)
        os.chmod(path, 0o644)
        print(f"{path}: {len(self.tensors)} tensors, {os.path.getsize(path)} bytes")


def split_heads(qkv, heads):
    """qkv (B,N,3D) [q | k | v], heads contiguous -> q, k, v each (B,H,N,Dh) (timm's layout)."""
    b, n, three_d = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, three_d // (3 * heads)).permute(2, 0, 3, 1, 4)
    return q, k, v


def merge_heads(o):
    b, h, n, hd = o.shape
    return o.transpose(1, 2).reshape(b, n, h * hd)


def attention(qkv, heads, bias):
    """SDPA with a float additive mask; also returns logsumexp of the scores per row (B,H,N)."""
    q, k, v = split_heads(qkv, heads)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    return merge_heads(out), torch.logsumexp(scores, -1).detach()


def rel_pos_rows(q_size, k_size, table):
    """detectron2 get_rel_pos, restated: table (L, C) -> R (q, k, C)."""
    length = int(2 * max(q_size, k_size) - 1)
    if table.shape[0] != length:
        table = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear").squeeze(0).t()
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    rel = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return table[rel.long()]


def rel_pos_terms(q, rh, rw, grid_h, grid_w):
    """rel_h (BH, N, kh), rel_w (BH, N, kw) from the unscaled q (BH, N, C), as add_decomposed_rel_pos."""
    bh, n, c = q.shape
    rq = q.reshape(bh, grid_h, grid_w, c)
    rel_h = torch.einsum("byxc,ykc->byxk", rq, rh).reshape(bh, n, -1)
    rel_w = torch.einsum("byxc,xkc->byxk", rq, rw).reshape(bh, n, -1)
    return rel_h, rel_w


def decomposed_bias(rel_h, rel_w, batch, heads, kh, kw):
    bh, n, _ = rel_h.shape
    bias = rel_h[:, :, :, None] + rel_w[:, :, None, :]
    return bias.reshape(batch, heads, n, kh * kw)


# MARK: - Fused attention against SDPA with a float bias

flash = Recorder()


def flash_case(name, batch, heads, hd, grid, kind):
    gh, gw = grid
    n, d = gh * gw, heads * hd
    inputs = {"qkv": torch.randn(batch, n, 3 * d)}
    if kind == "dense":
        inputs["bias"] = torch.randn(batch * heads, n, n)
    elif kind == "dense_shared":
        inputs["bias"] = torch.randn(heads, n, n)
    elif kind == "decomposed":
        inputs["rel_h"] = torch.randn(batch * heads, n, gh)
        inputs["rel_w"] = torch.randn(batch * heads, n, gw)
    flash.sizes(name, [batch, n, d, heads, gh, gw])

    def fn(qkv, bias=None, rel_h=None, rel_w=None):
        if kind == "dense":
            mask = bias.reshape(batch, heads, n, n)
        elif kind == "dense_shared":
            mask = bias.unsqueeze(0).expand(batch, heads, n, n)
        elif kind == "decomposed":
            mask = decomposed_bias(rel_h, rel_w, batch, heads, gh, gw)
        else:
            mask = None
        out, lse = attention(qkv, heads, mask)
        return {"out": out, "lse": lse}

    flash.run(name, inputs, fn)


flash_case("plain", 2, 3, 8, (4, 5), "none")
flash_case("dense", 2, 3, 8, (4, 5), "dense")
flash_case("dense_shared", 2, 3, 8, (4, 5), "dense_shared")
flash_case("decomposed", 2, 2, 8, (6, 7), "decomposed")
flash_case("decomposed_long", 1, 2, 16, (10, 15), "decomposed")
flash.save("flash_attention.safetensors")

# MARK: - Rel-pos gather, terms, and whole attention cores as ViTDet runs them

rel = Recorder()


def gather_case(name, q_size, k_size, length, channels):
    rel.sizes(name, [q_size, k_size, length, channels])
    rel.run(name, {"table": torch.randn(length, channels)},
            lambda table: {"rows": rel_pos_rows(q_size, k_size, table)})


gather_case("gather_window", 14, 14, 27, 8)
gather_case("gather_up", 9, 9, 7, 4)
gather_case("gather_down", 4, 4, 11, 4)
gather_case("gather_q_lt_k", 5, 9, 17, 3)
gather_case("gather_q_gt_k_resized", 6, 3, 7, 3)


def terms_case(name, batch, heads, hd, grid, length):
    gh, gw = grid
    n, d = gh * gw, heads * hd
    rel.sizes(name, [batch, n, d, heads, gh, gw, length])

    def fn(qkv, rel_pos_h, rel_pos_w):
        q, _, _ = split_heads(qkv, heads)
        rel_h, rel_w = rel_pos_terms(q.reshape(batch * heads, n, hd), rel_pos_rows(gh, gh, rel_pos_h),
                                     rel_pos_rows(gw, gw, rel_pos_w), gh, gw)
        return {"rel_h": rel_h, "rel_w": rel_w}

    rel.run(name, {"qkv": torch.randn(batch, n, 3 * d), "rel_pos_h": torch.randn(length, hd),
                   "rel_pos_w": torch.randn(length, hd)}, fn)


terms_case("terms_window", 2, 2, 8, (14, 14), 27)
terms_case("terms_rect", 1, 3, 4, (5, 7), 11)


def block_case(name, batch, heads, hd, grid, length):
    """The attention core of a ViTDet block: (q*scale) k^T + decomposed rel-pos (unscaled q), softmax, v."""
    gh, gw = grid
    n, d = gh * gw, heads * hd
    rel.sizes(name, [batch, n, d, heads, gh, gw, length])

    def fn(qkv, rel_pos_h, rel_pos_w):
        q, k, v = split_heads(qkv, heads)
        attn = (q * hd ** -0.5) @ k.transpose(-2, -1)
        rel_h, rel_w = rel_pos_terms(q.reshape(batch * heads, n, hd), rel_pos_rows(gh, gh, rel_pos_h),
                                     rel_pos_rows(gw, gw, rel_pos_w), gh, gw)
        attn = attn + decomposed_bias(rel_h, rel_w, batch, heads, gh, gw)
        return {"out": merge_heads(attn.softmax(-1) @ v)}

    # rel-pos tables at a useful scale (trained tables are O(0.1..1); zero-init would test nothing).
    rel.run(name, {"qkv": torch.randn(batch, n, 3 * d), "rel_pos_h": 0.5 * torch.randn(length, hd),
                   "rel_pos_w": 0.5 * torch.randn(length, hd)}, fn)


block_case("block_window", 2, 2, 8, (14, 14), 27)       # 14x14 windows, tables at their own length
rel.save("relpos.safetensors")



def smooth_gradient(shape, phase):
    """g[..., n, k] = cos(0.1 n + 0.7 k + phase) in float64, then float32: an upstream gradient the
    Swift test rebuilds itself, so the 64x64 grid's (4096, 64) gradients need not be stored."""
    n = torch.arange(shape[-2], dtype=torch.float64)[:, None]
    k = torch.arange(shape[-1], dtype=torch.float64)[None, :]
    return torch.cos(0.1 * n + 0.7 * k + phase).to(torch.float32).expand(shape)


def terms_global_case(name, grid, hd, length, row_step):
    """The 64x64 global grid (one head at reduced width) with a 27-row table resized to 127.
    Stores rel_h / rel_w on every row_step-th query only, and the gradients of
    sum(rel_h * g_h + rel_w * g_w) for the smooth g of `smooth_gradient` (phases 0 and 1)."""
    gh, gw = grid
    n = gh * gw
    rel.sizes(name, [1, n, hd, 1, gh, gw, length, row_step])
    qkv = torch.randn(1, n, 3 * hd).requires_grad_(True)
    tables = {"rel_pos_h": torch.randn(length, hd).requires_grad_(True),
              "rel_pos_w": torch.randn(length, hd).requires_grad_(True)}
    rel_h, rel_w = rel_pos_terms(qkv[:, :, :hd], rel_pos_rows(gh, gh, tables["rel_pos_h"]),
                                 rel_pos_rows(gw, gw, tables["rel_pos_w"]), gh, gw)
    ((rel_h * smooth_gradient(rel_h.shape, 0.0)).sum() + (rel_w * smooth_gradient(rel_w.shape, 1.0)).sum()).backward()
    rel.put(name, "qkv", qkv)
    rel.put(name, "rel_h_rows", rel_h[:, ::row_step])
    rel.put(name, "rel_w_rows", rel_w[:, ::row_step])
    rel.put(name, "d_q", qkv.grad[:, :, :hd])
    for k, v in tables.items():
        rel.put(name, k, v)
        rel.put(name, "d_" + k, v.grad)


rel = Recorder()  # the 64x64 grid's own file, to keep each under 1 MB
terms_global_case("terms_global", (64, 64), 4, 27, 31)
rel.save("relpos_global.safetensors")

# MARK: - Window partition / unpartition

win = Recorder()


def partition(x, w):
    b, h, wd, c = x.shape
    ph, pw = (w - h % w) % w, (w - wd % w) % w
    x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, wd + pw
    x = x.reshape(b, hp // w, w, wp // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def unpartition(windows, w, hp, wp, h, wd):
    c = windows.shape[-1]
    b = windows.shape[0] // ((hp // w) * (wp // w))
    x = windows.reshape(b, hp // w, wp // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    return x[:, :h, :wd, :]


def window_case(name, b, h, wd, c, w):
    hp, wp = -(-h // w) * w, -(-wd // w) * w
    win.sizes(name, [b, h, wd, c, w])
    win.run(name + "/partition", {"x": torch.randn(b, h, wd, c)}, lambda x: {"windows": partition(x, w)})
    n_windows = b * (hp // w) * (wp // w)
    win.run(name + "/unpartition", {"windows": torch.randn(n_windows, w * w, c)},
            lambda windows: {"x": unpartition(windows, w, hp, wp, h, wd)})


window_case("padded", 1, 64, 64, 2, 14)      # ViTDet at 1024 px: 64x64 -> 70x70 -> 25 windows of 14x14
window_case("unpadded", 2, 28, 42, 3, 14)
window_case("odd", 2, 5, 3, 2, 4)            # pads both axes, a window row and column mostly padding
win.save("window.safetensors")
