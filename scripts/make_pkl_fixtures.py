"""Generates the detectron2 model-zoo style .pkl fixtures under Tests/FormatTests/Fixtures
(run with /work/venv/bin/python).

A detectron2 model-zoo checkpoint is a plain pickle of `{"model": {name: numpy.ndarray}, "__author__": ...,
"matching_heuristics": True}` (detectron2/checkpoint/detection_checkpoint.py reads it with
`pickle.load(f, encoding="latin1")`). The files here are written with numpy + pickle exactly so, in every
shape the Swift reader must rebuild: protocols 2, 4 and 5 (5 takes numpy's `_frombuffer` path with an
in-band bytearray), numpy 2's `numpy._core` module names and numpy 1's `numpy.core`, Python 2's byte
strings (BINSTRING raw data, as old Caffe2-converted model-zoo files hold), C and Fortran order, a
big-endian array, a 0-d array, and float32/float64/int64/int32/uint8/bool dtypes. Expected values are
stored beside them as float32 safetensors (plus int64 for the integer arrays).
"""
import io
import os
import pickle

import numpy as np
import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "FormatTests", "Fixtures")


def arrays():
    rng = np.random.default_rng(14)
    model = {
        "backbone.net.pos_embed": rng.standard_normal((1, 5, 4)).astype(np.float32),
        "roi_heads.box_head.conv1.weight": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
        "roi_heads.box_head.conv1.norm.bias": rng.standard_normal(3).astype(np.float64),
        "roi_heads.box_predictor.cls_score.weight": np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)),
        "roi_heads.box_predictor.bbox_pred.bias": rng.standard_normal(8).astype(">f4"),
        "steps": np.array([3, -1, 2 ** 40], dtype=np.int64),
        "counts": np.array([[7, -8], [9, 10]], dtype=np.int32),
        "pixels": np.arange(6, dtype=np.uint8).reshape(2, 3),
        "flags": np.array([True, False, True]),
        "scale": np.array(2.5, dtype=np.float32),
    }
    assert model["roi_heads.box_predictor.cls_score.weight"].flags.f_contiguous
    assert not model["roi_heads.box_predictor.cls_score.weight"].flags.c_contiguous
    return model


def checkpoint(model):
    return {"model": model, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}


class Python2Pickler(pickle._Pickler):
    """The pure-Python pickler writing bytes as Python 2 `str` (SHORT_BINSTRING/BINSTRING), as Python 2
    pickled numpy's raw data; unpicklers read those with encoding='latin1'."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def main():
    model = arrays()
    with open(os.path.join(OUT, "d2_numpy2_p4.pkl"), "wb") as f:
        pickle.dump(checkpoint(model), f, protocol=4)
    with open(os.path.join(OUT, "d2_numpy2_p5.pkl"), "wb") as f:
        pickle.dump(checkpoint(model), f, protocol=5)
    # numpy 1.x wrote `numpy.core.*`; protocol 2 spells globals as text lines, so renaming is exact.
    p2 = pickle.dumps(checkpoint(model), protocol=2)
    assert b"numpy._core.multiarray\n" in p2
    with open(os.path.join(OUT, "d2_numpy1_p2.pkl"), "wb") as f:
        f.write(p2.replace(b"numpy._core.", b"numpy.core."))
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(checkpoint(model))
    with open(os.path.join(OUT, "d2_python2.pkl"), "wb") as f:
        f.write(buffer.getvalue().replace(b"numpy._core.", b"numpy.core."))
    # Check the fixtures round-trip through the reader detectron2 itself uses.
    for name in ["d2_numpy2_p4.pkl", "d2_numpy2_p5.pkl", "d2_numpy1_p2.pkl", "d2_python2.pkl"]:
        with open(os.path.join(OUT, name), "rb") as f:
            back = pickle.load(f, encoding="latin1")["model"]
        for k, v in model.items():
            # numpy rebuilds a big-endian array in native order: compare kind, size and values.
            same_type = (back[k].dtype.kind, back[k].dtype.itemsize) == (v.dtype.kind, v.dtype.itemsize)
            assert same_type and np.array_equal(back[k], v), (name, k)
    expect = {k: torch.from_numpy(np.ascontiguousarray(v).astype(np.float32)) for k, v in model.items()}
    for k in ["steps", "counts"]:
        expect[k + "_as_i64"] = torch.from_numpy(model[k].astype(np.int64))
    save_file(expect, os.path.join(OUT, "d2_expect.safetensors"))


if __name__ == "__main__":
    main()
