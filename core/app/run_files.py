"""The files a run leaves beside its model, read so that a damaged one is a message, not a traceback.

A run folder is runs/NAME/{split.csv, config.json, metrics.json, cv.json, history.csv, model/};
a bundled model keeps the same files inside its model folder. Any of them can be missing, cut
short by a crash or edited by hand, and the pages that show them (Model performance, Compare,
Retrain, GAN gallery) must keep serving: each reader returns what it could read and, for a
damaged file, one sentence saying which file and why.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd

from core.jsonfile import read_json


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


@dataclasses.dataclass
class RunFiles:
    """What a model's run left beside it; `problems` names every file that was there but damaged."""

    metrics: dict  # metrics.json, else the metrics stored in the card, else {}
    history: pd.DataFrame | None
    config: dict | None
    cross_validation: dict | None
    problems: list[str]


def read_run_files(model_folder, card: dict) -> RunFiles:
    problems = []

    def kept(result):
        value, problem = result
        if problem:
            problems.append(problem)
        return value

    metrics = kept(read_json_file(run_file(model_folder, "metrics.json")))
    if metrics is None and problems:
        problems[-1] += "; showing the metrics stored in the model card instead"
    return RunFiles(metrics=metrics if metrics is not None else (card.get("metrics") or {}),
                    history=kept(read_csv_file(run_file(model_folder, "history.csv"))),
                    config=kept(read_json_file(run_file(model_folder, "config.json"))),
                    cross_validation=kept(read_json_file(run_file(model_folder, "cv.json"))),
                    problems=problems)
