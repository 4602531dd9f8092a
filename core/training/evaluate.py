"""Evaluate a training run on its held-out split: per stage, end to end, per patient, per magnification.

Every metric block says which split, which split protocol (patient-wise or leaky image-level)
and how many images and cases it was computed on, because a BreakHis number without its protocol
is not comparable to anything. Results go to RUN/metrics.json, into the model card (so the app
shows them next to the model) and to RUN/report.html (plotly, self-contained, works offline).

    python -m core evaluate RUN [--data DIR] [--split test] [--threshold 0.5] [--target-recall 0.95]
"""

from __future__ import annotations

import datetime
import html
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from core.data.labels import CLASS_OF_SUBTYPE, CLASSES, MAGNIFICATIONS, SUBTYPES, SUBTYPES_BY_CLASS
from core.data.selection import resolve_paths
from core.jsonfile import read_json, write_json_atomic
from core.model.folders import update_card
from core.model.predict import Predictor, case_decision
from core.paths import portable
from core.training.baselines import BASELINES
from core.training.figures import confusion_figure, roc_figure, scope_text
from core.training.intervals import headline_intervals, point_metrics

REQUIRED_COLUMNS = ("path", "label", "subtype", "magnification", "case", "split")
PATIENT_NOTE = ("patient level: image probabilities averaged per case (per case and tumour type for "
                "the few cases with two), then the usual decision rule")


# ---------------------------------------------------------------- data

def read_split(run_dir: Path, data_dir: str | os.PathLike | None = None) -> tuple[pd.DataFrame, list[str]]:
    """RUN/split.csv with usable paths; returns (table, missing paths).

    split.csv holds paths relative to the data folder the run was trained on (RUN/config.json).
    With `data_dir`, images are found again by file name (BreakHis names are unique), so a run
    evaluated after the dataset moved, or on another machine, still works.
    """
    csv = run_dir / "split.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} not found: is {run_dir} a training run folder?")
    table = pd.read_csv(csv)
    missing_columns = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing_columns:
        raise ValueError(f"{csv} lacks the column(s) {', '.join(missing_columns)}")
    if "protocol" not in table.columns:
        table["protocol"] = "unknown protocol"
    if data_dir is not None:
        from core.data.breakhis import index_folder

        by_name = {os.path.basename(p): p for p in index_folder(data_dir).images["path"]}
        table["path"] = [by_name.get(os.path.basename(p), p) for p in table["path"]]
    elif (run_dir / "config.json").is_file():
        table = resolve_paths(table, read_json(run_dir / "config.json").get("data", "."))
    exists = table["path"].map(os.path.isfile)
    return table[exists].reset_index(drop=True), table.loc[~exists, "path"].tolist()


def predictions_frame(rows: pd.DataFrame, p_class: np.ndarray, within: np.ndarray) -> pd.DataFrame:
    """`rows` plus pred_label, pred_subtype, p_<class>, p_<subtype> (joint) and w_<subtype>
    (p(subtype | its class)) columns, from p(class) (N, 2) and p(subtype | class) (N, 8, SUBTYPES
    order). The one place that turns probabilities into image-level calls, for models and baselines."""
    frame = rows.reset_index(drop=True).copy()
    labels = np.asarray(CLASSES)[np.asarray(p_class).argmax(axis=1)]
    own = {c: [SUBTYPES.index(s) for s in SUBTYPES_BY_CLASS[c]] for c in CLASSES}
    frame["pred_label"] = labels
    frame["pred_subtype"] = [SUBTYPES[own[c][int(np.argmax(within[i, own[c]]))]] for i, c in enumerate(labels)]
    for j, c in enumerate(CLASSES):
        frame[f"p_{c}"] = p_class[:, j]
    for k, s in enumerate(SUBTYPES):
        frame[f"p_{s}"] = p_class[:, CLASSES.index(CLASS_OF_SUBTYPE[s])] * within[:, k]
        frame[f"w_{s}"] = within[:, k]
    return frame


