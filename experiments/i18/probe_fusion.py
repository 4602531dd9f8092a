"""Probe: late fusion of the whole-field CNN with a linear head on hand-crafted features.

    nice -n 10 python experiments/i18/probe_fusion.py [--cv-dir runs/i18-cnn-cv5]

Protocols: the patient-wise split seed 0 (CNN = models/default, trained on its 457 training images
by the "limited" recipe) and every finished fold of the patient-wise 5-fold CV seed 0 (CNN =
CV_DIR/fold-i/model, the same recipe on that fold's training patients). Per protocol the feature
head is fitted on the training patients only; the CNN's temperatures were fitted on the validation
patients by training. ONE setting is chosen for all protocols by the mean over protocols of the
validation patients' stage-1 balanced accuracy + subtype macro-F1: the feature set and C on the
features alone over all six protocols, then w1, w2 over the protocols with a CNN; the test
figures of that setting are then reported once (with bootstrap intervals over patients), next to
the CNN alone (w = 1) and the features alone (w = 0) on the same test patients.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score

from common import CACHE, RESULTS, ROOT, frame, protocols, record, score_tables, summarise
from core.data.images import load_image
from core.data.labels import CLASSES, STAGE1_OUTPUT, STAGE2_OUTPUTS, SUBTYPES, SUBTYPES_BY_CLASS
from fusion import FeatureHead, fuse

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
W_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def cnn_outputs(model_dir: Path, rows, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(p(class), p(subtype | class)) of the CNN's calibrated heads for `rows`, cached."""
    cache = CACHE / f"cnn-{key}.npz"
    names = [os.path.basename(p) for p in rows["path"]]
    if cache.exists():
        stored = np.load(cache)
        if list(stored["names"]) == names:
            return stored["p_class"], stored["within"]
    from core.model.loading import load_predictor
    predictor = load_predictor(model_dir)
    images = [load_image(p, check_histology=False).rgb for p in rows["path"]]
    out = predictor.calibrate(predictor.probabilities(images))
    within = np.zeros((len(rows), len(SUBTYPES)))
    for c in CLASSES:
        within[:, [SUBTYPES.index(s) for s in SUBTYPES_BY_CLASS[c]]] = out[STAGE2_OUTPUTS[c]]
    np.savez(cache, names=np.array(names), p_class=out[STAGE1_OUTPUT], within=within)
    return out[STAGE1_OUTPUT], within


def quick(rows, p_class, within) -> float:
    f = frame(rows, p_class, within)
    present = sorted(set(f["subtype"]))
    return balanced_accuracy_score(f["label"], f["pred_label"]) + \
        f1_score(f["subtype"], f["pred_subtype"], labels=present, average="macro")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cv-dir", default="runs/i18-cnn-cv5")
    args = parser.parse_args()
    base = dict(np.load(CACHE / "baseline-features.npz"))
    hand = {k: v[:-2] for k, v in np.load(CACHE / "features-v1-1.5625.npz").items()}
    feature_sets = {"colour_texture": base, "handcrafted@1.5625": hand,
                    "both": {k: np.concatenate([base[k], hand[k]]) for k in base}}
    runs = []
    for pname, table in protocols("all"):
        # the CV's own fold folder, or a fold trained on its own (python -m core train --fold i --out CV_DIR-fi)
        dirs = [ROOT / "models/default"] if pname == "split0" else \
            [ROOT / args.cv_dir / f"fold-{pname[4:]}" / "model", ROOT / f"{args.cv_dir}-f{pname[4:]}" / "model"]
        model_dir = next((d for d in dirs if (d / "model.keras").exists()), None)
        parts = {s: table[table["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
        cnn = {s: cnn_outputs(model_dir, parts[s], f"{pname}-{s}") for s in ("val", "test")} if model_dir else None
        runs.append((pname, parts, cnn))
    with_cnn = [r for r in runs if r[2] is not None]
    print("protocols with a CNN:", [r[0] for r in with_cnn], flush=True)
    start = time.time()
    heads = {}  # (protocol, feature set, C) -> {split: joint}
    for pname, parts, _ in runs:
        for fname, feats in feature_sets.items():
            x = {s: np.stack([feats[os.path.basename(p)] for p in parts[s]["path"]]) for s in parts}
            for c in C_GRID:
                head = FeatureHead.fit(x["train"], parts["train"]["subtype"], c)
                heads[(pname, fname, c)] = {s: head.joint(x[s]) for s in ("val", "test")}
    uniform = (np.full((1, 2), 0.5), np.full((1, 8), 0.25))  # w = 0 ignores it
    feature_grid = {(fname, c): float(np.mean([quick(parts["val"], *fuse(*[np.repeat(u, len(parts["val"]), 0) for u in uniform],
                                                                               heads[(pname, fname, c)]["val"], 0.0, 0.0))
                                               for pname, parts, _ in runs]))
                    for fname, c in itertools.product(feature_sets, C_GRID)}
    fname, c = max(feature_grid, key=feature_grid.get)
    print(f"features alone, chosen on validation over {len(runs)} protocols: {fname} C={c} -> "
          f"{feature_grid[(fname, c)]:.3f}", {" ".join(map(str, k)): round(v, 3) for k, v in feature_grid.items()}, flush=True)
    grid = {(w1, w2): float(np.mean([quick(parts["val"], *fuse(*cnn["val"], heads[(pname, fname, c)]["val"], w1, w2))
                                     for pname, parts, cnn in with_cnn]))
            for w1, w2 in itertools.product(W_GRID, W_GRID)} if with_cnn else {}
    w1, w2 = max(grid, key=grid.get) if grid else (0.0, 0.0)
    print(f"fusion weights chosen on validation over {len(with_cnn)} protocols: w1={w1} w2={w2} -> "
          f"{grid.get((w1, w2), float('nan')):.3f}", {f"{a},{b}": round(v, 3) for (a, b), v in grid.items()}, flush=True)
    (RESULTS / "fusion-grid.json").write_text(json.dumps({"features": {" ".join(map(str, k)): v for k, v in feature_grid.items()},
                                                          "weights": {f"{a} {b}": v for (a, b), v in grid.items()},
                                                          "protocols": [r[0] for r in runs],
                                                          "protocols_with_cnn": [r[0] for r in with_cnn]}, indent=1))
    candidates = {f"features-alone[{fname},C={c}]": (fname, c, 0.0, 0.0, runs),
                  "cnn-alone": (fname, c, 1.0, 1.0, with_cnn),
                  f"fusion[{fname},C={c},w1={w1},w2={w2}]": (fname, c, w1, w2, with_cnn)}
    for name, (fname, c, w1, w2, used) in candidates.items():
        per = {}
        for pname, parts, cnn in used:
            if cnn is None:
                cnn = {s: [np.repeat(u, len(parts[s]), 0) for u in uniform] for s in ("val", "test")}
            h = heads[(pname, fname, c)]
            test = frame(parts["test"], *fuse(*cnn["test"], h["test"], w1, w2))
            val = frame(parts["val"], *fuse(*cnn["val"], h["val"], w1, w2))
            per[pname] = score_tables(test, val)
            test.to_csv(RESULTS / f"pred-{name}-{pname}-test.csv", index=False)
            val.to_csv(RESULTS / f"pred-{name}-{pname}-val.csv", index=False)
        record(name, summarise(per), time.time() - start,
               {"features": fname, "C": c, "w_stage1": w1, "w_subtype": w2, "protocols": [r[0] for r in used],
                "chosen_by": "mean over protocols of validation stage-1 balanced accuracy + subtype macro-F1"})


if __name__ == "__main__":
    main()
