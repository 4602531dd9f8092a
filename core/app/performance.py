"""What the Model performance page shows, as tables: metrics per stage with their protocol and data
size, the active model next to the published BreakHis results, and training curves.

A BreakHis number without its split protocol is not comparable to anything, so every row here
carries its split, protocol, level and counts.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from core.app.held_out import accuracy_interval, held_out_rows, interval_method, magnification_intervals
from core.app.run_files import read_csv_file
from core.data.fields import magnification_value
from core.data.labels import sentence
from core.evaluation.figures import scope_text
from core.evaluation.intervals import HEADLINE, HEADLINE_NAMES, format_interval
from core.evaluation.metrics import block_note, measured_on, split_name
from core.model.calibration import TEMPERATURE_RANGE

_BLOCKS = (  # (row label, path into metrics.json / the card's metrics)
    ("Stage 1: benign vs malignant", ("stage1",)),
    ("Stage 2: benign subtypes (true class given)", ("stage2", "benign")),
    ("Stage 2: malignant subtypes (true class given)", ("stage2", "malignant")),
    ("End to end: 8 subtypes", ("subtype8",)),
    ("Patient level: benign vs malignant", ("patient", "stage1")),
    ("Patient level: 8 subtypes (a patient with two tumour types counts in each)", ("patient", "subtype8")),
)


def metric_block(metrics: dict, path: tuple[str, ...]) -> dict | None:
    block = metrics
    for key in path:
        block = block.get(key) if isinstance(block, dict) else None
    return block if isinstance(block, dict) and "accuracy" in block else None


def metrics_table(metrics: dict, predictions: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per stage (and end to end), each with its split, protocol, data size and accuracy with its 95%
    interval (core.app.held_out; `predictions`: the run's kept predictions, for a patient bootstrap); n/a
    (None) where the split lacks a class, with the reason in "note"."""
    rows, held_out = [], held_out_rows(predictions, metrics)
    for label, path in _BLOCKS:
        block = metric_block(metrics, path)
        if block is None:
            continue
        data = block.get("data") or {}
        auc = (block.get("roc_auc") or {}).get("macro")
        interval, method = accuracy_interval(metrics, path, block, held_out)
        rows.append({
            "what": label, "accuracy": block["accuracy"], "accuracy, 95% CI": interval, "interval": method,
            "balanced accuracy": block.get("balanced_accuracy"),
            "macro F1": block.get("macro_f1"), "macro ROC AUC": auc,
            "split": split_name(data), "protocol": data.get("protocol"), "level": data.get("level"),
            "images": data.get("images"), "cases": data.get("cases"), "note": block_note(block),
        })
    return pd.DataFrame(rows).round(4)


def protocol_line(metrics: dict) -> str:
    """The sentence that must accompany every number: which split, which protocol, how much data; a
    cross-validation's pooled predictions said in plain words first, the protocol's own name after them."""
    data = metrics.get("data") or {}
    if not data:
        return "Split protocol and data size unknown: treat these numbers with care."
    leaky = "image-level" in str(data.get("protocol", ""))
    if split_name(data) == "out-of-fold":
        on = f"patients each model never saw during training ({data.get('protocol', '?')})"
    else:
        on = f"{measured_on(data)}, {data.get('protocol', '?')} protocol"
    return (f"Measured on {on}, {data.get('images', '?')} images from {data.get('cases', '?')} cases."
            + (" Image-level splits put the same patient in training and test: optimistic." if leaky else ""))


def intervals_title(metrics: dict) -> str:
    """The headline table's title: 'next to the baselines' only where they were scored."""
    return "Headline figures with 95% intervals" + (", next to the baselines" if metrics.get("baselines") else "")


def intervals_caption(metrics: dict) -> str:
    """How the headline intervals and the baselines beside them (where scored) were computed."""
    text = protocol_line(metrics) + " Intervals: percentile bootstrap over whole patients (2,000 resamples)"
    if not metrics.get("baselines"):
        return (text + "; no baseline was scored for this model, so nothing shows it learnt more than colour and "
                "texture (its subtype is not shown as a finding).")
    fitted = ("fitted on each fold's training patients and scored on its held-out ones, like the model"
              if split_name(metrics.get("data")) == "out-of-fold"
              else "fitted on the same training images and scored on the same test cases")
    return (text + f"; the baselines are {fitted}. A model that does not beat the colour/texture baseline has "
            "learnt little beyond colour and texture.")


