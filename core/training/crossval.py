"""Patient-wise k-fold cross-validation: every fold in one command, then mean and spread.

    python -m core train --data DIR --out runs/cv --folds 5 [other options]   (no --fold)

With a test set of a handful of patients one split's figure hangs on which patients it drew;
k folds test every case exactly once (core.data.splits.patient_kfold). Each fold is an ordinary
run folder OUT/fold-i (model, metrics, baselines); OUT/cv.json and OUT/cv.md hold each fold's
headline figures and their mean +- sample standard deviation, the model next to its baselines;
OUT/ensemble is the k fold models as one ensemble model (core.model.ensemble).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from core.errors import UserInputError
from core.evaluation.intervals import HEADLINE, fold_figures, fold_summary
from core.jsonfile import read_json, write_json_atomic
from core.model.folders import save_ensemble
from core.paths import claim_run
from core.training.config import TrainConfig, checked
from core.training.fit import train


def cross_validate(config: TrainConfig | dict) -> dict:
    """Train and evaluate every fold of a TrainConfig with --folds k (and no --fold), each by
    core.training.fit.train; returns the summary."""
    config = checked(config)
    if not config.all_folds:
        raise UserInputError("A cross-validation needs --folds k (at least 2) and no --fold")
    out = Path(config.out)
    with claim_run(out, ("cv.json",), holds="a cross-validation"):  # this process's until the folds are done
        return _cross_validate(config, out)


def _cross_validate(config: TrainConfig, out: Path) -> dict:
    runs = []
    for fold in range(config.folds):
        result = train(dataclasses.replace(config, fold=fold, out=str(out / f"fold-{fold}")))
        runs.append({"fold": fold, "run": str(out / f"fold-{fold}"), "epochs": result["epochs_run"]})
    per_fold = {"model": [], "baselines": {}}
    for run in runs:
        metrics = read_json(Path(run["run"]) / "metrics.json")
        per_fold["model"].append({"fold": run["fold"], **fold_figures(metrics)})
        for name, baseline in (metrics.get("baselines") or {}).items():
            per_fold["baselines"].setdefault(name, []).append({"fold": run["fold"], **fold_figures(baseline)})
    summary = {"folds": config.folds, "protocol": f"patient-wise {config.folds}-fold cross-validation",
               "backbone": config.backbone, "input_size": config.input_size, "per_fold": per_fold,
               "mean_std": {"model": fold_summary(per_fold["model"]),
                            **{name: fold_summary(rows) for name, rows in per_fold["baselines"].items()}}}
    write_json_atomic(out / "cv.json", summary)
    (out / "cv.md").write_text(format_cv(summary) + "\n", encoding="utf-8")
    # The fold models together: an ensemble whose accuracy estimate is this cross-validation.
    ensemble = save_ensemble([Path(run["run"]) / "model" for run in runs], out / "ensemble", name=f"{out.name}-ensemble",
                             evaluation=f"{summary['protocol']}: each member tested on its own held-out fold",
                             cross_validation=summary["mean_std"]["model"])
    return {"status": "completed", "cv": summary, "model_dir": str(ensemble), "epochs_run": sum(r["epochs"] for r in runs)}


def format_cv(summary: dict) -> str:
    """Markdown: one row per metric, the model and each baseline as mean +- std over the folds."""
    columns = list(summary["mean_std"])
    lines = [f"{summary['protocol']}, {summary['backbone']} at {summary['input_size']} px; every case is a "
             "test case in exactly one fold. Mean +- sample standard deviation over the folds.", "",
             "| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for level in ("image", "patient"):
        for name in HEADLINE:
            key = f"{level}_{name}"
            cells = [f"{summary['mean_std'][c][key]['mean']:.3f} +- {summary['mean_std'][c][key]['std']:.3f}"
                     if key in summary["mean_std"][c] else "n/a" for c in columns]
            lines.append(f"| {level}-level {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
