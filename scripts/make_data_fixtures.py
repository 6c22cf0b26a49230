#!/usr/bin/env python3
"""Generates Tests/DataTests/Fixtures: images in every PNG/JPEG flavour the codecs must read, with the
bytes PIL decodes them to, plus resize / crop / normalize references from PIL and torchvision.

Run with /work/venv/bin/python scripts/make_data_fixtures.py (Pillow, numpy, torch, torchvision).
Expected values are raw little-endian files: *.rgb (H, W, 3 uint8), *.i32 (H, W int32),
*.f32 (3, H, W float32); index.json lists every case with its size.
"""
import io, json, os, struct, zlib
import numpy as np
from PIL import Image
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "DataTests", "Fixtures")
rng = np.random.default_rng(1234)
index = {"decode": [], "labels": [], "errors": [], "resize": [], "crop": [], "eval": [], "resized_crop": []}


def natural(h, w, seed):
    """A smooth image with edges and a little noise, so JPEG and resampling see realistic content."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([128 + 100 * np.sin(x / (3 + c) + y / (5 + 2 * c) + c) for c in range(3)], -1)
    img[(x - w / 2) ** 2 + (y - h / 3) ** 2 < (min(h, w) / 4) ** 2] = [250, 30, 60]
    img += r.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def pack_row(row, depth):
    """Packs one row of samples (already flattened per pixel) at `depth` bits, big-endian."""
    if depth == 8:
        return row.astype(">u1").tobytes()
    if depth == 16:
        return row.astype(">u2").tobytes()
    per = 8 // depth
    padded = np.zeros(((len(row) + per - 1) // per) * per, np.uint8)
    padded[: len(row)] = row
    out = np.zeros(len(padded) // per, np.uint8)
    for k in range(per):
        out |= (padded[k::per] << (8 - depth * (k + 1))).astype(np.uint8)
    return out.tobytes()


def write_png(path, samples, color_type, depth, interlace=False, plte=None, trns=None, gama=None):
    """A minimal PNG writer for the flavours PIL cannot write (16-bit colour, 2/4-bit gray, Adam7)."""
    h, w = samples.shape[:2]
    flat = samples.reshape(h, w, -1)
    raw = b""
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)] \
        if interlace else [(0, 0, 1, 1)]
    for (y0, x0, dy, dx) in passes:
        sub = flat[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        for row in sub:
            raw += b"\x00" + pack_row(row.reshape(-1), depth)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, int(interlace)))
    if gama is not None:
        data += png_chunk(b"gAMA", struct.pack(">I", gama))
    if plte is not None:
        data += png_chunk(b"PLTE", plte.astype(np.uint8).tobytes())
    if trns is not None:
        data += png_chunk(b"tRNS", trns)
    data += png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def expect_rgb(name):
    """Records what PIL's ImageFolder loader gives for a fixture image."""
    im = Image.open(os.path.join(OUT, name)).convert("RGB")
    arr = np.asarray(im)
    arr.tofile(os.path.join(OUT, name + ".rgb"))
    index["decode"].append({"file": name, "width": im.width, "height": im.height})