def protocol_kind(protocol: str) -> str:
    """'patient-wise' or 'image-level' for a free-text protocol description."""
    return "patient-wise" if "patient" in str(protocol).lower() else "image-level"


def intervals_table(metrics: dict) -> pd.DataFrame:
    """Headline figures with their 95% bootstrap intervals over cases, image- and patient-level, for
    the model and each baseline scored on the same held-out cases (core.evaluation.evaluate)."""
    columns = {"model": metrics, **{b["name"]: b for b in (metrics.get("baselines") or {}).values()}}
    rows = []
    for level in ("image", "patient"):
        for key, name in HEADLINE_NAMES.items():
            row = {"level": level, "metric": name}
            for column, source in columns.items():
                row[column] = format_interval(((source.get("intervals") or {}).get(level) or {}).get(key))
            block = (metrics.get("intervals") or {}).get(level) or {}
            row["computed on"] = computed_on(block, level, key)
            figure = block.get(key) or {}
            row["model's interval"] = interval_method(figure) if figure.get("value") is not None else ""
            rows.append(row)
    return pd.DataFrame(rows)


def computed_on(block: dict, level: str, key: str) -> str:
    """What one headline interval was computed on: images, patients (one row each), or for the patient-level
    subtype (and an older evaluation's every patient-level figure) groups of one patient and true tumour type
    (case x tumour-type rows: the column's tooltip, glossary.COLUMNS["computed on"])."""
    rows, cases = block.get("rows", "?"), block.get("cases", "?")
    if level == "image":
        return f"{rows} images, {cases} cases"
    if key == "subtype_macro_f1" and block.get("subtype_rows") is not None:
        rows = block["subtype_rows"]
    elif rows == cases:
        return f"{cases} patients (one row each)"
    return f"{cases} patients ({rows} patient-and-tumour-type groups)"


def cross_validation_caption(cv: dict) -> str:
    """What the cross-validation table was computed on: the images and patients, per fold where cv.json has them."""
    folds = (cv.get("per_fold") or {}).get("model") or []
    sizes = [(f.get("test_images"), f.get("test_cases")) for f in folds]
    text = ("Every patient is a test patient in exactly one fold, so the figure does not hang on one split. "
            "Mean +- sample standard deviation over the folds")
    if not sizes or any(None in size for size in sizes):
        return text + "; the data size per fold is not recorded."
    return (text + f" ({len(sizes)} folds, {sum(i for i, _ in sizes)} images of {sum(c for _, c in sizes)} patients; "
            "held out per fold: " + ", ".join(f"{i} images / {c} patients" for i, c in sizes) + ").")


def cross_validation_table(cv: dict) -> pd.DataFrame:
    """core.training.crossval's summary as rows: metric, then mean +- std for the model and each baseline."""
    rows = []
    for level in ("image", "patient"):
        for key in HEADLINE:
            row = {"level": level, "metric": HEADLINE_NAMES[key]}
            for column, summary in cv["mean_std"].items():
                figure = summary.get(f"{level}_{key}")
                row[column] = f"{figure['mean']:.3f} +- {figure['std']:.3f}" if figure else "n/a"
            rows.append(row)
    return pd.DataFrame(rows)


REFERENCE_COLUMNS = ("source", "model", "task", "protocol", "metric", "value", "note")


def reference_results(path) -> tuple[pd.DataFrame | None, str | None]:
    """The published BreakHis results (assets/reference_results.csv), or (None, why) when the file is
    missing, damaged or lacks a column: that table is left out, the rest of the page still shown."""
    table, problem = read_csv_file(path)
    if table is None:
        problem = problem or f"{path} is missing"
    elif missing := [column for column in REFERENCE_COLUMNS if column not in table.columns]:
        table, problem = None, f"{path} lacks the column(s) {', '.join(missing)}"
    return table, problem and f"The published results table cannot be shown: {problem}."


