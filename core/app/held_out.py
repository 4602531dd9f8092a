"""95% intervals for the Model performance page's per-stage and per-magnification accuracies, and its stage-1
calls per true subtype (which tumours a model sends to the other class).

The headline intervals (core.evaluation.evaluate) cover stage 1 and the patients; the other blocks keep point
values only. Where the run kept its held-out predictions (core.app.referral_view.stored_predictions) each
accuracy gets the same bootstrap over whole patients; where it did not, a Wilson interval over the block's
images, which takes them as independent and so is narrower than it should be (the table says which).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.data.labels import CLASS_OF_SUBTYPE, SUBTYPES, SUBTYPES_BY_CLASS
from core.evaluation.intervals import binomial_interval, format_interval, format_share, share_interval
from core.evaluation.metrics import PATIENT_UNIT, SUBTYPE_UNIT, patient_table

BOOTSTRAP, WILSON = "bootstrap over patients", "Wilson over its rows (as independent: patients not kept)"


def held_out_rows(predictions: pd.DataFrame | None, metrics: dict) -> pd.DataFrame | None:
    """The stored predictions the metrics were computed on (their split, as many images), else None."""
    data = metrics.get("data") or {}
    if predictions is None or "split" not in predictions:
        return None
    rows = predictions[predictions["split"] == data.get("split", "test")]
    return rows.reset_index(drop=True) if len(rows) and len(rows) == data.get("images") else None


def right_calls(rows: pd.DataFrame, path: tuple[str, ...],
                malignant_threshold: float = 0.5) -> tuple[pd.DataFrame, np.ndarray] | None:
    """(rows, right call per row) of a block: stage 1, the 8 subtypes, or stage 2 within a true class (its
    subtype among that class's, as the block scores it) of the images; stage 1 per patient and the 8 subtypes
    per case and tumour type, by the case rule at the block's threshold (patient_table); None for another."""
    if path[0] == "patient" and path[1:] in (("stage1",), ("subtype8",)):
        stage1 = path[1] == "stage1"
        cases = patient_table(rows, malignant_threshold, PATIENT_UNIT if stage1 else SUBTYPE_UNIT)
        truth, called = ("label", "pred_label") if stage1 else ("subtype", "pred_subtype")
        return cases, (cases[truth] == cases[called]).to_numpy()
    if path == ("stage1",):
        return rows, (rows["label"] == rows["pred_label"]).to_numpy()
    if path == ("subtype8",):
        return rows, (rows["subtype"] == rows["pred_subtype"]).to_numpy()
    if len(path) == 2 and path[0] == "stage2":
        own = rows[rows["label"] == path[1]]
        names = list(SUBTYPES_BY_CLASS[path[1]])
        called = np.asarray(names)[own[[f"w_{s}" for s in names]].to_numpy().argmax(axis=1)] if len(own) else []
        return own, (own["subtype"].to_numpy() == called)
    return None


def accuracy_interval(metrics: dict, path: tuple[str, ...], block: dict, rows: pd.DataFrame | None) -> tuple[str, str]:
    """(the block's accuracy with its 95% interval, how it was computed)."""
    level = {("stage1",): "image", ("patient", "stage1"): "patient"}.get(path)
    headline = ((metrics.get("intervals") or {}).get(level) or {}).get("stage1_accuracy") if level else None
    if headline and headline.get("low") is not None:
        return format_interval(headline), interval_method(headline)
    threshold = (metrics.get("patient") or {}).get("malignant_threshold", 0.5)
    called = right_calls(rows, path, threshold) if rows is not None else None
    if called is not None and len(called[0]):
        shared = share_interval(*called)
        return format_interval(shared), interval_method(shared)
    data = block.get("data") or {}
    n = data.get("rows", data.get("images"))
    if block.get("accuracy") is None or not n:
        return "n/a", ""
    return format_interval(binomial_interval(int(round(block["accuracy"] * n)), int(n))), WILSON


def interval_method(block: dict) -> str:
    """BOOTSTRAP, or what core.evaluation.intervals gave instead where the bootstrap had no spread (its block's
    "method"): the Wilson interval over the patients for a share, no interval for another figure."""
    method = str(block.get("method") or "")
    return method if method.startswith(("Wilson", "no interval")) else BOOTSTRAP


def magnification_intervals(rows: pd.DataFrame | None, magnification: str, block: dict) -> dict:
    """Stage-1 and 8-subtype accuracy at one magnification, with their intervals and how they were computed."""
    mine = rows[rows["magnification"] == magnification] if rows is not None else None
    if mine is not None and len(mine) != block["stage1"]["data"]["images"]:
        mine = None
    out = {}
    for name, path in (("stage 1 accuracy, 95% CI", ("stage1",)), ("8-subtype accuracy, 95% CI", ("subtype8",))):
        out[name], out["interval"] = accuracy_interval({}, path, block[path[0]], mine)
    return out


def stage1_by_subtype(rows: pd.DataFrame | None, malignant_threshold: float = 0.5) -> pd.DataFrame | None:
    """Stage 1's calls on the held-out images of each true subtype, and on its patients.

    The headline figures average over subtypes, so a model that calls every mucinous carcinoma benign can
    show a good balanced accuracy; a pathologist needs to know which tumours it misses. For a malignant
    subtype the images not called malignant are missed cancers. Patients: the images of one case and
    tumour type averaged, then the model's own case rule (core.evaluation.metrics.patient_table); the
    interval is the usual bootstrap over patients (Wilson over them where it has no spread). None without
    kept predictions."""
    if rows is None or not len(rows):
        return None
    typed = patient_table(rows, malignant_threshold, SUBTYPE_UNIT)
    out = []
    for subtype in [s for s in SUBTYPES if s in set(rows["subtype"])]:
        mine = rows[rows["subtype"] == subtype]
        right = (mine["label"] == mine["pred_label"]).to_numpy()
        cases = typed[typed["subtype"] == subtype]
        out.append({"true subtype": subtype.replace("_", " "), "class": CLASS_OF_SUBTYPE[subtype],
                    "images called its class, 95% CI": format_share(share_interval(mine, right)),
                    "images called the other class": int((~right).sum()), "images": len(mine),
                    "patients called its class": f"{int((cases['pred_label'] == cases['label']).sum())} of {len(cases)}",
                    "protocol": str(mine["protocol"].iloc[0])})  # patient_table has read the column
    return pd.DataFrame(out)


def stage1_by_subtype_caption(table: pd.DataFrame, metrics: dict) -> str:
    """What the table is of, and the malignant subtypes whose images were missed most, in words."""
    data = metrics.get("data") or {}
    protocol = data.get("protocol", "the model's test split")
    text = (f"Each row: the held-out images of one true subtype ({protocol}, "
            f"{data.get('images', '?')} images of {data.get('cases', '?')} patients). For a malignant subtype, "
            "images called the other class are cancers called benign; for a benign one, benign tissue called "
            "malignant. Patients: a patient's images of that subtype averaged, then the model's rule. 95% CI: "
            "bootstrap over patients; a subtype of a few patients has a wide one.")
    missed = table[(table["class"] == "malignant") & (table["images called the other class"] > 0)]
    if len(missed):
        worst = missed.assign(share=missed["images called the other class"] / missed["images"]).nlargest(2, "share")
        named = " and ".join(f"{r['true subtype']} ({r['images called the other class']} of {r['images']} images)"
                             for _, r in worst.iterrows())
        text += f" Most often missed: {named}."
    return text
