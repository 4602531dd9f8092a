"""Evaluate a training run on its held-out split: the model, its baselines and, for an ensemble, its members.

Every metric block says which split, which split protocol (patient-wise or leaky image-level)
and how many images and cases it was computed on, because a BreakHis number without its protocol
is not comparable to anything. Results go to RUN/metrics.json, into the model card (so the app
shows them next to the model) and to RUN/report.html (plotly, self-contained, works offline);
only the held-out test split's: another split's go to RUN/metrics_<split>.json and report_<split>.html.

    python -m core evaluate RUN [--data DIR] [--split test] [--threshold 0.5] [--target-recall 0.95]
"""

from __future__ import annotations

import datetime
import html
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.data.labels import CLASS_OF_SUBTYPE, CLASSES, SUBTYPES, SUBTYPES_BY_CLASS
from core.data.selection import fingerprint, resolve_paths
from core.errors import UserInputError
from core.evaluation.baselines import BASELINES
from core.evaluation.evidence import evidence_statement
from core.evaluation.held_out import HELD_OUT, none_found, outputs_of, partial_refusal, read_rows
from core.evaluation.intervals import headline_intervals, patient_intervals, point_metrics
from core.evaluation.metrics import (
    PATIENT_NOTE,
    PATIENT_UNIT,
    SUBTYPE_UNIT,
    columns_of,
    magnification_blocks,
    patient_blocks,
    patient_table,
    scope,
    stage1_block,
    stage2_blocks,
    subtype8_block,
)
from core.evaluation.thresholds import case_threshold, flagged_block, threshold_blocks, uncertainty_threshold
from core.jsonfile import read_json, write_json_atomic
from core.model.calibration import brier, reliability
from core.model.decisions import image_calls
from core.model.folders import read_card, update_card
from core.paths import portable

if TYPE_CHECKING:  # the Predictor needs TensorFlow; scoring does not (core.training.field_fit under JAX)
    from core.model.predict import Predictor

REQUIRED_COLUMNS = ("path", "label", "subtype", "magnification", "case", "split")


# ---------------------------------------------------------------- data

def read_split(run_dir: Path, data_dir: str | os.PathLike | None = None) -> tuple[pd.DataFrame, list[str]]:
    """RUN/split.csv's images that are found, with usable paths; returns (table, missing paths) (see listed_split)."""
    table = listed_split(run_dir, data_dir)
    found = table.pop("found")
    return table[found].reset_index(drop=True), table.loc[~found, "path"].tolist()


