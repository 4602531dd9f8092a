"""Probe: classifiers on hand-crafted features, and on source size alone, on the issue's protocol.

    nice -n 10 python experiments/i18/probe_features.py [--mpp 1.5625] [--protocols all]

Every classifier is fitted on the protocol's training patients only, and C is chosen on its
validation patients (never on test). 'size only' uses the file's width, height, aspect and
magnification: if it separates subtypes, a model could learn the source instead of the tissue.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from common import CACHE, fields, frame, joint_to_hier, protocols, record, score_tables, summarise
from core.data.labels import SUBTYPES
from handcrafted import FEATURES_VERSION, field_features
from core.evaluation.baselines import image_features
from core.data.images import load_image


def feature_table(tables, mpp):
    cache = CACHE / f"features-v{FEATURES_VERSION}-{mpp:g}.npz"
    if cache.exists():
        stored = np.load(cache)
        return {k: stored[k] for k in stored.files}
    table = tables[0][1]
    scaled = fields(table, mpp)
    out = {}
    for path in table["path"]:
        name = os.path.basename(path)
        rgb = load_image(path, check_histology=False).rgb
        out[name] = np.concatenate([field_features(scaled[name]), [rgb.shape[1], rgb.shape[0]]])
    np.savez(cache, **out)
    return out


def baseline_features(table):
    cache = CACHE / "baseline-features.npz"
    if cache.exists():
        stored = np.load(cache)
        return {k: stored[k] for k in stored.files}
    out = {os.path.basename(p): image_features(load_image(p, check_histology=False).rgb) for p in table["path"]}
    np.savez(cache, **out)
    return out


def size_features(rows):
    mags = {"40X": 0, "100X": 1, "200X": 2, "400X": 3}
    out = []
    for path, mag in zip(rows["path"], rows["magnification"]):
        w, h = SIZES[os.path.basename(path)]
        out.append([w, h, w / h, *np.eye(4)[mags[mag]]])
    return np.array(out, float)


def patient_weights(rows):
    """Each patient counts once within its subtype, each subtype once overall."""
    per_case = rows.groupby(["case", "subtype"])["path"].transform("count").to_numpy(float)
    cases_per_subtype = rows.groupby("subtype")["case"].transform("nunique").to_numpy(float)
    w = 1.0 / (per_case * cases_per_subtype)
    return w * len(w) / w.sum()


WEIGHTING = {"mode": "class"}


def fit_predict(kind, x_train, y_train, x_eval, c, weights=None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.ensemble import HistGradientBoostingClassifier
    if kind == "lr":
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight=None if weights is not None
                                                                   else "balanced", max_iter=3000))
    elif kind == "hgb":
        model = HistGradientBoostingClassifier(max_depth=3, learning_rate=0.05, max_iter=int(c),
                                               class_weight=None if weights is not None else "balanced", random_state=0)
    if weights is None:
        model.fit(x_train, y_train)
    else:
        model.fit(x_train, y_train, **{("logisticregression__" if kind == "lr" else "") + "sample_weight": weights})
    proba = model.predict_proba(x_eval)
    joint = np.full((len(x_eval), len(SUBTYPES)), 0.0)
    for j, s in enumerate(model.classes_):
        joint[:, SUBTYPES.index(s)] = proba[:, j]
    return 0.999 * joint + 0.001 / len(SUBTYPES)


def macro_f1(rows, joint):
    from sklearn.metrics import balanced_accuracy_score, f1_score
    p_class, within = joint_to_hier(joint)
    f = frame(rows, p_class, within)
    present = sorted(set(f["subtype"]))
    return f1_score(f["subtype"], f["pred_subtype"], labels=present, average="macro") + \
        balanced_accuracy_score(f["label"], f["pred_label"])


def run(name, features_of, kind, grid, proto):
    start = time.time()
    per = {}
    chosen = {}
    for pname, table in proto:
        train, val, test = (table[table["split"] == s] for s in ("train", "val", "test"))
        xt, yt = features_of(train), train["subtype"].to_numpy()
        w = patient_weights(train) if WEIGHTING["mode"] == "patient" else None
        xv, xs = features_of(val), features_of(test)
        best = max(grid, key=lambda c: macro_f1(val, fit_predict(kind, xt, yt, xv, c, w)))
        chosen[pname] = best
        jt, jv = fit_predict(kind, xt, yt, xs, best, w), fit_predict(kind, xt, yt, xv, best, w)
        per[pname] = score_tables(frame(test, *joint_to_hier(jt)), frame(val, *joint_to_hier(jv)))
    record(name + ("" if WEIGHTING["mode"] == "class" else f" [{WEIGHTING['mode']} weights]"), summarise(per),
           time.time() - start, {"kind": kind, "chosen_on_val": chosen, "weighting": WEIGHTING["mode"]})


SIZES = {}

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mpp", type=float, default=1.5625)
    parser.add_argument("--protocols", default="all")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--weighting", default="class", choices=("class", "patient"))
    args = parser.parse_args()
    WEIGHTING["mode"] = args.weighting
    proto = protocols(args.protocols)
    feats = feature_table(proto, args.mpp)
    SIZES.update({k: tuple(v[-2:].astype(int)) for k, v in feats.items()})
    base = baseline_features(proto[0][1])

    def handcrafted(rows):
        return np.stack([feats[os.path.basename(p)][:-2] for p in rows["path"]])

    def baseline(rows):
        return np.stack([base[os.path.basename(p)] for p in rows["path"]])

    def both(rows):
        return np.concatenate([handcrafted(rows), baseline(rows)], axis=1)

    runs = {
        "size-only-lr": (size_features, "lr", [0.01, 0.1, 1.0]),
        "size-only-hgb": (size_features, "hgb", [50, 200]),
        "baseline-colour-texture-lr(C on val)": (baseline, "lr", [0.01, 0.1, 1.0]),
        f"handcrafted@{args.mpp:g}-lr": (handcrafted, "lr", [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]),
        f"handcrafted@{args.mpp:g}+baseline-lr": (both, "lr", [0.003, 0.01, 0.03, 0.1, 0.3]),
        f"handcrafted@{args.mpp:g}-hgb": (handcrafted, "hgb", [100, 300]),
    }
    for name, (fn, kind, grid) in runs.items():
        if args.only and not any(o in name for o in args.only):
            continue
        run(name, fn, kind, grid, proto)
