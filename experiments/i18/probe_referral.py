"""Probe: per-stage referral thresholds chosen on validation patients, measured on test patients.

    python experiments/i18/probe_referral.py NAME   (a candidate of results/pred-NAME-PROTOCOL-{val,test}.csv)

Stage 1: the threshold t on max p(class) is the smallest one at which the validation images NOT
referred (max p >= t) have stage-1 accuracy >= 0.95 (the largest covered share meeting the target);
subtype: the same on max p(subtype | called class) with a target of 0.80 subtype accuracy among the
non-referred images whose class is right. Both are then applied unchanged to the test patients.
"""

import sys

import numpy as np
import pandas as pd

from common import RESULTS
from core.data.labels import CLASSES, SUBTYPES_BY_CLASS


def confidences(f):
    p1 = f[[f"p_{c}" for c in CLASSES]].to_numpy().max(1)
    within = np.array([max(f.loc[i, f"w_{s}"] for s in SUBTYPES_BY_CLASS[f.loc[i, "pred_label"]]) for i in f.index])
    return p1, within, (f["pred_label"] == f["label"]).to_numpy(), (f["pred_subtype"] == f["subtype"]).to_numpy()


def choose(conf, right, target):
    for t in np.unique(np.concatenate([[0.0], conf])):  # ascending: the first meeting the target covers most
        kept = conf >= t
        if kept.any() and right[kept].mean() >= target:
            return float(t)
    return 1.01  # never met: everything referred


def at(conf, right, t):
    kept = conf >= t
    return {"referred": float(1 - kept.mean()), "accuracy_kept": float(right[kept].mean()) if kept.any() else None,
            "kept": int(kept.sum()), "images": int(len(conf))}


name = sys.argv[1]
rows = []
for protocol in ["split0"] + [f"fold{i}" for i in range(5)]:
    try:
        val = pd.read_csv(RESULTS / f"pred-{name}-{protocol}-val.csv")
        test = pd.read_csv(RESULTS / f"pred-{name}-{protocol}-test.csv")
    except FileNotFoundError:
        continue
    v1, vw, vr1, vrs = confidences(val)
    s1, sw, sr1, srs = confidences(test)
    t1, t2 = choose(v1, vr1, 0.95), choose(vw[vr1], vrs[vr1], 0.80)
    a1, a2 = at(s1, sr1, t1), at(sw[sr1], srs[sr1], t2)
    rows.append({"protocol": protocol, "t_stage1": round(t1, 3), "test_referred_stage1": round(a1["referred"], 3),
                 "test_acc_not_referred_stage1": a1["accuracy_kept"] and round(a1["accuracy_kept"], 3),
                 "t_subtype": round(t2, 3), "test_referred_subtype(of right class)": round(a2["referred"], 3),
                 "test_subtype_acc_not_referred": a2["accuracy_kept"] and round(a2["accuracy_kept"], 3),
                 "test_images": a1["images"]})
table = pd.DataFrame(rows)
print("| " + " | ".join(table.columns) + " |")
print("|---" * len(table.columns) + "|")
for r in table.itertuples(index=False):
    print("| " + " | ".join(map(str, r)) + " |")
