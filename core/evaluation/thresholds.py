"""Every threshold is chosen on the validation split, never on the split it is then applied to.

- the image-level recall-favouring p(malignant) threshold (reported as an operating point);
- the case-level p(malignant) threshold of the case call (stored in the model card);
- the uncertainty threshold: the spread of p(malignant) across views or members above which a
  prediction is referred (stored in the model card).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.evaluation.metrics import balanced_accuracy, patient_table, scope


def at_threshold(table: pd.DataFrame, threshold: float, data: dict) -> dict:
    """Call malignant when p(malignant) >= threshold: sensitivity, specificity, precision."""
    called = table["p_malignant"].to_numpy() >= threshold
    malignant = (table["label"] == "malignant").to_numpy()
    def share(numerator, denominator):
        return float(numerator / denominator) if denominator else None
    return {"data": data, "threshold": float(threshold),
            "malignant_recall": share((called & malignant).sum(), malignant.sum()),
            "benign_recall": share((~called & ~malignant).sum(), (~malignant).sum()),
            "malignant_precision": share((called & malignant).sum(), called.sum()),
            "called_malignant": int(called.sum())}


def recall_favouring_threshold(scores: np.ndarray, target: float) -> float | None:
    """The LARGEST threshold whose malignant recall is >= target (scores of malignant images)."""
    if len(scores) == 0:
        return None
    needed = math.ceil(target * len(scores) - 1e-9)
    return float(np.sort(scores)[::-1][max(needed, 1) - 1])


def threshold_blocks(table, val_table, split, threshold, target_recall) -> dict:
    blocks = {"decision": at_threshold(table, threshold, scope(table, split))}
    if val_table is None or not (val_table["label"] == "malignant").any():
        blocks["recall_favouring"] = {"target_recall": target_recall, "threshold": None,
                                      "reason": "no validation images of malignant tumours to choose it on"}
        return blocks
    chosen = recall_favouring_threshold(
        val_table.loc[val_table["label"] == "malignant", "p_malignant"].to_numpy(), target_recall)
    blocks["recall_favouring"] = {
        "target_recall": target_recall, "threshold": chosen,
        "selection": "largest threshold with malignant recall >= target on the validation split",
        "selected_on": at_threshold(val_table, chosen, scope(val_table, "val")),
        "on_split": at_threshold(table, chosen, scope(table, split)),
    }
    return blocks


def case_threshold(val_table: pd.DataFrame | None) -> dict:
    """The case-level p(malignant) threshold, chosen on validation PATIENTS: the one with the best
    balanced accuracy over the validation cases (Youden's J), ties broken towards 0.5, candidates
    being the midpoints between the cases' mean p(malignant). A recall target alone was tried and
    rejected: with a few validation cases its threshold is set by the single least confident
    malignant case and turned every benign case malignant. 0.5 when validation lacks a class."""
    cases = patient_table(val_table) if val_table is not None and len(val_table) else None
    if cases is None or cases["label"].nunique() < 2:
        return {"threshold": 0.5, "selected_on": None,
                "reason": "no validation cases of both classes to choose it on: the default 0.5"}
    scores = np.sort(cases["p_malignant"].to_numpy())
    candidates = np.unique(np.concatenate([[0.5], (scores[1:] + scores[:-1]) / 2.0]))
    malignant = (cases["label"] == "malignant").to_numpy()

    def balanced(threshold):
        return balanced_accuracy(malignant, cases["p_malignant"].to_numpy() >= threshold)

    best = max(candidates, key=lambda c: (round(balanced(c), 12), -abs(c - 0.5)))
    if balanced(best) <= 0.5:  # every threshold is chance or worse: a chosen one would only fit the noise
        return {"threshold": 0.5, "selected_on": scope(cases, "val", level="patient"),
                "balanced_accuracy_on_validation": float(balanced(0.5)),
                "reason": "no threshold beats chance on the validation cases: the default 0.5"}
    return {"threshold": float(best), "selected_on": scope(cases, "val", level="patient"),
            "balanced_accuracy_on_validation": float(balanced(best)),
            "rule": "best balanced accuracy over the validation cases, ties towards 0.5"}


# The share of validation images the uncertainty flag refers: stated, so a reviewer knows what to
# expect. Youden's J was measured and rejected: on the bundled model it chose a spread of 0.003 that
# flagged 144 of 188 test images, i.e. it referred nearly everything a second time.
UNCERTAIN_SHARE = 0.10


def uncertainty_threshold(val_table: pd.DataFrame | None, source: str, share: float = UNCERTAIN_SHARE) -> dict | None:
    """The p(malignant) spread above which a prediction is referred: the (1 - share) quantile of the
    validation images' spread, so it flags the `share` most uncertain validation images. The error
    rates of the flagged and the rest on validation say whether the flag finds errors."""
    if val_table is None or "uncertainty" not in val_table or not len(val_table):
        return None
    spread = val_table["uncertainty"].to_numpy()
    chosen = float(np.quantile(spread, 1.0 - share))
    flagged = flagged_block(val_table, chosen, "val")
    return {"p_malignant_spread": chosen, "source": source,
            "rule": f"flags the {share:.0%} most uncertain validation images (the {1 - share:.0%} quantile of their spread)",
            "flagged_share_on_validation": flagged["flagged"] / len(val_table),
            "stage1_error_rate_flagged": flagged["stage1_error_rate_flagged"],
            "stage1_error_rate_not_flagged": flagged["stage1_error_rate_not_flagged"],
            "selected_on": scope(val_table, "val"),
            "validation_errors": int((val_table["label"] != val_table["pred_label"]).sum())}


def flagged_block(table: pd.DataFrame, threshold: float, split: str) -> dict:
    """How the uncertainty flag splits a split's images: how many flagged, and the error rates."""
    flagged = table["uncertainty"].to_numpy() > threshold
    wrong = (table["label"] != table["pred_label"]).to_numpy()

    def rate(mask):
        return float(wrong[mask].mean()) if mask.any() else None

    return {"data": scope(table, split), "flagged": int(flagged.sum()), "threshold": threshold,
            "stage1_error_rate_flagged": rate(flagged), "stage1_error_rate_not_flagged": rate(~flagged)}
