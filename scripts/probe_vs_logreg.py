"""The reference the cached linear probe must reach: scikit-learn's LogisticRegressionCV on the
same extracted features (standardised with train statistics, C picked by 5-fold CV over 33 values
in 1e-4...1e4, refit on all of train), val top-1 in percent.

    mae-eval extract --checkpoint C --data TRAIN --out train.safetensors --pool cls --crop-ratio 1
    mae-eval extract --checkpoint C --data VAL --out val.safetensors --pool cls --crop-ratio 1
    /work/venv/bin/python scripts/probe_vs_logreg.py train.safetensors val.safetensors [--limit N]

--limit keeps the first N train images of each class (small-data regime).
"""
import argparse
import json

import numpy as np
from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegressionCV
from sklearn.preprocessing import StandardScaler

parser = argparse.ArgumentParser()
parser.add_argument("train")
parser.add_argument("val")
parser.add_argument("--limit", type=int, default=0)
args = parser.parse_args()
train, val = load_file(args.train), load_file(args.val)
xt, yt = train["features"], train["labels"]
if args.limit:
    keep = np.concatenate([np.flatnonzero(yt == c)[: args.limit] for c in np.unique(yt)])
    xt, yt = xt[keep], yt[keep]
scaler = StandardScaler().fit(xt)
clf = LogisticRegressionCV(Cs=np.logspace(-4, 4, 33), cv=5, max_iter=5000).fit(scaler.transform(xt), yt)
top1 = float((clf.predict(scaler.transform(val["features"])) == val["labels"]).mean() * 100)
print(json.dumps({"sklearn_top1": top1, "C": float(clf.C_[0]), "train_images": int(len(yt))}))
