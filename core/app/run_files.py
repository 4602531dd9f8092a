"""The files a run leaves beside its model, read so that a damaged one is a message, not a traceback.

A run folder is runs/NAME/{split.csv, config.json, metrics.json, cv.json, history.csv, model/};
a bundled model keeps the same files inside its model folder. Any of them can be missing, cut
short by a crash or edited by hand, and the pages that show them (Model performance, Compare,
Retrain, GAN gallery) must keep serving: each reader returns what it could read and, for a
damaged file, one sentence saying which file and why. Valid JSON of another shape (a block of
another type, a required key missing) counts as damaged: that block, or the file, is left out.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd

from core.evaluation.intervals import HEADLINE
from core.jsonfile import read_json

NUMBER = (int, float, type(None))
# The top-level blocks of metrics.json (and a card's metrics) the pages read, with the type each must have.
METRICS_SHAPE = {**{key: dict for key in ("data", "test_set", "stage1", "stage2", "subtype8", "patient", "intervals",
                                           "per_magnification", "calibration", "uncertainty", "baselines")},
                 **{key: NUMBER for key in HEADLINE}, "members": list, "protocol": (str, type(None))}
# cv.json (core.training.crossval): what the Model performance page needs of it.
CV_SHAPE = {"protocol": str, "mean_std": dict}


def run_file(model_folder, name: str) -> Path | None:
    """A run's file: in the model folder (bundled models) or in its run folder (runs/NAME/model)."""
    folder = Path(model_folder)
    return next((d / name for d in (folder, folder.parent) if (d / name).is_file()), None)


def read_json_file(path: str | os.PathLike | None) -> tuple[dict | None, str | None]:
    """(the JSON object, None); (None, None) when there is no file; (None, why) when it is damaged
    or not a JSON object."""
    if path is None or not Path(path).is_file():
        return None, None
    try:
        value = read_json(path)
    except (OSError, ValueError) as error:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, f"{path} could not be read ({type(error).__name__}: {error})"
    if not isinstance(value, dict):
        return None, f"{path} could not be read (it holds a {type(value).__name__}, not a JSON object)"
    return value, None


def read_csv_file(path: str | os.PathLike | None) -> tuple[pd.DataFrame | None, str | None]:
    """The same for a CSV table (history.csv)."""
    if path is None or not Path(path).is_file():
        return None, None
    try:
        return pd.read_csv(path), None
    except (OSError, ValueError) as error:  # pandas' ParserError and EmptyDataError are ValueErrors
        return None, f"{path} could not be read ({type(error).__name__}: {error})"


def _kind_name(kind) -> str:
    """A JSON type in words, for a type found or a type (or tuple of types) wanted."""
    names = {dict: "an object", list: "a list", NUMBER: "a number", int: "a number", float: "a number",
             bool: "true or false", type(None): "null", str: "text"}
    return names.get(kind, "text")


def wrong_blocks(value: dict, shape: dict) -> list[str]:
    """The keys of `value` whose type is not the one `shape` gives, each as "'key' is text, not an object"."""
    return [f"{key!r} is {_kind_name(type(value[key]))}, not {_kind_name(kind)}" for key, kind in shape.items()
            if key in value and not isinstance(value[key], kind) and not (kind is dict and value[key] is None)]


def checked_metrics(metrics: dict, source) -> tuple[dict, str | None]:
    """metrics without the blocks of another type than the pages read, and a sentence naming them."""
    wrong = wrong_blocks(metrics, METRICS_SHAPE)
    if not wrong:
        return metrics, None
    kept = {key: value for key, value in metrics.items() if key not in METRICS_SHAPE
            or isinstance(value, METRICS_SHAPE[key])}
    return kept, f"{source} has blocks of an unexpected shape ({'; '.join(wrong)}): they are left out"


def checked_cross_validation(cv: dict | None, source) -> tuple[dict | None, str | None]:
    """cv.json, or None with a sentence when it lacks what the page shows (protocol, mean_std of objects)."""
    if cv is None:
        return None, None
    wrong = [f"it has no {key!r}" for key in CV_SHAPE if key not in cv] + wrong_blocks(cv, CV_SHAPE)
    if not wrong and not all(isinstance(summary, dict) for summary in cv["mean_std"].values()):
        wrong = ["'mean_std' holds something other than objects"]
    if wrong:
        return None, f"{source} could not be used ({'; '.join(wrong)}): the cross-validation summary is left out"
    return cv, None


@dataclasses.dataclass
class RunFiles:
    """What a model's run left beside it; `problems` names every file that was there but damaged."""

    metrics: dict  # metrics.json, else the metrics stored in the card, else {}
    history: pd.DataFrame | None
    config: dict | None
    cross_validation: dict | None
    problems: list[str]
    metrics_source: str = "the model card"  # where `metrics` came from, to name in a message


def read_run_files(model_folder, card: dict) -> RunFiles:
    """The run's files; a metrics.json that cannot be read, or has blocks of another shape, gives way to the
    metrics stored in the card (the figures the sidebar shows), so no two places disagree about one model."""
    problems = []

    def kept(result):
        value, problem = result
        if problem:
            problems.append(problem)
        return value

    metrics_path, cv_path = run_file(model_folder, "metrics.json"), run_file(model_folder, "cv.json")
    stored = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
    metrics = kept(read_json_file(metrics_path))
    if metrics is not None:  # partly damaged: the card's figures, which the sidebar shows, when it has them
        metrics, problem = checked_metrics(metrics, metrics_path)
        if problem and stored:
            problems.append(problem.replace(": they are left out", "; showing the metrics stored in the model card "
                                                                   "instead"))
            metrics = None
        elif problem:
            problems.append(problem)
    elif problems:
        problems[-1] += "; showing the metrics stored in the model card instead"
    source = str(metrics_path) if metrics is not None else f"the model card of {model_folder}"
    if metrics is None:
        metrics = kept(checked_metrics(stored, source))
    return RunFiles(metrics=metrics,
                    history=kept(read_csv_file(run_file(model_folder, "history.csv"))),
                    config=kept(read_json_file(run_file(model_folder, "config.json"))),
                    cross_validation=kept(checked_cross_validation(kept(read_json_file(cv_path)), cv_path)),
                    problems=problems, metrics_source=source)
