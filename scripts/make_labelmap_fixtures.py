"""Writes Tests/DataTests/Fixtures/labelmaps/: one small PNG per kind a label map can come in, and
expected.json with what numpy.array(PIL.Image.open(path)) gives for each (the label values seg-eval
and the dense datasets must read), or null where a label map must be refused (RGB, RGBA).

The PNGs are written chunk by chunk (zlib + struct) so that every colour type and bit depth,
including 16-bit gray + alpha and a gray tRNS, is exactly what the file says.
Run: /work/venv/bin/python scripts/make_labelmap_fixtures.py
"""
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "DataTests", "Fixtures", "labelmaps")
W, H = 5, 3


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(path, color_type, depth, rows, extra=b""):
    """rows: bytes of each scanline (without the filter byte)."""
    raw = b"".join(b"\x00" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", W, H, depth, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def samples(values, depth):
    fmt = ">%d%s" % (len(values), "H" if depth == 16 else "B")
    return struct.pack(fmt, *values)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(12)
    labels8 = rng.integers(0, 256, size=(H, W)).tolist()
    labels16 = rng.integers(0, 65536, size=(H, W)).tolist()
    alpha8 = rng.integers(0, 256, size=(H, W)).tolist()
    alpha16 = rng.integers(0, 65536, size=(H, W)).tolist()
    small = rng.integers(0, 21, size=(H, W)).tolist()
    kinds = {}
    png(os.path.join(OUT, "gray8.png"), 0, 8, [samples(r, 8) for r in labels8]); kinds["gray8.png"] = True
    png(os.path.join(OUT, "gray16.png"), 0, 16, [samples(r, 16) for r in labels16]); kinds["gray16.png"] = True
    # 4-bit gray: libpng and PIL both give the raw 0...15 values.
    def pack4(r):
        v = [x % 16 for x in r] + [0]
        return bytes((v[i] << 4) | v[i + 1] for i in range(0, W, 2))
    png(os.path.join(OUT, "gray4.png"), 0, 4, [pack4(r) for r in small]); kinds["gray4.png"] = True
    # VOC style: a 256-entry palette whose colours are not the indices.
    palette = bytes((i * 37 % 256, i * 91 % 256, i * 13 % 256)[k] for i in range(256) for k in range(3))
    png(os.path.join(OUT, "palette.png"), 3, 8, [samples(r, 8) for r in small], chunk(b"PLTE", palette))
    kinds["palette.png"] = True
    png(os.path.join(OUT, "gray_alpha8.png"), 4, 8,
        [samples([v for p in zip(a, b) for v in p], 8) for a, b in zip(labels8, alpha8)])
    kinds["gray_alpha8.png"] = True
    png(os.path.join(OUT, "gray_alpha16.png"), 4, 16,
        [samples([v for p in zip(a, b) for v in p], 16) for a, b in zip(labels16, alpha16)])
    kinds["gray_alpha16.png"] = True
    # 8-bit gray with a tRNS colour (libpng reports it as gray + alpha).
    png(os.path.join(OUT, "gray8_trns.png"), 0, 8, [samples(r, 8) for r in labels8],
        chunk(b"tRNS", struct.pack(">H", labels8[0][0])))
    kinds["gray8_trns.png"] = True
    png(os.path.join(OUT, "rgb.png"), 2, 8, [samples([v for x in r for v in (x, x, x)], 8) for r in small])
    kinds["rgb.png"] = False
    png(os.path.join(OUT, "rgba.png"), 6, 8, [samples([v for x in r for v in (x, x, x, 255)], 8) for r in small])
    kinds["rgba.png"] = False
    expected = {}
    for name, is_label_map in kinds.items():
        image = np.array(Image.open(os.path.join(OUT, name)))
        if not is_label_map:
            expected[name] = None
            continue
        if image.ndim == 3:  # gray + alpha: the gray channel
            image = image[..., 0]
        expected[name] = {"width": W, "height": H, "labels": image.reshape(-1).astype(np.int64).tolist()}
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