def predict_table(predictor: Predictor, rows: pd.DataFrame, batch_size: int = 32) -> tuple[pd.DataFrame, list[str]]:
    """Predict every row (see `predictions_frame`); returns (table, unreadable paths)."""
    from core.data.images import ImageError, load_image

    kept, p_class, within, unreadable = [], [], [], []
    for start in range(0, len(rows), batch_size):
        images = []
        for position, path in enumerate(rows["path"].iloc[start:start + batch_size], start=start):
            try:
                images.append(load_image(path, check_histology=False).rgb)
                kept.append(position)
            except (ImageError, OSError):
                unreadable.append(path)
        for prediction in predictor.predict(images):
            both = {**prediction.stage2, **prediction.other_stage2}
            p_class.append([prediction.stage1[c] for c in CLASSES])
            within.append([both[s] for s in SUBTYPES])
    if not kept:
        return rows.iloc[:0].assign(pred_label=[], pred_subtype=[]), unreadable
    return predictions_frame(rows.iloc[kept], np.array(p_class), np.array(within)), unreadable


def scope(table: pd.DataFrame, split: str, level: str = "image") -> dict:
    """What a metric block was computed on."""
    protocols = sorted(set(table["protocol"].astype(str))) if len(table) else []
    return {"split": split, "protocol": ", ".join(protocols) or "unknown protocol", "level": level,
            "images": int(table["n_images"].sum()) if "n_images" in table else int(len(table)),
            "cases": int(table["case"].nunique()) if len(table) else 0}


# ---------------------------------------------------------------- metrics

def _rounded(values) -> list[float]:
    return [round(float(v), 4) for v in values]


