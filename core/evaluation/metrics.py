"""Metric blocks of a table of predictions: per stage, end to end, per patient, per magnification.

Every block says which split, which split protocol (patient-wise or leaky image-level) and how
many images and cases it was computed on, because a BreakHis number without its protocol is not
comparable to anything. The table is core.evaluation.evaluate.predictions_frame's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from core.data.labels import CLASS_OF_SUBTYPE, CLASSES, MAGNIFICATIONS, SUBTYPES, SUBTYPES_BY_CLASS
from core.model.decisions import case_decision

# The units of the patient level. Stage 1 is called per patient, as the app calls a case
# (core.app.report.case_calls groups by case id): a case whose images are all of one class is one row, whatever
# its tumour types. The subtype is scored per case and TRUE tumour type, since a case with two tumour types has
# two right answers; those rows are formed with the ground truth, which the app does not have, and say so.
PATIENT_UNIT = ("case", "label")
SUBTYPE_UNIT = ("case", "subtype")
UNIT_NAMES = {PATIENT_UNIT: "patient", SUBTYPE_UNIT: "case x tumour type"}
PATIENT_NOTE = ("patient level: image probabilities averaged per case, then the usual decision rule; stage 1 "
                "one row per patient (case), as the app calls it; the subtype one row per case and true tumour "
                "type (a few cases have two)")


def split_name(data: dict | None) -> str:
    """Which images a block's figures were measured on: its split ('test', 'val'), or 'out-of-fold'
    for a cross-validation's pooled predictions (every patient tested once, by a model that never saw
    it), which are stored with split 'test' but are no single held-out split."""
    data = data or {}
    return "out-of-fold" if "out-of-fold" in str(data.get("protocol") or "") else str(data.get("split") or "?")


def measured_on(data: dict | None) -> str:
    """split_name in words: 'the test split', 'out-of-fold predictions'."""
    name = split_name(data)
    return "out-of-fold predictions" if name == "out-of-fold" else f"the {name} split"


def scope(table: pd.DataFrame, split: str, level: str = "image") -> dict:
    """What a metric block was computed on."""
    protocols = sorted(set(table["protocol"].astype(str))) if len(table) else []
    data = {"split": split, "protocol": ", ".join(protocols) or "unknown protocol", "level": level,
            "images": int(table["n_images"].sum()) if "n_images" in table else int(len(table)),
            "cases": int(table["case"].nunique()) if len(table) else 0}
    return data if level == "image" else {**data, "rows": int(len(table))}


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the classes present in y_true (scikit-learn's balanced_accuracy_score, which
    also warns about predicted-only classes, a normal case here: a subtype absent from a test split)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def _rounded(values) -> list[float]:
    return [round(float(v), 4) for v in values]


def _share(numerator, denominator) -> float | None:
    return float(numerator / denominator) if denominator else None


def per_class_report(matrix: np.ndarray, labels: tuple) -> dict:
    """Precision, recall, F1 and support of each label from a confusion matrix (rows true), None where
    undefined rather than scikit-learn's 0.0, which reads as a measured failure: the recall and F1 of a
    label without true images (a magnification without malignant images, a subtype absent from a split),
    the precision of a label never called. A present label never called keeps its F1 of 0."""
    hits, support, called = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    return {label: {"precision": _share(hits[i], called[i]), "recall": _share(hits[i], support[i]),
                    "f1-score": _share(2 * hits[i], support[i] + called[i]) if support[i] else None,
                    "support": float(support[i])}
            for i, label in enumerate(labels)}


def not_applicable(labels, present) -> str | None:
    """Why a block's balanced accuracy and macro figures are n/a on its split, or None where they are defined.

    They average over the labels present, so a split without malignant images scored "balanced accuracy 1.0,
    macro F1 1.0" for a model that called everything benign. They need both classes where the labels span
    both (stage 1, the 8 subtypes) and at least two labels (a stage-2 head's subtypes)."""
    present = [label for label in labels if label in set(present)]
    classes = [c for c in CLASSES if c in {CLASS_OF_SUBTYPE.get(label, label) for label in labels}]
    absent = [c for c in classes if c not in {CLASS_OF_SUBTYPE.get(label, label) for label in present}]
    if absent and present:
        return (f"n/a: no {' or '.join(absent)} images in this split (only {', '.join(present)}); a balanced or "
                "macro figure needs both classes")
    if len(present) < 2:
        return (f"n/a: only {present[0] if present else 'no'} images in this split; a balanced or macro figure "
                "needs at least two")
    return None


def headline_not_applicable(table: pd.DataFrame) -> dict:
    """{headline figure (core.evaluation.intervals.HEADLINE): why it is n/a} of a predictions table, by
    not_applicable: the stage-1 balanced accuracy and the subtype macro-F1. Empty where both are defined."""
    reasons = {"stage1_balanced_accuracy": not_applicable(CLASSES, table["label"]),
               "subtype_macro_f1": not_applicable(SUBTYPES, table["subtype"])}
    return {name: reason for name, reason in reasons.items() if reason}


def classification_block(y_true, y_pred, scores: np.ndarray, labels: tuple, data: dict) -> dict:
    """Accuracy, balanced accuracy, macro P/R/F1 (over the labels present; None, with the reason in
    "not_applicable", where the split lacks a class: see not_applicable), per-class report (None where
    undefined), confusion matrix, OvR ROC."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = [label for label in labels if label in set(y_true)]
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=present, average="macro", zero_division=0)
    reason = not_applicable(labels, present)
    matrix = skm.confusion_matrix(y_true, y_pred, labels=list(labels))
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
        **{name: None if reason else value for name, value in (
            ("balanced_accuracy", balanced_accuracy(y_true, y_pred)), ("macro_precision", float(precision)),
            ("macro_recall", float(recall)), ("macro_f1", float(f1)))},
        "not_applicable": reason, "classes_evaluated": present,
        "per_class": per_class_report(matrix, labels),
        "confusion_matrix": {"labels": list(labels), "matrix": matrix.tolist(),
                             "rows": "true", "columns": "predicted"},
        "roc_auc": {"per_class": aucs, "macro": float(np.mean(defined)) if defined else None},
        "roc_curves": curves,
    }


def block_note(block: dict) -> str:
    """Why a row's balanced accuracy and macro F1 are n/a (the split lacks a class), or which labels they
    average over when some are absent from the split; "" when every label is there."""
    if block.get("not_applicable"):
        return block["not_applicable"]
    labels, present = (block.get("confusion_matrix") or {}).get("labels") or [], block.get("classes_evaluated")
    absent = [label for label in labels if present is not None and label not in present]
    return (f"macro figures over the {len(present)} of {len(labels)} present; none of "
            + ", ".join(absent) + " in this split") if absent else ""


def columns_of(prefix: str, names) -> list[str]:
    return [f"{prefix}_{n}" for n in names]


def stage1_block(table: pd.DataFrame, data: dict) -> dict:
    return classification_block(table["label"], table["pred_label"], table[columns_of("p", CLASSES)].to_numpy(),
                                CLASSES, data)


def subtype8_block(table: pd.DataFrame, data: dict) -> dict:
    return classification_block(table["subtype"], table["pred_subtype"], table[columns_of("p", SUBTYPES)].to_numpy(),
                                SUBTYPES, data)


def stage2_blocks(table: pd.DataFrame, split: str) -> dict:
    """Each stage-2 head alone, on the images of its own (true) class."""
    blocks = {"note": "subtype within the TRUE class: the stage-2 head alone, stage-1 errors excluded"}
    for label in CLASSES:
        rows = table[table["label"] == label]
        if len(rows):
            scores = rows[columns_of("w", SUBTYPES_BY_CLASS[label])].to_numpy()
            predicted = np.asarray(SUBTYPES_BY_CLASS[label])[scores.argmax(axis=1)]
            blocks[label] = classification_block(rows["subtype"], predicted, scores, SUBTYPES_BY_CLASS[label],
                                                 scope(rows, split))
    return blocks


def patient_table(table: pd.DataFrame, malignant_threshold: float = 0.5, unit: tuple = PATIENT_UNIT) -> pd.DataFrame:
    """One row per `unit` (PATIENT_UNIT: per patient, for stage 1; SUBTYPE_UNIT: per case and tumour type, for
    the subtype): mean probabilities, then stage 1 -> stage 2 decisions. A patient row of a case with two
    tumour types has no one true subtype: its `subtype` is missing (score the subtype on SUBTYPE_UNIT rows)."""
    table = table.assign(correct_stage1=(table["label"] == table["pred_label"]).astype(float),
                         correct_subtype8=(table["subtype"] == table["pred_subtype"]).astype(float))
    grouped = table.groupby(list(unit), sort=True)
    averaged = columns_of("p", CLASSES) + columns_of("p", SUBTYPES) + ["correct_stage1", "correct_subtype8"]
    cases = grouped[averaged].mean().reset_index()
    cases["label"] = grouped["label"].first().to_numpy()
    if "subtype" not in unit:
        cases["subtype"] = [s.iloc[0] if s.nunique() == 1 else None for _, s in grouped["subtype"]]
    cases["protocol"] = grouped["protocol"].first().to_numpy()
    cases["n_images"] = grouped.size().to_numpy()
    # The app's case rule (core.model.predict.case_decision), on p(class) and p(subtype | class).
    decisions = [case_decision(zip(rows[columns_of("p", CLASSES)].to_numpy(), rows[columns_of("w", SUBTYPES)].to_numpy()),
                               malignant_threshold) for _, rows in grouped]
    cases["pred_label"] = [d.label for d in decisions]
    cases["pred_subtype"] = [d.subtype for d in decisions]
    return cases


def patient_blocks(table: pd.DataFrame, split: str, malignant_threshold: float = 0.5) -> dict:
    """Stage 1 per patient, the subtype per case and tumour type (PATIENT_NOTE), each block naming its unit."""
    cases, typed = (patient_table(table, malignant_threshold, unit) for unit in (PATIENT_UNIT, SUBTYPE_UNIT))
    data, typed_data = (scope(t, split, level=UNIT_NAMES[u]) for t, u in ((cases, PATIENT_UNIT), (typed, SUBTYPE_UNIT)))
    return {"note": PATIENT_NOTE, "malignant_threshold": malignant_threshold,
            "stage1": stage1_block(cases, data), "subtype8": subtype8_block(typed, typed_data),
            # BreakHis' own patient score: the share of a patient's images classified correctly, averaged.
            "patient_recognition_rate": {"data": data, "subtype_data": typed_data,
                                         "stage1": float(cases["correct_stage1"].mean()),
                                         "subtype8": float(typed["correct_subtype8"].mean())}}


def _headline(block: dict) -> dict:
    keys = ("data", "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "not_applicable")
    return {**{k: block[k] for k in keys}, "roc_auc_macro": block["roc_auc"]["macro"]}


def magnification_blocks(table: pd.DataFrame, split: str) -> dict:
    blocks = {}
    for magnification in MAGNIFICATIONS:
        rows = table[table["magnification"] == magnification]
        if len(rows):
            data = scope(rows, split)
            stage1 = stage1_block(rows, data)
            # None (not 0.0) at a magnification without malignant images: an empty cell in the page's table.
            blocks[magnification] = {"stage1": {**_headline(stage1),
                                                "malignant_recall": stage1["per_class"]["malignant"]["recall"]},
                                     "subtype8": _headline(subtype8_block(rows, data))}
    return blocks
