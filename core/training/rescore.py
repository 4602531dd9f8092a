"""Re-scoring a saved fields cross-validation: what one change does on the SAME fold models.

A change that needs no retraining (a head refit, another input source) is measured on the fold
models a run already saved (RUN/fold-k/model, as core.training.field_run writes them), each on
the held-out patients of its own fold, pooled over all folds: the comparison is then about the
change alone, not about a new draw of weights. Both return their figures and write nothing;
README and models/default/candidates.md quote them with the command.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.splits import PATIENT, patient_kfold
from core.evaluation.evaluate import score
from core.model.folders import load_model_folder, read_card
from core.training.config import TrainConfig
from core.training.field_fit import HEADS, predict_views
from core.training.field_run import field_table, frame, load_field_data, scored_rows, view_spec
from core.training.head_refit import refit_subtype_heads


def source_shift_cv(run_dir, data, full_size: tuple[int, int] = (700, 460)) -> dict:
    """A fields cross-validation's fold models (RUN/fold-k/model, as _cross_validate_fields saves them), each on its
    held-out fields of the full-size source, unshifted and as squashed copies: shift_report per shift,
    with the stage-1 accuracy of each version, pooled over all folds' images."""
    from core.data.images import load_image
    from core.evaluation.robustness import SOURCE_SHIFTS, shift_report
    from core.model.loading import load_predictor

    run_dir = Path(run_dir)
    settings = read_card(run_dir / "fold-0" / "model")["training"]["settings"]
    table = field_table(data, settings.get("magnification", "all"))
    per_fold, truth = [], []
    for k, assigned in enumerate(patient_kfold(table, settings["folds"], settings["seed"])):
        held = table[(assigned["split"].to_numpy() == "test")]
        images = [load_image(Path(p).read_bytes(), name=str(p)).rgb for p in held["path"]]
        keep = [i for i, rgb in enumerate(images) if rgb.shape[1::-1] == full_size]
        if not keep:
            continue
        predictor = load_predictor(run_dir / f"fold-{k}" / "model")
        images = [images[i] for i in keep]
        labels = held["label"].iloc[keep].tolist()
        per_fold.append((len(images), shift_report(predictor, images, SOURCE_SHIFTS, labels)))
        truth += labels
    total = sum(n for n, _ in per_fold)
    pooled = {section: {key: float(sum(n * r[section][key] for n, r in per_fold) / total)
                        for key in per_fold[0][1][section]} for section in per_fold[0][1]}
    return {"images": total, "malignant": int(sum(y == "malignant" for y in truth)), "folds": len(per_fold),
            "full_size": list(full_size), **pooled}


def saved_cv(run_dir, data) -> tuple[TrainConfig, pd.DataFrame, np.ndarray]:
    """(the run's TrainConfig, its field table, its fields) of a saved fields cross-validation, from
    its first fold model's card: what every re-scoring of RUN/fold-k/model starts from (the
    experiments' probes too); the folds are patient_kfold(table, config.folds, config.seed)."""
    settings = read_card(Path(run_dir) / "fold-0" / "model")["training"]["settings"]
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(data=str(data), out=str(run_dir), **{k: v for k, v in settings.items() if k in known})
    table, fields = load_field_data(config)
    return config, table, fields


def saved_folds(run_dir, config: TrainConfig, table: pd.DataFrame):
    """Yields (held-out rows, training rows, fold model) of each fold of a saved cross-validation, in
    fold order: positions into `table` (saved_cv's), RUN/fold-k/model loaded."""
    for k, assigned in enumerate(patient_kfold(table, config.folds, config.seed)):
        split = assigned["split"].to_numpy()
        yield np.flatnonzero(split == "test"), np.flatnonzero(split != "test"), \
            load_model_folder(Path(run_dir) / f"fold-{k}" / "model")[0]


def pooled_figures(rows: pd.DataFrame, parts: list[dict]) -> dict:
    """core.evaluation.evaluate.score of the folds' head outputs ({head: (n_k, k)} per fold, in the order of
    `rows`) pooled, uncalibrated: a temperature moves neither a head's argmax nor the stage-1 AUC."""
    raw = {name: np.concatenate([part[name] for part in parts]) for name in HEADS}
    return score(frame(rows, raw, {name: 1.0 for name in HEADS}), None, "test")


def refit_cv(run_dir, data) -> dict:
    """What --refit-subtypes adds to a fields cross-validation trained without it, on the SAME fold
    models (RUN/fold-k/model): each fold's subtype heads refitted on its training patients' fields
    (core.training.head_refit), its held-out fields scored before and after, pooled over all folds
    (uncalibrated: a temperature does not move a head's argmax)."""
    run_dir = Path(run_dir)
    config, table, fields = saved_cv(run_dir, data)
    spec, magnifications = view_spec(config), table["magnification"]
    raws, order = {"before": [], "after": []}, []
    for held, seen, classifier in saved_folds(run_dir, config, table):
        raws["before"].append(predict_views(classifier, fields[held], spec, magnifications=magnifications.iloc[held]))
        refit_subtype_heads(classifier, fields[seen], table["subtype"].iloc[seen], spec, magnifications.iloc[seen])
        raws["after"].append(predict_views(classifier, fields[held], spec, magnifications=magnifications.iloc[held]))
        order.append(held)
    rows = scored_rows(table.iloc[np.concatenate(order)], "test", f"{PATIENT} {config.folds}-fold cross-validation, pooled")
    result = {"images": len(rows), "patients": int(rows["case"].nunique())}
    for when, parts in raws.items():
        figures = pooled_figures(rows, parts)
        result[when] = {key: figures[key] for key in ("stage1_balanced_accuracy", "subtype_accuracy", "subtype_macro_f1")}
        result[when]["subtype_macro_f1_95ci"] = [figures["intervals"]["image"]["subtype_macro_f1"][b] for b in ("low", "high")]
    return result