def expect_labels(name):
    arr = np.asarray(Image.open(os.path.join(OUT, name))).astype("<i4")
    arr.tofile(os.path.join(OUT, name + ".i32"))
    index["labels"].append({"file": name, "width": arr.shape[1], "height": arr.shape[0]})


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        # aug_* and augment.json belong to make_augment_fixtures.py.
        if not (f.startswith("aug_") or f == "augment.json"):
            os.remove(os.path.join(OUT, f))
    h, w = 17, 23
    rgb = natural(h, w, 1)

    # PNGs PIL can write.
    Image.fromarray(rgb).save(os.path.join(OUT, "rgb8.png"))
    Image.fromarray(rgb[..., 0]).save(os.path.join(OUT, "gray8.png"))
    rgba = np.dstack([rgb, rng.integers(0, 256, (h, w), dtype=np.uint8)])
    Image.fromarray(rgba).save(os.path.join(OUT, "rgba8.png"))
    Image.fromarray(rgba[..., [0, 3]], "LA").save(os.path.join(OUT, "gray_alpha8.png"))
    Image.fromarray(rgb[..., 1] > 128).save(os.path.join(OUT, "gray1.png"))
    pal = Image.fromarray(rgb).quantize(40)
    pal.save(os.path.join(OUT, "palette8.png"))
    pal.save(os.path.join(OUT, "palette_trns.png"), transparency=3)
    Image.fromarray(rgb).quantize(12).save(os.path.join(OUT, "palette4.png"), bits=4)
    g16 = rng.integers(0, 700, (h, w)).astype(np.uint16)
    Image.fromarray(g16).save(os.path.join(OUT, "gray16.png"))
    # PNGs written by hand: 16-bit colour, 2/4-bit gray, interlaced, a gAMA-free RGB16.
    rgb16 = (rgb.astype(np.uint16) * 257 + rng.integers(0, 257, rgb.shape)).astype(np.uint16)
    write_png(os.path.join(OUT, "rgb16.png"), rgb16, 2, 16)
    write_png(os.path.join(OUT, "gray2.png"), rgb[..., 0] >> 6, 0, 2)
    write_png(os.path.join(OUT, "gray4.png"), rgb[..., 0] >> 4, 0, 4)
    write_png(os.path.join(OUT, "rgb8_interlaced.png"), rgb, 2, 8, interlace=True)
    write_png(os.path.join(OUT, "rgba8_interlaced.png"), rgba, 6, 8, interlace=True)
    write_png(os.path.join(OUT, "gray16_interlaced.png"), g16, 0, 16, interlace=True)
    for name in ["rgb8.png", "gray8.png", "rgba8.png", "gray_alpha8.png", "gray1.png", "palette8.png",
                 "palette_trns.png", "palette4.png", "gray16.png", "rgb16.png", "gray2.png", "gray4.png",
                 "rgb8_interlaced.png", "rgba8_interlaced.png", "gray16_interlaced.png"]:
        expect_rgb(name)

    # JPEGs: the subsamplings, progressive, gray, odd sizes, a restart interval.
    big = natural(37, 29, 2)
    Image.fromarray(big).save(os.path.join(OUT, "q90_420.jpg"), quality=90)
    Image.fromarray(big).save(os.path.join(OUT, "q75_422.jpg"), quality=75, subsampling=1)
    Image.fromarray(big).save(os.path.join(OUT, "q95_444.jpg"), quality=95, subsampling=0)
    Image.fromarray(big).save(os.path.join(OUT, "progressive.jpg"), quality=85, progressive=True)
    Image.fromarray(big[..., 0]).save(os.path.join(OUT, "gray.jpg"), quality=85)
    Image.fromarray(big).convert("CMYK").save(os.path.join(OUT, "cmyk.jpg"), quality=90)
    for name in ["q90_420.jpg", "q75_422.jpg", "q95_444.jpg", "progressive.jpg", "gray.jpg", "cmyk.jpg"]:
        expect_rgb(name)
    # A JPEG with a .png name: the magic bytes decide.
    os.rename(os.path.join(OUT, "q95_444.jpg"), os.path.join(OUT, "jpeg_named.png"))
    os.rename(os.path.join(OUT, "q95_444.jpg.rgb"), os.path.join(OUT, "jpeg_named.png.rgb"))
    index["decode"][-4]["file"] = "jpeg_named.png"

    # Broken files.
    jpg = open(os.path.join(OUT, "q90_420.jpg"), "rb").read()
    png = open(os.path.join(OUT, "rgb8.png"), "rb").read()
    for name, data in [("truncated.jpg", jpg[: len(jpg) // 2]), ("truncated.png", png[: len(png) // 2]),
                       ("corrupt.png", png[:40] + bytes(60) + png[100:]), ("garbage.jpg", b"\xff\xd8\xff" + bytes(50)),
                       ("text.png", b"hello, not an image\n"), ("empty.png", b"")]:
        open(os.path.join(OUT, name), "wb").write(data)
        index["errors"].append(name)

    # Label maps: VOC palette indices (with 255 borders), ADE gray, 16-bit gray.
    lab = rng.integers(0, 21, (h, w)).astype(np.uint8)
    lab[0, :] = 255
    voc = Image.fromarray(lab, "P")
    voc.putpalette(list(rng.integers(0, 256, 768)))
    voc.save(os.path.join(OUT, "labels_voc.png"))
    Image.fromarray(lab).save(os.path.join(OUT, "labels_ade.png"))
    Image.fromarray((lab.astype(np.uint16) * 300)).save(os.path.join(OUT, "labels16.png"))
    for name in ["labels_voc.png", "labels_ade.png", "labels16.png"]:
        expect_labels(name)

    # Resampling: PIL bicubic (torchvision Resize on PIL images) down and up, odd factors.
    src_rgb = natural(47, 61, 3)
    Image.fromarray(src_rgb).save(os.path.join(OUT, "resize_src.png"))
    src = Image.fromarray(src_rgb)
    for (tw, th) in [(30, 23), (13, 10), (61, 20), (100, 77), (8, 90), (61, 47)]:
        out = np.asarray(src.resize((tw, th), Image.BICUBIC))
        name = f"resize_{tw}x{th}"
        out.tofile(os.path.join(OUT, name + ".rgb"))
        index["resize"].append({"name": name, "width": tw, "height": th})
    for short in [32, 50, 47, 64]:
        out = np.asarray(T.Resize(short, interpolation=T.InterpolationMode.BICUBIC)(src))
        name = f"resize_short{short}"
        out.tofile(os.path.join(OUT, name + ".rgb"))
        index["resize"].append({"name": name, "short": short, "width": out.shape[1], "height": out.shape[0]})
    for (cw, ch) in [(20, 20), (60, 46), (33, 12), (70, 50)]:
        out = np.asarray(T.CenterCrop((ch, cw))(src))
        name = f"crop_{cw}x{ch}"
        out.tofile(os.path.join(OUT, name + ".rgb"))
        index["crop"].append({"name": name, "width": cw, "height": ch})
    # MAE's eval transform: Resize(int(size / crop_pct), bicubic) + CenterCrop(size) + ToTensor + Normalize.
    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for (size, ratio) in [(32, 0.875), (24, 1.0), (40, 0.875), (47, 1.0)]:
        t = T.Compose([T.Resize(int(size / ratio), interpolation=T.InterpolationMode.BICUBIC),
                       T.CenterCrop(size), T.ToTensor(), norm])
        out = t(src).numpy().astype("<f4")
        name = f"eval_{size}_{ratio}"
        out.tofile(os.path.join(OUT, name + ".f32"))
        index["eval"].append({"name": name, "size": size, "ratio": ratio})
    # RandomResizedCrop's crop-then-resize for fixed crop boxes (the box sampling is our own RNG).
    for (top, left, ch, cw, size) in [(3, 5, 30, 40, 32), (0, 0, 47, 61, 16), (10, 2, 9, 12, 24)]:
        out = np.asarray(TF.resized_crop(src, top, left, ch, cw, [size, size], T.InterpolationMode.BICUBIC))
        name = f"rrc_{top}_{left}_{ch}_{cw}_{size}"
        out.tofile(os.path.join(OUT, name + ".rgb"))
        index["resized_crop"].append({"name": name, "top": top, "left": left, "height": ch, "width": cw, "size": size})

    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