def classification_block(y_true, y_pred, scores: np.ndarray, labels: tuple, data: dict) -> dict:
    """Accuracy, balanced accuracy, macro P/R/F1, per-class report, confusion matrix, OvR ROC."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = [label for label in labels if label in set(y_true)]
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=present, average="macro", zero_division=0)
    report = skm.classification_report(y_true, y_pred, labels=list(labels), output_dict=True, zero_division=0)
    aucs, curves = {}, {}
    for i, label in enumerate(labels):
        positive = y_true == label
        if positive.all() or not positive.any():
            aucs[label] = None  # Undefined without both positives and negatives.
            continue
        aucs[label] = float(skm.roc_auc_score(positive, scores[:, i]))
        fpr, tpr, _ = skm.roc_curve(positive, scores[:, i])
        curves[label] = {"fpr": _rounded(fpr), "tpr": _rounded(tpr)}
    defined = [v for v in aucs.values() if v is not None]
    return {
        "data": data,
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(np.mean([np.mean(y_pred[y_true == c] == c) for c in present])),
        "macro_precision": float(precision), "macro_recall": float(recall), "macro_f1": float(f1),
        "classes_evaluated": present,
        "per_class": {label: {k: float(report[label][k]) for k in ("precision", "recall", "f1-score", "support")}
                      for label in labels},
        "confusion_matrix": {"labels": list(labels),
                             "matrix": skm.confusion_matrix(y_true, y_pred, labels=list(labels)).tolist(),
                             "rows": "true", "columns": "predicted"},
        "roc_auc": {"per_class": aucs, "macro": float(np.mean(defined)) if defined else None},
        "roc_curves": curves,
    }


def _columns(prefix: str, names) -> list[str]:
    return [f"{prefix}_{n}" for n in names]


def stage1_block(table: pd.DataFrame, data: dict) -> dict:
    return classification_block(table["label"], table["pred_label"], table[_columns("p", CLASSES)].to_numpy(),
                                CLASSES, data)


def subtype8_block(table: pd.DataFrame, data: dict) -> dict:
    return classification_block(table["subtype"], table["pred_subtype"], table[_columns("p", SUBTYPES)].to_numpy(),
                                SUBTYPES, data)


def stage2_blocks(table: pd.DataFrame, split: str) -> dict:
    """Each stage-2 head alone, on the images of its own (true) class."""
    blocks = {"note": "subtype within the TRUE class: the stage-2 head alone, stage-1 errors excluded"}
    for label in CLASSES:
        rows = table[table["label"] == label]
        if len(rows):
            scores = rows[_columns("w", SUBTYPES_BY_CLASS[label])].to_numpy()
            predicted = np.asarray(SUBTYPES_BY_CLASS[label])[scores.argmax(axis=1)]
            blocks[label] = classification_block(rows["subtype"], predicted, scores, SUBTYPES_BY_CLASS[label],
                                                 scope(rows, split))
    return blocks


def patient_table(table: pd.DataFrame, malignant_threshold: float = 0.5) -> pd.DataFrame:
    """One row per case (and tumour type): mean probabilities, then stage 1 -> stage 2 decisions."""
    table = table.assign(correct_stage1=(table["label"] == table["pred_label"]).astype(float),
                         correct_subtype8=(table["subtype"] == table["pred_subtype"]).astype(float))
    grouped = table.groupby(["case", "subtype"], sort=True)
    averaged = _columns("p", CLASSES) + _columns("p", SUBTYPES) + ["correct_stage1", "correct_subtype8"]
    cases = grouped[averaged].mean().reset_index()
    cases["label"] = grouped["label"].first().to_numpy()
    cases["protocol"] = grouped["protocol"].first().to_numpy()
    cases["n_images"] = grouped.size().to_numpy()
    # The app's case rule (core.model.predict.case_decision), on p(class) and p(subtype | class).
    decisions = [case_decision(zip(rows[_columns("p", CLASSES)].to_numpy(), rows[_columns("w", SUBTYPES)].to_numpy()),
                               malignant_threshold) for _, rows in grouped]
    cases["pred_label"] = [d.label for d in decisions]
    cases["pred_subtype"] = [d.subtype for d in decisions]
    return cases


def patient_blocks(table: pd.DataFrame, split: str, malignant_threshold: float = 0.5) -> dict:
    cases = patient_table(table, malignant_threshold)
    data = scope(cases, split, level="patient")
    return {"note": PATIENT_NOTE, "malignant_threshold": malignant_threshold,
            "stage1": stage1_block(cases, data), "subtype8": subtype8_block(cases, data),
            # BreakHis' own patient score: the share of a patient's images classified correctly, averaged.
            "patient_recognition_rate": {"data": data,
                                         "stage1": float(cases["correct_stage1"].mean()),
                                         "subtype8": float(cases["correct_subtype8"].mean())}}


def _headline(block: dict) -> dict:
    keys = ("data", "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1")
    return {**{k: block[k] for k in keys}, "roc_auc_macro": block["roc_auc"]["macro"]}


def magnification_blocks(table: pd.DataFrame, split: str) -> dict:
    blocks = {}
    for magnification in MAGNIFICATIONS:
        rows = table[table["magnification"] == magnification]
        if len(rows):
            data = scope(rows, split)
            stage1 = stage1_block(rows, data)
            blocks[magnification] = {"stage1": {**_headline(stage1),
                                                "malignant_recall": stage1["per_class"]["malignant"]["recall"]},
                                     "subtype8": _headline(subtype8_block(rows, data))}
    return blocks


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
        called = cases["p_malignant"].to_numpy() >= threshold
        return 0.5 * (called[malignant].mean() + (~called[~malignant]).mean())

    best = max(candidates, key=lambda c: (round(balanced(c), 12), -abs(c - 0.5)))
    return {"threshold": float(best), "selected_on": scope(cases, "val", level="patient"),
            "balanced_accuracy_on_validation": float(balanced(best)),
            "rule": "best balanced accuracy over the validation cases, ties towards 0.5"}


def score(evaluated: pd.DataFrame, val_table: pd.DataFrame | None, split: str, threshold: float = 0.5,
          target_recall: float = 0.95) -> dict:
    """Every metric block for one set of predictions on `split` (a model's or a baseline's), with
    bootstrap intervals over cases; thresholds are chosen on `val_table`, never on `split`."""
    data = scope(evaluated, split)
    stage1, subtype8 = stage1_block(evaluated, data), subtype8_block(evaluated, data)
    cases_rule = case_threshold(val_table)
    patient = patient_blocks(evaluated, split, cases_rule["threshold"])
    thresholds = threshold_blocks(evaluated, val_table, split, threshold, target_recall)
    results = {
        "split": split, "protocol": data["protocol"], "images": data["images"], "cases": data["cases"],
        "stage1_accuracy": stage1["accuracy"], "stage1_balanced_accuracy": stage1["balanced_accuracy"],
        "stage1_auc": stage1["roc_auc"]["per_class"].get("malignant"),
        "subtype_accuracy": subtype8["accuracy"], "subtype_macro_f1": subtype8["macro_f1"],
        "malignant_recall": thresholds["decision"]["malignant_recall"],
        "patient_stage1_accuracy": patient["stage1"]["accuracy"], "data": data,
        "stage1": stage1, "stage2": stage2_blocks(evaluated, split), "subtype8": subtype8,
        "patient": patient, "per_magnification": magnification_blocks(evaluated, split),
        "malignant_threshold": thresholds, "case_threshold": cases_rule,
        "intervals": {"image": headline_intervals(evaluated, "image"),
                      "patient": headline_intervals(patient_table(evaluated, cases_rule["threshold"]), "patient")},
    }
    if val_table is not None and len(val_table):
        results["validation"] = {"data": scope(val_table, "val"), **point_metrics(val_table)}
    return results


def baseline_scores(table: pd.DataFrame, split: str, threshold: float, target_recall: float) -> dict:
    """Each baseline (core.training.baselines), fitted on the run's training images and scored on
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
        scored[name] = {"name": kind.name, **{k: full[k] for k in (
            "data", "stage1_accuracy", "stage1_balanced_accuracy", "stage1_auc", "malignant_recall", "subtype_macro_f1",
            "patient_stage1_accuracy", "intervals", "case_threshold")}}
    return scored


