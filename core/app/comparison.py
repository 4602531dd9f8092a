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

from core.evaluation.intervals import format_interval
from core.jsonfile import read_json
from core.model.folders import read_card

HEADLINE = ("stage1_accuracy", "stage1_balanced_accuracy", "malignant_recall", "stage1_auc", "subtype_macro_f1")


@dataclasses.dataclass
class Run:
    folder: str  # the model folder
    name: str
    card: dict
    metrics: dict | None
    history: pd.DataFrame | None
    config: dict | None

    @property
    def test_set(self) -> tuple[str, str] | None:
        """(protocol, fingerprint of the test images): equal for runs that may share a table."""
        if not self.metrics or not self.metrics.get("test_set"):
            return None
        return str(self.metrics.get("protocol")), self.metrics["test_set"]["fingerprint"]


def _beside(folder: Path, name: str) -> Path | None:
    """A run's file: in the model folder (bundled models) or its run folder (runs/NAME/model)."""
    return next((d / name for d in (folder, folder.parent) if (d / name).is_file()), None)


def load_run(folder: str) -> Run:
    folder_path = Path(folder)
    card = read_card(folder_path)
    metrics_file, history_file, config_file = (_beside(folder_path, n) for n in ("metrics.json", "history.csv",
                                                                                 "config.json"))
    metrics = read_json(metrics_file) if metrics_file else card.get("metrics")
    return Run(str(folder_path), card.get("name", folder_path.name), card, metrics,
               pd.read_csv(history_file) if history_file else None, read_json(config_file) if config_file else None)


def comparable_groups(runs: list[Run]) -> dict[tuple | None, list[Run]]:
    """Runs grouped by (protocol, test images); key None holds the runs without an evaluation."""
    groups: dict = {}
    for run in runs:
        groups.setdefault(run.test_set, []).append(run)
    return groups


def metrics_side_by_side(runs: list[Run]) -> pd.DataFrame:
    """One row per headline metric and level, one column per run (value with its 95% interval)."""
    rows = []
    for level in ("image", "patient"):
        for key in HEADLINE:
            row = {"level": level, "metric": key.replace("_", " ")}
            for run in runs:
                block = ((run.metrics.get("intervals") or {}).get(level) or {}).get(key)
                row[run.name] = format_interval(block) if block else (
                    f"{run.metrics[key]:.3f}" if level == "image" and run.metrics.get(key) is not None else "n/a")
            rows.append(row)
    first = runs[0].metrics
    rows.append({"level": "", "metric": "computed on",
                 **{run.name: f"{first['data']['images']} images, {first['data']['cases']} cases, {first['protocol']}"
                    for run in runs}})
    return pd.DataFrame(rows)


def config_differences(runs: list[Run]) -> pd.DataFrame:
    """The settings (config.json) in which the runs differ; paths and bookkeeping left out."""
    ignored = {"out", "data", "echo_stdout", "counts", "skipped_files", "distribution"}
    configs = {run.name: run.config or {} for run in runs}
    keys = sorted({k for c in configs.values() for k in c} - ignored)
    differing = [k for k in keys if len({repr(c.get(k)) for c in configs.values()}) > 1]
    return pd.DataFrame([{"setting": k, **{name: c.get(k) for name, c in configs.items()}} for k in differing])


def curves(runs: list[Run]) -> pd.DataFrame:
    """Long table (model, epoch, metric, value) of the runs' losses, to overlay."""
    frames = []
    for run in runs:
        if run.history is None:
            continue
        history = run.history if "epoch" in run.history else run.history.assign(epoch=range(1, len(run.history) + 1))
        wanted = [c for c in ("loss", "val_loss", "stage1_accuracy", "val_stage1_accuracy") if c in history]
        long = history.melt(id_vars="epoch", value_vars=wanted, var_name="metric", value_name="value")
        frames.append(long.assign(model=run.name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model", "epoch", "metric", "value"])
