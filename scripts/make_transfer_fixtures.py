"""Fixture for TaskTests/TransferTests: synthetic features with known structure and the val accuracy
of a well-tuned scikit-learn logistic regression on them (C chosen by 5-fold CV on train, then refit
on all of train, features standardised with train statistics).

    /work/venv/bin/python scripts/make_transfer_fixtures.py   # writes Tests/TaskTests/Fixtures/logreg_features.json
"""
import json
import numpy as np
from sklearn.linear_model import LogisticRegressionCV
from sklearn.preprocessing import StandardScaler

rng = np.random.default_rng(0)
K, D, N_TRAIN, N_VAL = 6, 24, 480, 300
# Class means on a low-dimensional subspace plus anisotropic noise and a few uninformative,
# large-scale dimensions: overlapping classes, so accuracy is well below 100% and tuning matters.
means = rng.normal(0, 1.0, size=(K, 4)) @ rng.normal(0, 1, size=(4, D)) * 0.35
scales = np.exp(rng.normal(0, 0.8, size=D))

def sample(n):
    y = np.arange(n) % K
    rng.shuffle(y)
    x = means[y] + rng.normal(0, 1, size=(n, D)) * scales + 3.0
    return np.round(x, 3).astype(np.float32), y

xt, yt = sample(N_TRAIN)
xv, yv = sample(N_VAL)
scaler = StandardScaler().fit(xt)
clf = LogisticRegressionCV(Cs=np.logspace(-4, 4, 33), cv=5, max_iter=5000).fit(scaler.transform(xt), yt)
acc = float((clf.predict(scaler.transform(xv)) == yv).mean() * 100)
out = {"classes": K, "width": D, "train_features": [round(float(v), 3) for v in xt.ravel()], "train_labels": yt.tolist(),
       "val_features": [round(float(v), 3) for v in xv.ravel()], "val_labels": yv.tolist(), "sklearn_top1": acc, "sklearn_C": float(clf.C_[0])}
with open("Tests/TaskTests/Fixtures/logreg_features.json", "w") as f:
    json.dump(out, f)
print("sklearn logistic regression val top-1", acc, "C", clf.C_[0])
