"""How well calibrated a model's probabilities are, before and after its temperatures (core.model.calibration):
ECE, Brier and reliability bins per head, the card's `calibration.measured` block. Written by
`calibrate` (a run's val and test splits) and by the field recipe (its splits, or the pooled
out-of-fold predictions of a cross-validation); read by the Model performance page."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.data.labels import CLASSES, FLAT_OUTPUT, HIERARCHICAL, STAGE1_OUTPUT, STAGE2_OUTPUTS, SUBTYPES, subtype_index
from core.evaluation.metrics import scope
from core.model.calibration import ECE_BINS, apply_temperature, brier, reliability


def head_targets(rows: pd.DataFrame, hierarchy: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """head -> (which rows it is judged on, their integer targets)."""
    if hierarchy != HIERARCHICAL:
        return {FLAT_OUTPUT: (np.ones(len(rows), bool), np.array([SUBTYPES.index(s) for s in rows["subtype"]]))}
    labels = rows["label"].to_numpy()
    heads = {STAGE1_OUTPUT: (np.ones(len(rows), bool), np.array([CLASSES.index(c) for c in labels]))}
    for label, head in STAGE2_OUTPUTS.items():
        own = labels == label
        heads[head] = (own, np.array([subtype_index(s) for s in rows["subtype"].to_numpy()[own]], dtype=np.int64))
    return heads


def measure_heads(outputs: dict, targets: dict, temperatures: dict) -> dict:
    """ECE, Brier and reliability bins of every head, raw and temperature-scaled."""
    measured = {}
    for head, (own, truth) in targets.items():
        if not own.any():
            continue
        raw = outputs[head][own]
        scaled = apply_temperature(raw, temperatures.get(head, 1.0))
        before, after = reliability(raw, truth), reliability(scaled, truth)
        measured[head] = {"images": int(own.sum()), "ece_before": before["ece"], "ece_after": after["ece"],
                          "brier_before": brier(raw, truth), "brier_after": brier(scaled, truth),
                          "accuracy": float(np.mean(raw.argmax(1) == truth)),
                          "reliability_before": before["bins"], "reliability_after": after["bins"]}
    return measured


IN_SAMPLE = ("in-sample: measured on the same predictions the temperatures were fitted on, so the ECE after is "
             "optimistic (a temperature moves no argmax: accuracy, F1 and AUC are unaffected)")


def measured_block(parts: dict, temperatures: dict, hierarchy: str = HIERARCHICAL, fitted_on: str = "val") -> dict:
    """The calibration block's `measured` figures (ECE, Brier, reliability before and after, per head) of
    each split's rows and raw head outputs {split: (rows, outputs)}; the split the temperatures were fitted
    on is marked in-sample (the field recipe's pooled out-of-fold predictions are both)."""
    measured = {split: {"data": scope(rows, split), "heads": measure_heads(outputs, head_targets(rows, hierarchy),
                                                                      temperatures), "in_sample": split == fitted_on}
                for split, (rows, outputs) in parts.items()}
    return {"ece_bins": ECE_BINS, "measured": measured,
            **({"measured_note": IN_SAMPLE} if fitted_on in parts else {})}