def listed_split(run_dir: Path, data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every row of RUN/split.csv with usable paths and a "found" column (the file is there).

    split.csv holds paths relative to the data folder the run was trained on (RUN/config.json).
    With `data_dir`, images are found again by file name (BreakHis names are unique), so a run
    evaluated after the dataset moved, or on another machine, still works.
    """
    csv = run_dir / "split.csv"
    if not csv.is_file() and (run_dir / "cv.json").is_file():
        raise UserInputError(f"{run_dir} is a cross-validation: its figures are in cv.json (every patient tested "
                             "by a fold model that never saw it), and it has no held-out split of its own to evaluate "
                             "or recalibrate on.")
    if not csv.is_file():
        raise UserInputError(f"{csv} not found: is {run_dir} a training run folder?")
    table = pd.read_csv(csv)
    missing_columns = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing_columns:
        raise UserInputError(f"{csv} lacks the column(s) {', '.join(missing_columns)}")
    if "protocol" not in table.columns:
        table["protocol"] = "unknown protocol"
    if data_dir is not None:
        from core.data.breakhis import index_folder

        by_name = {os.path.basename(p): p for p in index_folder(data_dir).images["path"]}
        table["path"] = [by_name.get(os.path.basename(p), p) for p in table["path"]]
    elif (run_dir / "config.json").is_file():
        table = resolve_paths(table, read_json(run_dir / "config.json").get("data", "."))
    return table.assign(found=table["path"].map(os.path.isfile))


def predictions_frame(rows: pd.DataFrame, p_class: np.ndarray, within: np.ndarray) -> pd.DataFrame:
    """`rows` plus pred_label, pred_subtype, p_<class>, p_<subtype> (joint) and w_<subtype>
    (p(subtype | its class)) columns, from p(class) (N, 2) and p(subtype | class) (N, 8, SUBTYPES
    order). The one place that turns probabilities into image-level calls, for models and baselines. A probability
    that is not a number (a diverged training) is refused here: downstream an AUC ranked it highest and a referral
    threshold could become NaN."""
    bad = ~np.isfinite(np.asarray(p_class, float)).all(axis=1) | ~np.isfinite(np.asarray(within, float)).all(axis=1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(bad)} images have probabilities that are not numbers (NaN or "
                         "infinite): the model's outputs are unusable (a diverged training?); nothing was scored.")
    frame = rows.reset_index(drop=True).copy()
    labels = image_calls(p_class)
    own = {c: [SUBTYPES.index(s) for s in SUBTYPES_BY_CLASS[c]] for c in CLASSES}
    frame["pred_label"] = labels
    frame["pred_subtype"] = [SUBTYPES[own[c][int(np.argmax(within[i, own[c]]))]] for i, c in enumerate(labels)]
    for j, c in enumerate(CLASSES):
        frame[f"p_{c}"] = p_class[:, j]
    for k, s in enumerate(SUBTYPES):
        frame[f"p_{s}"] = p_class[:, CLASSES.index(CLASS_OF_SUBTYPE[s])] * within[:, k]
        frame[f"w_{s}"] = within[:, k]
    return frame


def raw_outputs(predictor: Predictor, rows: pd.DataFrame, batch_size: int = 32,
                tta: bool = False) -> tuple[dict, list[int], list[str]]:
    """The model's raw head outputs for every readable row: ({head: (n, k)}, positions kept, unreadable).
    Each row's magnification (where the table has one) sizes a field model's physical views."""
    from core.data.images import ImageError, load_image

    chunks, kept, unreadable = [], [], []
    stated = rows["magnification"] if "magnification" in rows else pd.Series([None] * len(rows), index=rows.index)
    for start in range(0, len(rows), batch_size):
        images, magnifications = [], []
        part = slice(start, start + batch_size)
        for position, (path, magnification) in enumerate(zip(rows["path"].iloc[part], stated.iloc[part]), start=start):
            try:
                images.append(load_image(path, check_histology=False).rgb)
                magnifications.append(magnification)
                kept.append(position)
            except (ImageError, OSError):
                unreadable.append(path)
        if images:
            chunks.append(predictor.probabilities(images, tta, magnifications=magnifications))
    outputs = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]} if chunks else {}
    return outputs, kept, unreadable


VIEWS_MOST = 400  # images per split that the 8-view (TTA) uncertainty is measured on


def for_views(rows: pd.DataFrame, most: int = VIEWS_MOST) -> pd.DataFrame:
    """At most `most` images of a split, drawn at random (seed 0), for the 8-view uncertainty.

    Eight forward passes per image over a full BreakHis validation and test split (3,200
    images) took most of a CPU fast-mode run; a threshold on a spread and a flagged share are
    estimated well from a few hundred images, and the block records how many were used."""
    return rows if len(rows) <= most else rows.sample(n=most, random_state=0)


def predict_table(predictor: Predictor, rows: pd.DataFrame, batch_size: int = 32,
                  tta: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Predict every row with the predictor's calibration (see `predictions_frame`); -> (table, unreadable).
    With views (an ensemble, or tta), an "uncertainty" column holds each image's p(malignant) spread."""
    outputs, kept, unreadable = raw_outputs(predictor, rows, batch_size, tta)
    if not kept:
        return rows.iloc[:0].assign(pred_label=[], pred_subtype=[]), unreadable
    predictions = predictor.interpret(outputs)
    p_class = np.array([[p.stage1[c] for c in CLASSES] for p in predictions])
    within = np.array([[{**p.stage2, **p.other_stage2}[s] for s in SUBTYPES] for p in predictions])
    frame = predictions_frame(rows.iloc[kept], p_class, within)
    if predictions[0].uncertainty is not None:
        frame["uncertainty"] = [p.uncertainty["p_malignant_spread"] for p in predictions]
    return frame, unreadable


def score(evaluated: pd.DataFrame, val_table: pd.DataFrame | None, split: str, threshold: float = 0.5,
          target_recall: float = 0.95, cases_rule: dict | None = None) -> dict:
    """Every metric block for one set of predictions on `split` (a model's or a baseline's), with
    bootstrap intervals over cases; thresholds are chosen on `val_table`, never on `split`.
    cases_rule: the case threshold to apply (default: chosen on `val_table`)."""
    data = scope(evaluated, split)
    stage1, subtype8 = stage1_block(evaluated, data), subtype8_block(evaluated, data)
    stage1_p = evaluated[columns_of("p", CLASSES)].to_numpy()
    stage1_truth = evaluated["label"].map(CLASSES.index).to_numpy()
    cases_rule = cases_rule or case_threshold(val_table)
    patient = patient_blocks(evaluated, split, cases_rule["threshold"])
    thresholds = threshold_blocks(evaluated, val_table, split, threshold, target_recall)
    results = {
        "split": split, "protocol": data["protocol"], "images": data["images"], "cases": data["cases"],
        "stage1_accuracy": stage1["accuracy"], "stage1_balanced_accuracy": stage1["balanced_accuracy"],
        "stage1_auc": stage1["roc_auc"]["per_class"].get("malignant"),
        "subtype_accuracy": subtype8["accuracy"], "subtype_macro_f1": subtype8["macro_f1"],
        "stage1_ece": reliability(stage1_p, stage1_truth)["ece"],
        # A proper score: an ensemble that averages its members' probabilities is never worse on it than
        # their mean (convexity), which is what tests/test_ensemble.py checks exactly.
        "stage1_brier": brier(stage1_p, stage1_truth),
        # One meaning per name: malignant_recall is the most probable class's (as in "intervals" and "stage1");
        # the recall where p(malignant) >= the decision threshold is stored under its own name, with it.
        "malignant_recall": stage1["per_class"]["malignant"]["recall"],
        "malignant_recall_at_threshold": {"threshold": float(threshold),
                                          "value": thresholds["decision"]["malignant_recall"]},
        "patient_stage1_accuracy": patient["stage1"]["accuracy"], "data": data,
        # Which images exactly: runs are only compared on the same held-out images (core.app.comparison).
        "test_set": {"fingerprint": fingerprint(evaluated), "cases": sorted(map(str, evaluated["case"].unique()))},
        "stage1": stage1, "stage2": stage2_blocks(evaluated, split), "subtype8": subtype8,
        "patient": patient, "per_magnification": magnification_blocks(evaluated, split),
        "malignant_threshold": thresholds, "case_threshold": cases_rule,
        # n/a figures (a class absent from the split) come back n/a, with the reason, from the interval functions
        "intervals": {"image": headline_intervals(evaluated, "image"),
                      "patient": patient_intervals(*(patient_table(evaluated, cases_rule["threshold"], unit)
                                                     for unit in (PATIENT_UNIT, SUBTYPE_UNIT)))},
    }
    if val_table is not None and len(val_table):
        results["validation"] = {"data": scope(val_table, "val"), **point_metrics(val_table)}
    return results


def baseline_scores(table: pd.DataFrame, split: str, threshold: float, target_recall: float) -> dict:
    """Each baseline (core.evaluation.baselines), fitted on the run's training images and scored on
    the same held-out images, cases and thresholds rule as the model."""
    train = table[(table["split"] == "train") & ~table.get("synthetic", pd.Series(False, index=table.index)).astype(bool)]
    scored = {}
    for name, kind in BASELINES.items():
        baseline = kind().fit(train)

        def predicted(rows):
            p_class, within, kept = baseline.predict(rows)
            return predictions_frame(rows.iloc[kept], p_class, within) if len(kept) else None

        val_rows = table[table["split"] == "val"]
        evaluated = predicted(table[table["split"] == split])
        if evaluated is None:
            continue
        full = score(evaluated, predicted(val_rows) if split != "val" and len(val_rows) else None, split, threshold,
                     target_recall)
        scored[name] = {"name": kind.name, **compact(full)}
    return scored


def compact(full: dict) -> dict:
    """The headline part of `score`'s results (for baselines and ensemble members)."""
    return {k: full[k] for k in ("data", "stage1_accuracy", "stage1_balanced_accuracy", "stage1_auc", "malignant_recall",
                                 "malignant_recall_at_threshold", "subtype_macro_f1", "stage1_ece", "stage1_brier",
                                 "patient_stage1_accuracy", "intervals", "case_threshold")}


# ---------------------------------------------------------------- run

def evaluate_run(run_dir, data_dir=None, split: str = "test", recall_threshold: float | None = None,
                 target_recall: float = 0.95, batch_size: int = 32, write: bool = True,
                 baselines: bool = True, allow_missing: bool = False) -> dict:
    """Evaluate RUN/model on RUN/split.csv's `split`; writes metrics.json, card metrics, report.html
    for the test split, metrics_<split>.json and report_<split>.html for another (see write_outputs).

    recall_threshold: p(malignant) decision threshold reported as the operating point
    (default 0.5); recall-favouring image and case thresholds reaching `target_recall` are chosen
    on "val". baselines: also score the majority and colour/texture baselines on the same cases.
    An image it reads (read_rows) that is missing or unreadable refuses it (partial_refusal); allow_missing
    scores the rest as a "subset", written beside the run's figures (outputs_of), never over them.
    """
    run_dir = Path(run_dir)
    threshold = 0.5 if recall_threshold is None else float(recall_threshold)
    if not 0.0 <= threshold <= 1.0 or not 0.0 < target_recall <= 1.0:
        raise UserInputError("thresholds and target recall must be in [0, 1]")
    listed = listed_split(run_dir, data_dir)
    found = listed.pop("found")
    table, absent = listed[found].reset_index(drop=True), listed[~found & read_rows(listed, split, baselines)]
    missing = listed.loc[~found, "path"].tolist()
    if split not in set(table["split"]):
        raise UserInputError(none_found(run_dir, data_dir, split))
    if len(absent) and not allow_missing:
        raise UserInputError(partial_refusal(run_dir, split, absent, []))
    from core.model.loading import load_predictor

    predictor = load_predictor(run_dir / "model")
    evaluated, unreadable = predict_table(predictor, table[table["split"] == split], batch_size)
    if evaluated.empty:
        raise UserInputError(f"None of the {split!r} images could be read")
    val_table = None
    if split != "val" and (table["split"] == "val").any():
        val_table, unreadable_val = predict_table(predictor, table[table["split"] == "val"], batch_size)
        unreadable += unreadable_val
    if unreadable and not allow_missing:
        raise UserInputError(partial_refusal(run_dir, split, absent, unreadable))
    results = {
        "run": portable(run_dir), "model": predictor.name, "hierarchy": predictor.hierarchy,
        "demo_model": predictor.is_demo, "calibration": predictor.card.get("calibration"),
        "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **score(evaluated, val_table, split, threshold, target_recall, None if val_table is not None else {
            "threshold": predictor.case_threshold, "selected_on": None,
            "reason": f"the model card's case threshold: the {split} split is evaluated, so none is chosen"}),
        "not_evaluated": {"missing": len(missing), "unreadable": len(unreadable),
                          "examples": (missing + unreadable)[:5]},
    }
    if len(absent) or unreadable:
        results["subset"] = {"missing": len(absent), "unreadable": len(unreadable), "statement": (
            f"{results['images']} of the {int((listed['split'] == split).sum())} listed {split} images (evaluate "
            "--allow-missing): a subset, not the run's figures")}
    views = len(predictor.members) > 1  # an ensemble's members are views without TTA
    val_rows, rows = table[table["split"] == "val"], table[table["split"] == split]
    with_views = val_table if views else (predict_table(predictor, for_views(val_rows), batch_size, tta=True)[0]
                                          if val_table is not None else None)
    rule = uncertainty_threshold(with_views, predictor.uncertainty_source)
    if rule:
        rule["fitted_on_images"] = len(with_views)
        tested = evaluated if views else predict_table(predictor, for_views(rows), batch_size, tta=True)[0]
        results["uncertainty"] = {**rule, "needs_tta": not views, "on_split": flagged_block(
            tested, rule["p_malignant_spread"], split)}
    if views:  # every member on the same held-out images and cases as the ensemble
        results["members"] = [{"name": member.name, "backbone": member.backbone, **compact(score(
            predict_table(member, rows, batch_size)[0], predict_table(member, val_rows, batch_size)[0]
            if val_table is not None else None, split, threshold, target_recall))} for member in predictor.members]
    if baselines and (table["split"] == "train").any():
        results["baselines"] = baseline_scores(table, split, threshold, target_recall)
    if write:
        write_outputs(run_dir, results)
    return results


