"""A run's held-out figures and what may replace them: the files an evaluation writes (outputs_of),
the images it reads (read_rows), and, when some of those are missing, why it writes nothing.

metrics.json, the model card's metrics and report.html are the test split's figures on every image
split.csv lists for it, as the card's evidence says; a look at other images never lands there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from core.data.splits import is_synthetic

HELD_OUT = "test"  # the one split whose evaluation is the model's: its card, metrics.json, report.html


def outputs_of(run_dir: Path, split: str, subset: bool = False) -> tuple[Path, Path]:
    """(metrics, report) files of an evaluation on `split`: metrics.json and report.html for the test split,
    metrics_<split>.json and report_<split>.html for another, so that a look at validation or training
    images never stands in for the held-out figures the app shows as the model's; a subset's (some images
    missing, evaluate --allow-missing) metrics_<split>_subset.json and report_<split>_subset.html."""
    suffix = f"_{split}_subset" if subset else "" if split == HELD_OUT else f"_{split}"
    return run_dir / f"metrics{suffix}.json", run_dir / f"report{suffix}.html"


def read_rows(table: pd.DataFrame, split: str, baselines: bool) -> pd.Series:
    """The rows an evaluation of `split` reads: its images, the validation images its thresholds are chosen
    on and, with baselines, the real training images they are fitted on."""
    train = (table["split"] == "train") & ~is_synthetic(table) if baselines else False
    return (table["split"] == split) | (table["split"] == "val") | train


def partial_refusal(run_dir: Path, split: str, absent: pd.DataFrame, unreadable: list[str]) -> str:
    """Why an evaluation that lacks some of its images writes nothing (without --allow-missing): the figures
    of the rest would replace the run's, and disagree with the card's evidence (which names every image)."""
    (metrics, report), subset = outputs_of(run_dir, split), outputs_of(run_dir, split, subset=True)
    by_split = ", ".join(f"{name} {n}" for name, n in absent["split"].value_counts().items())
    lacking = " and ".join([f"{len(absent)} missing ({by_split})"] * bool(len(absent))
                           + [f"{len(unreadable)} unreadable"] * bool(unreadable))
    examples = ", ".join(os.path.basename(p) for p in [*absent["path"], *unreadable][:3])
    kept = f"{metrics.name}, the model card and {report.name}" if split == HELD_OUT else f"{metrics.name}, {report.name}"
    return (f"This evaluation of the {split} split lacks some of the images it reads: {lacking} (e.g. {examples}): "
            f"the figures of the rest would not be the run's, so {kept} are left as they are. Find them again "
            f"(--data DIR, matched by BreakHis file name), or pass --allow-missing to write the subset's figures to "
            f"{subset[0].name} and {subset[1].name}.")


def none_found(run_dir: Path, data_dir, split: str) -> str:
    """Why no image of `split` was found: with --data, none of its BreakHis file names is in that folder."""
    listed = int((pd.read_csv(run_dir / "split.csv")["split"] == split).sum())
    if not listed:
        return f"{run_dir / 'split.csv'} lists no {split!r} images"
    if data_dir is None:
        return (f"No readable {split!r} images in {run_dir / 'split.csv'} ({listed} listed images not found; "
                "pass --data DIR to find them by name)")
    return (f"None of the {listed} {split!r} images listed in {run_dir / 'split.csv'} is under {data_dir}: images "
            "are matched by their BreakHis file name (e.g. SOB_B_A-14-22549AB-40-001.png), and none of these names "
            "occurs there")
