"""Trained models side by side, only where the comparison is fair.

Two evaluations are comparable when they were computed on the same held-out images (the
fingerprint of the test images, core.evaluation.evaluate) under the same split protocol; anything
else is grouped apart and marked, never mixed into one table. Next to the metrics: the training
curves overlaid and the settings in which the runs differ.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import plotly.express as px

from core.app.performance import cross_validation_caption, cross_validation_table, protocol_kind
from core.app.registry import model_badge, short_location
from core.app.run_files import read_run_files
from core.evaluation.intervals import HEADLINE, HEADLINE_NAMES, format_interval
from core.evaluation.metrics import split_name
from core.model.folders import ENSEMBLE, card_is_demo, card_kind, files_problem, read_card


@dataclasses.dataclass
class Run:
    folder: str  # the model folder
    name: str
    card: dict
    metrics: dict | None
    history: pd.DataFrame | None
    config: dict | None
    problems: list[str] = dataclasses.field(default_factory=list)
    cross_validation: dict | None = None  # cv.json, checked (core.app.run_files)

    @property
    def test_set(self) -> tuple[str, str] | None:
        """(protocol, fingerprint of the test images): equal for runs that may share a table."""
        fingerprint = ((self.metrics or {}).get("test_set") or {}).get("fingerprint")
        if not isinstance(fingerprint, str):  # no evaluation, or a test_set block edited away
            return None
        return str(self.metrics.get("protocol") or "unknown protocol"), fingerprint

    @property
    def demo(self) -> bool:
        """A DEMO model has no valid accuracy: the Model performance page shows none of its figures."""
        return card_is_demo(self.card)  # the one rule, as describe_model reads it

    @property
    def badge(self) -> str:
        """'DEMO · name (backbone)', 'LIMITED DATA · ...': the label every prediction of the model carries."""
        try:
            return model_badge({**self.card, "name": self.name})
        except (KeyError, TypeError, ValueError, AttributeError):  # an evidence block edited by hand
            return ("DEMO · " if self.demo else "") + f"{self.name} (its card's evidence cannot be read)"


def load_run(folder: str) -> Run:
    """A model folder and its run's files; a damaged file is left out and named in `problems`."""
    card = read_card(folder)
    files = read_run_files(folder, card)
    return Run(str(Path(folder)), card_name(card, folder), card, files.metrics or None, files.history,
               files.config or card_settings(card), files.problems, files.cross_validation)


def card_settings(card: dict) -> dict | None:
    """The settings a fields run trained with, kept in its card (it writes no config.json): the same
    TrainConfig fields as a tf.data run's config.json, less its data and output paths; one left to the
    pipeline (null, e.g. the learning rate) is the value the card records it used."""
    training = card.get("training") or {}
    settings = training.get("settings")
    if not isinstance(settings, dict):
        return None
    return {key: training.get(key) if value is None else value for key, value in settings.items()}


def card_name(card: dict, folder: str) -> str:
    """The card's name; for a name that is not text (null, a list: edited by hand) or blank, the folder's
    name, as training names a card (RUN for RUN/model): a column and a button are labelled with it."""
    name = card.get("name")
    if isinstance(name, str) and name.strip():
        return name
    folder = Path(folder)
    return folder.parent.name if folder.name == "model" and folder.parent.name else folder.name


def weights_problem(run: Run) -> str | None:
    """Why the model cannot be loaded for prediction (core.model.folders.files_problem, the check the sidebar
    makes before a model is made active); None when its files match its card."""
    return files_problem(run.folder, run.card)


def distinct_names(runs: list[Run]) -> list[Run]:
    """The runs, those sharing a card name (a copied model folder) named with their folder too: the
    tables have a column and the page a button per name, so one would hide or break the other."""
    names = [run.name for run in runs]
    return [dataclasses.replace(run, name=f"{run.name} ({short_location(run.folder)})") if names.count(run.name) > 1
            else run for run in runs]


def comparable_groups(runs: list[Run]) -> dict[tuple | None, list[Run]]:
    """Runs grouped by (protocol, test images); key None holds the runs without an evaluation."""
    groups: dict = {}
    for run in runs:
        groups.setdefault(run.test_set, []).append(run)
    return groups


def group_title(index: int, protocol: str, members: list[Run]) -> str:
    """'Group 1: 2 models on the same patient-wise test images'; a cross-validation's pooled figures
    are out-of-fold images (every patient tested once), not a test split: said in plain words, its protocol after."""
    several = len(members) > 1
    models = f"Group {index + 1}: {len(members)} model{'s' if several else ''} on {'the same ' if several else ''}"
    if split_name({"protocol": protocol}) == "out-of-fold":
        return models + f"images, each scored by a model that never saw its patient during training ({protocol})"
    return models + f"{protocol} test images"