def without_curves(value):
    """The metrics minus ROC curve points (the card keeps numbers, metrics.json keeps curves)."""
    if isinstance(value, dict):
        return {k: without_curves(v) for k, v in value.items() if k != "roc_curves"}
    return value


def trained_on_lines(card: dict) -> list[str]:
    """What the model rests on, for its report (the file most likely to be shared): the LIMITED DATA label,
    the card's evidence statement and its synthetic (GAN) training images, as the app shows them."""
    evidence, training = card.get("evidence") or {}, card.get("training") or {}
    lines = ["LIMITED DATA: few patients, not a diagnosis."] if evidence.get("limited") else []
    lines.append("Trained on: " + (evidence_statement(card) or "not recorded in the model card") + ".")
    synthetic = training.get("synthetic_by_subtype")
    if isinstance(synthetic, dict):
        lines.append(f"{sum(synthetic.values())} synthetic (GAN) training images"
                     + (" (" + ", ".join(f"{s} {n}" for s, n in synthetic.items()) + "), not counted above; "
                        "every figure here is measured on real images" if synthetic else "") + ".")
    return lines


def write_report(results: dict, path: Path, card: dict | None = None) -> None:
    """One self-contained HTML page: plotly embedded once, every figure titled with its data scope, under
    what the model was trained on (trained_on_lines of its `card`)."""
    from core.evaluation.figures import confusion_figure, roc_figure, scope_text  # plotly: only for the report

    figures = [confusion_figure(results["stage1"], "Stage 1 (benign / malignant)"),
               roc_figure(results["stage1"], "Stage 1 ROC"),
               *[confusion_figure(results["stage2"][c], f"Stage 2, {c} head (true {c} images)")
                 for c in CLASSES if c in results["stage2"]],
               confusion_figure(results["subtype8"], "End to end, 8 subtypes"),
               roc_figure(results["subtype8"], "End to end ROC, one vs rest"),
               confusion_figure(results["patient"]["subtype8"], "Patient level, 8 subtypes")]
    parts = [figure.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, figure in enumerate(figures)]
    title = html.escape(f"Evaluation of {results['model']}")
    demo = "<p><b>DEMO model: not validated.</b></p>" if results["demo_model"] else ""
    trained = "".join(f"<p><b>{html.escape(line)}</b></p>" if line.startswith("LIMITED") else
                      f"<p>{html.escape(line)}</p>" for line in trained_on_lines(card or {}))
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
                    f"<h1>{title}</h1>{demo}{trained}<p>{html.escape(scope_text(results['data']))}. {PATIENT_NOTE}.</p>"
                    + "".join(parts) + "</body></html>", encoding="utf-8")


