"""Fit each head's temperature on a run's patient-wise validation split and record how well calibrated
the model is before and after, on validation and on test (core.model.calibration).

    python -m core calibrate RUN [--data DIR]     (training does this itself before evaluating)

Stage 1 is calibrated on every validation image; each stage-2 head on the validation images of
its own (true) class, the only ones it was trained on; a flat model's single head on all. The
temperatures go into the model card, where every Predictor finds and applies them.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import UserInputError
from core.evaluation.calibration_effect import head_targets, measure_heads
from core.evaluation.evaluate import raw_outputs, read_split
from core.evaluation.metrics import scope
from core.model.calibration import ECE_BINS, fit_temperature
from core.model.folders import update_card
from core.model.loading import load_predictor


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
             "measured": {split: {"data": scope(part[0], split), "heads": measure_heads(part[1], part[2], temperatures)}
                          for split, part in parts.items()}}
    update_card(run_dir / "model", calibration=block)
    return block