def comparison_table(reference: pd.DataFrame, metrics: dict | None, card: dict) -> pd.DataFrame:
    """Published results next to the active model's, each marked by its split protocol. The app's rows name
    the model by its badge (registry.model_badge: LIMITED DATA and its patients), so a model of few patients
    does not read as a peer of the papers' figures beside it."""
    from core.app.registry import model_badge

    table = reference.copy()
    table["protocol kind"] = table["protocol"].map(protocol_kind)
    rows = []
    if metrics and metric_block(metrics, ("stage1",)):
        data = metrics.get("data") or {}
        ours = {"source": "this app (active model)", "model": model_badge(card), "protocol": data.get("protocol"),
                "note": f"{measured_on(data)}, {data.get('images')} images, {data.get('cases')} cases"}
        stage1, subtype8 = metrics["stage1"], metric_block(metrics, ("subtype8",)) or {}
        image, patients = ((metrics.get("intervals") or {}).get(level) or {} for level in ("image", "patient"))

        def value(number, interval=None):  # with its 95% interval over cases when the metrics have one
            if number is None:  # undefined: no image of that class in the data measured on
                return "n/a"
            return format_interval(interval, 4) if interval else round(number, 4)

        rows += [{**ours, "task": "binary", "metric": "accuracy",
                  "value": value(stage1["accuracy"], image.get("stage1_accuracy"))},
                 {**ours, "task": "binary", "metric": "malignant recall",
                  "value": value(stage1["per_class"]["malignant"]["recall"], image.get("malignant_recall"))}]
        if subtype8:
            rows += [{**ours, "task": "8-class", "metric": "accuracy", "value": value(subtype8["accuracy"])},
                     {**ours, "task": "8-class", "metric": "macro F1",
                      "value": value(subtype8["macro_f1"], image.get("subtype_macro_f1"))}]
        patient = metric_block(metrics, ("patient", "stage1"))
        if patient:
            rows.append({**ours, "task": "binary", "metric": "patient-level accuracy",
                         "value": value(patient["accuracy"], patients.get("stage1_accuracy"))})
    if rows:
        mine = pd.DataFrame(rows)
        mine["protocol kind"] = mine["protocol"].map(protocol_kind)
        table = pd.concat([mine, table], ignore_index=True)
    table["value"] = table["value"].astype(str)
    return table[["protocol kind", "source", "model", "task", "metric", "value", "protocol", "note"]]