# The card's thresholds that an evaluation chooses (on validation) and so may replace. Every other key
# belongs to another step and is kept: slide_rule (`slide-threshold`), referral (a fields run).
EVALUATED_THRESHOLDS = ("case_malignant", "case_malignant_selection", "uncertainty")


def evaluated_thresholds(results: dict) -> dict:
    """The EVALUATED_THRESHOLDS of `results`; a key missing here (no uncertainty rule) is removed from the card."""
    thresholds = {"case_malignant": results["case_threshold"]["threshold"],
                  "case_malignant_selection": {k: v for k, v in results["case_threshold"].items() if k != "threshold"}}
    if results.get("uncertainty"):
        thresholds["uncertainty"] = {k: v for k, v in results["uncertainty"].items() if k != "on_split"}
    return thresholds


def write_outputs(run_dir: Path, results: dict) -> None:
    """The evaluation's metrics and report (outputs_of); for the test split also the card's metrics and
    its validated thresholds (the others kept). Another split, or a subset, leaves the card untouched.
    The report is drawn first (beside its place) and the card updated before metrics.json: a failure
    on the way leaves the previous evaluation's files as they were, not half of each."""
    metrics_file, report_file = outputs_of(run_dir, results["split"], bool(results.get("subset")))
    drawn = report_file.with_name(f".{report_file.name}.drawing")
    card = read_card(run_dir / "model")
    updates_card = results["split"] == HELD_OUT and not results.get("subset")
    try:  # the report words the card as this evaluation leaves it (evaluated, where it writes the card's figures)
        write_report(results, drawn, {**card, "metrics": without_curves(results)} if updates_card else card)
        if updates_card:
            kept = {k: v for k, v in (card.get("thresholds") or {}).items() if k not in EVALUATED_THRESHOLDS}
            update_card(run_dir / "model", metrics=without_curves(results),
                        thresholds={**kept, **evaluated_thresholds(results)})
        write_json_atomic(metrics_file, results)
        os.replace(drawn, report_file)
    finally:
        drawn.unlink(missing_ok=True)
    if results["split"] != HELD_OUT or results.get("subset"):
        logging.getLogger(__name__).warning(
            "the %s split was evaluated%s: its figures are in %s and %s; the model card and metrics.json keep the "
            "held-out test figures", results["split"], " on a subset of its images" if results.get("subset") else "",
            metrics_file, report_file)
