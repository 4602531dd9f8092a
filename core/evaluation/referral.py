"""Per-stage referral: which images a pathologist must look at, chosen for a stated target.

A single "refer" flag at a fixed 0.7 sent every image of a weak model to review ("subtype
uncertain"), which tells the pathologist nothing. Each stage now has its own rule and threshold:

- stage 1 is referred when the calibrated p(chosen class) is below `stage1`, the threshold that
  leaves the LARGEST share of images unreferred while the unreferred images' stage-1 accuracy on
  the selection data is >= STAGE1_TARGET (0.97);
- the subtype is referred when the calibrated p(subtype | class) is below `subtype`, chosen the
  same way among the images whose stage 1 is not referred, for SUBTYPE_TARGET.

The selection data are validation patients, or, with few of them, the pooled out-of-fold
predictions of a patient-wise cross-validation (core.training.field_run). The risk-coverage
curve (accuracy of the unreferred vs the share unreferred) is kept for the Model performance page.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.data.labels import CLASSES, SUBTYPES

STAGE1_TARGET = 0.97
SUBTYPE_TARGET = 0.80
MIN_KEPT = 10  # below this many unreferred images an accuracy says nothing: refer everything
# "Refer everything": a threshold above every probability, since an image is kept when p >= threshold and a
# float32 softmax saturates at exactly 1.0 (a threshold of 1.0 kept those images, unreferred and uncounted).
# Clear of 1 even in float16 (numpy compares a Python float with a float32/16 array in the array's type).
REFER_ALL = 1.001


def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    """Risk-coverage: for every threshold (each image's confidence, most confident first), the
    share of images kept (confidence >= threshold) and their accuracy."""
    order = np.argsort(-np.asarray(confidence, float), kind="stable")
    conf, hit = np.asarray(confidence, float)[order], np.asarray(correct, float)[order]
    kept = np.arange(1, len(conf) + 1)
    return pd.DataFrame({"threshold": conf, "coverage": kept / max(len(conf), 1),
                         "accuracy": np.cumsum(hit) / kept, "kept": kept})


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> dict:
    """The lowest confidence threshold whose kept images reach `target` accuracy (ties: every image
    at that confidence kept). Nothing reaches it: REFER_ALL (refer everything, p = 1.0 too), said so."""
    curve = coverage_curve(confidence, correct)
    # Only cut between distinct confidences: a threshold keeps all images at or above it.
    last_of_value = ~curve["threshold"].duplicated(keep="last").to_numpy()
    ok = curve[last_of_value & (curve["accuracy"].to_numpy() >= target) & (curve["kept"].to_numpy() >= MIN_KEPT)]
    points = curve[last_of_value][["threshold", "coverage", "accuracy"]]
    step = max(1, len(points) // 200)
    block = {"target_accuracy": target, "images": int(len(curve)),
             "curve": points.iloc[::step].round(4).to_dict(orient="list")}
    if ok.empty:
        return {**block, "threshold": REFER_ALL, "coverage": 0.0, "accuracy": None,
                "note": f"no threshold keeps {MIN_KEPT}+ images at accuracy >= {target}: every image is referred"}
    best = ok.iloc[-1]
    return {**block, "threshold": float(best["threshold"]), "coverage": float(best["coverage"]),
            "accuracy": float(best["accuracy"])}


def stage_confidences(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(p(chosen class), stage 1 right, p(chosen subtype | class), subtype right) per image of a
    predictions table (core.evaluation.evaluate.predictions_frame columns, calibrated)."""
    stage1_conf = table[[f"p_{c}" for c in CLASSES]].to_numpy().max(axis=1)
    within = np.array([table[f"w_{s}"].to_numpy() for s in SUBTYPES]).T
    subtype_conf = within[np.arange(len(table)), [SUBTYPES.index(s) for s in table["pred_subtype"]]]
    return (stage1_conf, (table["pred_label"] == table["label"]).to_numpy(), subtype_conf,
            (table["pred_subtype"] == table["subtype"]).to_numpy())


def referral_thresholds(table: pd.DataFrame, selected_on: str) -> dict:
    """Both stages' thresholds from a predictions table (core.evaluation.evaluate.predictions_frame
    columns, calibrated): {"stage1": {...}, "subtype": {...}, "selected_on": ...}."""
    stage1_conf, stage1_ok, subtype_conf, subtype_ok = stage_confidences(table)
    stage1 = choose_threshold(stage1_conf, stage1_ok, STAGE1_TARGET)
    kept = stage1_conf >= stage1["threshold"]
    subtype = choose_threshold(subtype_conf[kept], subtype_ok[kept], SUBTYPE_TARGET)
    subtype["of"] = "images whose stage 1 is not referred"
    return {"stage1": stage1, "subtype": subtype, "selected_on": selected_on,
            "rule": (f"stage 1 referred when calibrated p(class) < its threshold (largest unreferred share at "
                     f"stage-1 accuracy >= {STAGE1_TARGET}, at least {MIN_KEPT} images unreferred); subtype referred "
                     f"when p(subtype | class) < its threshold (accuracy >= {SUBTYPE_TARGET} among images not "
                     "referred for stage 1)")}


def referral_figures(table: pd.DataFrame, thresholds: dict) -> dict:
    """What the thresholds do on a predictions table: shares referred and accuracy of the rest."""
    conf1, correct1, conf2, correct2 = stage_confidences(table)
    keep1 = conf1 >= thresholds["stage1"]["threshold"]
    keep2 = keep1 & (conf2 >= thresholds["subtype"]["threshold"])
    return {"images": int(len(table)), "stage1_referred_share": float(1 - keep1.mean()) if len(table) else None,
            "stage1_accuracy_unreferred": float(correct1[keep1].mean()) if keep1.any() else None,
            "subtype_referred_share": float(1 - keep2.mean()) if len(table) else None,
            "subtype_accuracy_unreferred": float(correct2[keep2].mean()) if keep2.any() else None}