def training_curves(history: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per-epoch history (history.csv or the progress stream) -> long tables to plot, by panel.

    Losses and scores live on different scales, so they get separate panels; the learning rate
    is a setting, not a result, and is left out.
    """
    if "epoch" not in history:
        history = history.assign(epoch=range(1, len(history) + 1))
    long = history.melt(id_vars="epoch", var_name="metric", value_name="value").dropna()
    is_loss = long["metric"].str.contains("loss")
    scores = long[~is_loss & ~long["metric"].isin(["learning_rate", "lr"])]
    return {"Loss": long[is_loss], "Metrics": scores}


def split_summary(description: dict) -> pd.DataFrame:
    """core.data.splits.describe_split (recorded in the card) as one row per split: images, cases,
    and the subtypes a split lacks (a metric over a split without a subtype cannot speak for it)."""
    return pd.DataFrame([{"split": split, "images": description["images"].get(split, 0),
                          "cases": description.get("cases", {}).get(split, 0),
                          "synthetic images": description.get("synthetic", {}).get(split, 0),
                          "missing subtypes": ", ".join(description.get("missing_subtypes", {}).get(split, [])) or "none"}
                         for split in ("train", "val", "test")])


def calibration_table(calibration: dict) -> pd.DataFrame:
    """ECE and Brier per head and split, before and after temperature scaling, with the image counts."""
    rows = []
    for split, measured in (calibration.get("measured") or {}).items():
        for head, m in measured["heads"].items():
            rows.append({"split": split_name(measured["data"]), "head": head,
                         "temperature": round(calibration["temperatures"].get(head, 1.0), 3),
                         "ECE before": round(m["ece_before"], 4), "ECE after": round(m["ece_after"], 4),
                         "Brier before": round(m["brier_before"], 4), "Brier after": round(m["brier_after"], 4),
                         "images": m["images"], "protocol": measured["data"]["protocol"]})
    return pd.DataFrame(rows)


def members_table(metrics: dict) -> pd.DataFrame:
    """The ensemble and each member: headline figures with intervals, on the same held-out cases."""
    sources = [("ensemble", metrics)] + [(f"member: {m['name']} ({m['backbone']})", m) for m in metrics["members"]]
    rows = []
    for name, source in sources:
        image = (source.get("intervals") or {}).get("image") or {}
        rows.append({"model": name, **{HEADLINE_NAMES[k]: format_interval(image.get(k)) for k in HEADLINE_NAMES},
                     **{name: round(source[key], 4) if source.get(key) is not None else None
                        for name, key in (("stage-1 ECE", "stage1_ece"), ("stage-1 Brier", "stage1_brier"))}})
    return pd.DataFrame(rows)


# --- the Model performance page's sections, as data (the page lays them out) --------------------
SUBTITLE_CHARACTERS = 60  # a subtitle line that fits a half-width chart
PIXELS_PER_CHARACTER, WIDEST_COLUMN = 8, 560  # a table cell's text, at the app's font size
CONFUSION_PANELS = (("Stage 1", ("stage1",)), ("End to end: 8 subtypes", ("subtype8",)),
                    ("Patient level: stage 1", ("patient", "stage1")))
ROC_PANELS = (("Stage 1", ("stage1",)), ("8 subtypes, one vs rest", ("subtype8",)))


def no_evaluation_text(card: dict, folder: str) -> str:
    """What to do about a model without figures. `evaluate` needs a run folder with a split.csv: an
    ensemble of members that held out different patients (k-fold) has none, so it says why instead."""
    run = Path(folder).parent
    if (run / "split.csv").is_file():
        return f"This model has no evaluation yet. Run `python -m core evaluate {run}`."
    if card.get("kind") == "ensemble":
        why = card.get("evaluation") or "its members share no test set"
        return f"This ensemble has no evaluation of its own: {why}."
    return "This model has no evaluation yet. Run `python -m core evaluate RUN` on the run folder it was trained in."


def card_summary(card: dict, info: dict) -> dict[str, str]:
    """The model card in four lines (core.app.registry.describe_model gives `info`): its name and
    badges, the evidence behind it, the model, and what it was trained on under which protocol,
    with which recipe and backend. A part the card does not record is left out, not shown as '?'."""
    training = card.get("training") or {}
    counts = training.get("counts") or {}
    learnt = (card.get("evidence") or {}).get("images")
    if counts:
        sizes = "; images " + " · ".join(f"{split} {counts[split]}" for split in ("train", "val", "test") if split in counts)
    else:  # a cross-validated run's final model learns from every image; its figures are out-of-fold
        sizes = f"; weights learnt from {learnt} images" if learnt else ""
    evidence = ""
    if info["evidence"]:
        by_magnification = (card.get("evidence") or {}).get("by_magnification", {})
        evidence = (f"{sentence(info['evidence'])}; by magnification: "
                    + ", ".join(f"{m} {by_magnification[m]}" for m in sorted(
                        by_magnification, key=lambda m: (magnification_value(m) or 10**6, m))))
    return {"title": f"**{info['name']}**" + (" · :red-badge[DEMO]" if info["demo"] else "")
                     + (" · :orange-badge[LIMITED DATA]" if info["limited"] and not info["demo"] else ""),
            "evidence": evidence,
            "model": f"Backbone {info['backbone']} ({info['hierarchy']}), input {card.get('input_size')} px, "
                     f"initial weights: {card.get('weights_init', 'unknown')}",
            "training": f"Trained on {info['data']}  \nSplit protocol: {info['protocol']}{sizes}  \n"
                        + recipe_text(training) + backend_text(card)}


def recipe_text(training: dict) -> str:
    """'Field recipe, 30 epochs, batch 64, ...' or 'Mode finetune, 30 epochs, ...': what the card records."""
    value = {**(training.get("settings") or {}), **training}.get
    if value("pipeline") == "fields":
        parts = ["Field recipe", f"{value('epochs')} epochs" if value("epochs") else "",
                 f"batch {value('batch_size')}" if value("batch_size") else "",
                 "band-limited fields" if value("band_limit") else "",
                 "subtype heads refitted" if value("subtype_refit") or value("refit_subtypes") else ""]
    else:
        parts = [f"mode {value('mode')}" if value("mode") else "", f"{value('epochs')} epochs" if value("epochs") else ""]
    parts += [f"balancing {value('balance') or 'none'}", f"magnification {value('magnification') or 'all'}",
              f"{value('pipeline')} pipeline" if value("pipeline") and value("pipeline") != "fields" else ""]
    return sentence(", ".join(part for part in parts if part))


def backend_text(card: dict) -> str:
    """A line break and 'Trained with Keras backend X version in S s' from the card (field runs
    record it), else ''."""
    training = card.get("training") or {}
    backend = training.get("backend") or (card.get("versions") or {}).get("keras_backend")
    if not backend:
        return ""
    versions = card.get("versions") or {}
    version = versions.get("jax") if backend == "jax" else versions.get("tensorflow")
    return (f"  \nTrained with Keras backend {backend}" + (f" {version}" if version else "")
            + (f" in {training['seconds']:.0f} s" if training.get("seconds") else ""))


def calibration_caption(calibration: dict) -> str:
    """The method and temperatures (naming any at the edge of the search range, where the fit was stopped, not
    settled), what the before/after figures were measured on, or that they were not measured."""
    edges = [head for head, t in calibration["temperatures"].items()
             if not TEMPERATURE_RANGE[0] * 1.001 < t < TEMPERATURE_RANGE[1] * 0.999]
    text = (f"{calibration['method']}; temperatures "
            + ", ".join(f"{head} {t:.2f}" for head, t in calibration["temperatures"].items())
            + (f" ({', '.join(edges)} at the edge of the search range {TEMPERATURE_RANGE[0]}-{TEMPERATURE_RANGE[1]:g})"
               if edges else "") + ".")
    if not calibration.get("measured"):
        return text + (" Its effect (ECE and Brier score before and after) was not measured for this model: "
                       "no reliability diagram can be shown.")
    return (text + f" ECE over {calibration.get('ece_bins', 15)} confidence bins; each stage-2 head is judged on "
            "the images of its own class." + (f" {sentence(calibration['measured_note'])}"
                                              if calibration.get("measured_note") else ""))


def per_magnification_table(metrics: dict, predictions: pd.DataFrame | None = None) -> pd.DataFrame:
    """Stage-1 and 8-subtype figures per magnification, with 95% intervals (core.app.held_out), images,
    patients (cases) and protocol."""
    held_out = held_out_rows(predictions, metrics)
    return pd.DataFrame([{"magnification": m, "stage 1 accuracy": b["stage1"]["accuracy"],
                          "malignant recall": b["stage1"].get("malignant_recall"),
                          "8-subtype accuracy": b["subtype8"]["accuracy"],
                          **magnification_intervals(held_out, m, b),
                          "images": b["stage1"]["data"]["images"], "cases": b["stage1"]["data"].get("cases"),
                          "protocol": b["stage1"]["data"]["protocol"]}
                         for m, b in (metrics.get("per_magnification") or {}).items()]).round(4)


def panels(metrics: dict, which: tuple, needs: str) -> list[tuple[str, tuple, dict]]:
    """(title, path, block) of the metric blocks in `which` that hold `needs` (a confusion matrix,
    ROC curve points)."""
    found = [(title, path, metric_block(metrics, path) or {}) for title, path in which]
    return [(title, path, block) for title, path, block in found if block.get(needs)]


def chart_title(title: str, block: dict) -> dict:
    """A chart's plotly title for a half-width column: the short title, and the data it was computed on (split,
    protocol, images, cases) as a subtitle wrapped onto lines instead of one title cut off where the size is."""
    lines = textwrap.wrap(scope_text(block.get("data")), SUBTITLE_CHARACTERS)
    return {"text": title, "subtitle": {"text": "<br>".join(lines)}}


def text_widths(frame: pd.DataFrame) -> dict[str, int]:
    """Each text column's width in pixels, enough for its header and longest entry (up to WIDEST_COLUMN): the
    table widget sizes a column from its first rows and cut a longer entry further down ('value' with its 95%
    interval) or at the right edge ('computed on', 'protocol')."""
    widths = {}
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            longest = max([len(str(column)), *(len(str(value)) for value in frame[column])])
            widths[column] = min(WIDEST_COLUMN, PIXELS_PER_CHARACTER * longest + 24)
    return widths


def history_caption(card: dict, protocol: str) -> str:
    counts = (card.get("training") or {}).get("counts") or {}
    return (f"Loss and metrics per epoch on the training split ({counts.get('train', '?')} images) and, "
            f"for 'val_' curves, the validation split ({counts.get('val', '?')} images); {protocol} protocol.")
