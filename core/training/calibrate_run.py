"""Fit each head's temperature on a run's patient-wise validation split and record how well calibrated
the model is before and after, on validation and on test (core.model.calibration).

    python -m core calibrate RUN [--data DIR]     (training does this itself before evaluating)

Stage 1 is calibrated on every validation image; each stage-2 head on the validation images of
its own (true) class, the only ones it was trained on; a flat model's single head on all. The
temperatures go into the model card, where every Predictor finds and applies them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.data.labels import CLASSES, FLAT_OUTPUT, HIERARCHICAL, STAGE1_OUTPUT, STAGE2_OUTPUTS, SUBTYPES, subtype_index
from core.errors import UserInputError
from core.evaluation.evaluate import raw_outputs, read_split
from core.evaluation.metrics import scope
from core.model.calibration import ECE_BINS, apply_temperature, brier, fit_temperature, reliability
from core.model.folders import update_card
from core.model.loading import load_predictor


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


def _measure(outputs: dict, targets: dict, temperatures: dict) -> dict:
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
    measured = {split: {"data": scope(rows, split), "heads": _measure(outputs, head_targets(rows, hierarchy),
                                                                      temperatures), "in_sample": split == fitted_on}
                for split, (rows, outputs) in parts.items()}
    return {"ece_bins": ECE_BINS, "measured": measured,
            **({"measured_note": IN_SAMPLE} if fitted_on in parts else {})}


def calibrate_run(run_dir, data_dir=None, batch_size: int = 32) -> dict:
    """Fit, measure and store the temperatures of RUN/model; returns the card's calibration block."""
    run_dir = Path(run_dir)
    table, _ = read_split(run_dir, data_dir)
    predictor = load_predictor(run_dir / "model", calibrated=False)
    parts = {}
    for split in ("val", "test"):
        rows = table[table["split"] == split]
        outputs, kept, _ = raw_outputs(predictor, rows, batch_size)
        if kept:
            rows = rows.iloc[kept].reset_index(drop=True)
            parts[split] = (rows, outputs, head_targets(rows, predictor.hierarchy))
    if "val" not in parts:
        raise UserInputError(f"{run_dir} has no readable validation images to fit temperatures on")
    rows, outputs, targets = parts["val"]
    temperatures = {head: fit_temperature(outputs[head][own], truth) for head, (own, truth) in targets.items()
                    if own.any()}
    block = {"method": "temperature scaling per head (Guo et al. 2017), fitted by NLL on the validation split",
             "temperatures": temperatures, "fitted_on": scope(rows, "val"), "ece_bins": ECE_BINS,
             "measured": {split: {"data": scope(part[0], split), "heads": _measure(part[1], part[2], temperatures)}
                          for split, part in parts.items()}}
    update_card(run_dir / "model", calibration=block)
    return block