def _figure(metrics: dict, level: str, key: str) -> str:
    """A headline figure with its interval; 'n/a' when absent or of a shape the evaluation never writes."""
    block = ((metrics.get("intervals") or {}).get(level) or {})
    block = block.get(key) if isinstance(block, dict) else None
    if isinstance(block, dict) and block and isinstance(block.get("value"), (int, float, type(None))):
        return format_interval(block)
    value = metrics.get(key)
    return f"{value:.3f}" if level == "image" and isinstance(value, (int, float)) else "n/a"


NOT_SHOWN_DEMO = "not shown: DEMO model"


def metrics_side_by_side(runs: list[Run]) -> pd.DataFrame:
    """One row per headline metric and level, one column per run (value with its 95% interval), under
    each model's badge; a DEMO model's figures are not shown."""
    rows = [{"level": "", "metric": "model", **{run.name: run.badge for run in runs}}]
    for level in ("image", "patient"):
        for key in HEADLINE:
            row = {"level": level, "metric": HEADLINE_NAMES[key]}  # the Model performance page's names
            for run in runs:
                row[run.name] = NOT_SHOWN_DEMO if run.demo else _figure(run.metrics, level, key)
            rows.append(row)
    first = runs[0].metrics
    data = first.get("data") or {}
    rows.append({"level": "", "metric": "computed on",
                 **{run.name: f"{data.get('images', '?')} images, {data.get('cases', '?')} cases, "
                              f"{first.get('protocol') or 'unknown protocol'}" for run in runs}})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- cross-validations on the same folds

def _fold_settings(run: Run, folds: int) -> dict | None:
    """The settings the run's cross-validation drew its folds with (seed, magnification), from the card
    that records them: make-default's recipe (it cross-validated with these), a fields CV's final model
    (its own settings), a tf.data CV's fold model (an ensemble of the folds: its first member)."""
    card = run.card
    if card_kind(card) == ENSEMBLE:
        card = read_card(Path(run.folder) / card["members"][0]["path"])
    training, recipe = card.get("training") or {}, card.get("recipe") or {}
    for settings, applies in ((recipe.get("settings"), recipe.get("cross_validation_folds") == folds),
                              (training.get("settings"), (training.get("settings") or {}).get("folds") == folds),
                              (training, f"{folds}-fold CV" in str(training.get("split_protocol")))):
        if applies and isinstance(settings, dict) and settings.get("seed") is not None:
            return {"data": training.get("data_fingerprint"), "seed": settings["seed"],
                    "magnification": settings.get("magnification") or "all"}  # TrainConfig's default
    return None