# ---------------------------------------------------------------- run

def evaluate_run(run_dir, data_dir=None, split: str = "test", recall_threshold: float | None = None,
                 target_recall: float = 0.95, batch_size: int = 32, write: bool = True,
                 baselines: bool = True) -> dict:
    """Evaluate RUN/model on RUN/split.csv's `split`; writes metrics.json, card metrics, report.html.

    recall_threshold: p(malignant) decision threshold reported as the operating point
    (default 0.5); recall-favouring image and case thresholds reaching `target_recall` are chosen
    on "val". baselines: also score the majority and colour/texture baselines on the same cases.
    """
    run_dir = Path(run_dir)
    threshold = 0.5 if recall_threshold is None else float(recall_threshold)
    if not 0.0 <= threshold <= 1.0 or not 0.0 < target_recall <= 1.0:
        raise ValueError("thresholds and target recall must be in [0, 1]")
    table, missing = read_split(run_dir, data_dir)
    if split not in set(table["split"]):
        raise ValueError(f"No readable {split!r} images in {run_dir / 'split.csv'} "
                         f"({len(missing)} listed images not found; pass --data DIR to find them by name)")
    predictor = Predictor.load(run_dir / "model")
    evaluated, unreadable = predict_table(predictor, table[table["split"] == split], batch_size)
    if evaluated.empty:
        raise ValueError(f"None of the {split!r} images could be read")
    val_table = None
    if split != "val" and (table["split"] == "val").any():
        val_table, unreadable_val = predict_table(predictor, table[table["split"] == "val"], batch_size)
        unreadable += unreadable_val
    results = {
        "run": portable(run_dir), "model": predictor.name, "hierarchy": predictor.hierarchy,
        "demo_model": predictor.is_demo,
        "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **score(evaluated, val_table, split, threshold, target_recall),
        "not_evaluated": {"missing": len(missing), "unreadable": len(unreadable),
                          "examples": (missing + unreadable)[:5]},
    }
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


def write_report(results: dict, path: Path) -> None:
    """One self-contained HTML page: plotly embedded once, every figure titled with its data scope."""
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
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
                    f"<h1>{title}</h1>{demo}<p>{html.escape(scope_text(results['data']))}. {PATIENT_NOTE}.</p>"
                    + "".join(parts) + "</body></html>", encoding="utf-8")


def write_outputs(run_dir: Path, results: dict) -> None:
    """metrics.json, the card's metrics and its validated case threshold, report.html."""
    write_json_atomic(run_dir / "metrics.json", results)
    update_card(run_dir / "model", metrics=without_curves(results),
                thresholds={"case_malignant": results["case_threshold"]["threshold"],
                            "case_malignant_selection": {k: v for k, v in results["case_threshold"].items()
                                                         if k != "threshold"}})
    write_report(results, run_dir / "report.html")