def fold_key(run: Run) -> tuple | None:
    """What identifies the folds of the run's cross-validation; equal for runs tested on the same folds.

    cv.json lists each fold's sizes but not its patients. core.data.splits.patient_kfold draws every
    fold's patients from the images (the data fingerprint, their file names), k and the seed alone, so
    these, with the per-fold sizes as a check, stand for the per-fold case lists. None when any is not
    recorded (or the card cannot be read): such a cross-validation is compared with none."""
    cv = run.cross_validation
    if not cv or protocol_kind(cv["protocol"]) != "patient-wise" or not isinstance(cv.get("folds"), int):
        return None
    try:
        folds = sorted((cv.get("per_fold") or {}).get("model") or [], key=lambda fold: fold["fold"])
        sizes = tuple((int(fold["test_images"]), int(fold["test_cases"])) for fold in folds)
        drawn = _fold_settings(run, cv["folds"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError):
        return None
    if len(sizes) != cv["folds"] or not drawn or not drawn["data"]:
        return None
    return "patient-wise", cv["folds"], drawn["data"], drawn["seed"], drawn["magnification"], sizes


def cross_validation_groups(runs: list[Run]) -> list[list[Run]]:
    """The runs whose cross-validations used the same folds, two or more to a group."""
    groups: dict = {}
    for run in runs:
        key = fold_key(run)
        if key is not None:
            groups.setdefault(key, []).append(run)
    return [members for members in groups.values() if len(members) > 1]


def cross_validation_title(index: int, members: list[Run]) -> str:
    """'Cross-validation 1: 2 models on the same 5 patient-wise folds'."""
    folds = fold_key(members[0])[1]
    return f"Cross-validation {index + 1}: {len(members)} models on the same {folds} patient-wise folds"


def cross_validation_data(members: list[Run]) -> str:
    """What the group was tested on (every patient once; the images and patients per fold), and why the
    folds are the same."""
    _, folds, data, seed, magnification, _ = fold_key(members[0])
    return (cross_validation_caption(members[0].cross_validation) + f" The same folds: drawn from the same images "
            f"(data fingerprint {data}, magnification {magnification}) with the same k ({folds}) and seed ({seed}), "
            "which fix every fold's patients, and holding out the same numbers of images and patients.")


def cross_validation_side_by_side(members: list[Run]) -> pd.DataFrame:
    """One row per headline metric and level: per model, its mean +- std over the folds (cv.json) and,
    where cv.json pools the folds' predictions, the pooled figure with its 95% interval; under each
    model's badge, a DEMO model's figures not shown."""
    spread = {run.name: run.cross_validation["mean_std"].get("model") or {} for run in members}
    table = cross_validation_table({"mean_std": spread})  # the Model performance page's table, a column a model
    keys = table["metric"].map({name: key for key, name in HEADLINE_NAMES.items()})
    pooled = {run.name: run.cross_validation.get("pooled") for run in members}
    rows = {"level": ["", *table["level"]], "metric": ["model", *table["metric"]]}
    for run in members:
        figures = {"mean +- std over folds": list(table[run.name])}
        if any(isinstance(block, dict) for block in pooled.values()):
            block = pooled[run.name]
            figures["pooled out-of-fold"] = [_figure(block, level, key) if isinstance(block, dict)
                                             else "n/a: not in cv.json" for level, key in zip(table["level"], keys)]
        for badge, (what, column) in zip((run.badge, ""), figures.items()):  # the badge once a model
            rows[f"{run.name}: {what}"] = [badge, *([NOT_SHOWN_DEMO] * len(column) if run.demo else column)]
    return pd.DataFrame(rows)


def config_differences(runs: list[Run]) -> pd.DataFrame:
    """The settings (config.json, or a fields run's card) in which the runs differ; paths and bookkeeping
    left out (weights_init is what `weights` gave, recorded by tf.data runs only)."""
    ignored = {"out", "data", "echo_stdout", "counts", "skipped_files", "distribution", "weights_init"}
    configs = {run.name: run.config or {} for run in runs}
    keys = sorted({k for c in configs.values() for k in c} - ignored)
    differing = [k for k in keys if len({repr(c.get(k)) for c in configs.values()}) > 1]
    return pd.DataFrame([{"setting": k, **{name: c.get(k) for name, c in configs.items()}} for k in differing])


CURVE_PANELS = {"loss": "Loss", "stage1_accuracy": "Stage-1 accuracy"}  # history column -> its panel


def curves(runs: list[Run]) -> pd.DataFrame:
    """Long table (model, epoch, metric, value, panel, split, series) of the runs' losses and stage-1 accuracies,
    to overlay: one panel per quantity, one series per model and split (training, or validation for 'val_')."""
    frames = []
    for run in runs:
        if run.history is None:
            continue
        history = run.history if "epoch" in run.history else run.history.assign(epoch=range(1, len(run.history) + 1))
        wanted = [c for c in ("loss", "val_loss", "stage1_accuracy", "val_stage1_accuracy") if c in history]
        long = history.melt(id_vars="epoch", value_vars=wanted, var_name="metric", value_name="value")
        frames.append(long.assign(model=run.name))
    if not frames:
        return pd.DataFrame(columns=["model", "epoch", "metric", "value", "panel", "split", "series"])
    long = pd.concat(frames, ignore_index=True)
    validation = long["metric"].str.startswith("val_")
    long["panel"] = long["metric"].str.removeprefix("val_").map(CURVE_PANELS)
    long["split"] = validation.map({True: "validation", False: "training"})
    long["series"] = long["model"] + " · " + long["split"]
    return long


def curves_figure(long: pd.DataFrame):
    """The training curves side by side, each panel on its own y axis (a loss of 0-5 flattened accuracies of
    0-1 on a shared one) and each series (model x split) in its own colour, the validation ones dashed."""
    figure = px.line(long, x="epoch", y="value", color="series", facet_col="panel",
                     color_discrete_sequence=px.colors.qualitative.Dark24,
                     title="Training curves (training split; validation on the validation split)")
    figure.update_yaxes(matches=None, showticklabels=True, title_text=None)
    figure.for_each_trace(lambda trace: trace.update(line_dash="dash" if trace.name.endswith(" · validation") else None))
    figure.for_each_annotation(lambda note: note.update(text=note.text.split("=")[-1]))
    return figure.update_layout(template="plotly_white", height=460, legend_title_text="model · split")
