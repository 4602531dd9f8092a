"""Which real images a run learns from and which it is measured on: one function for every user.

Classifier training, the GAN (which may only learn from the classifier's training patients), the
GAN quality report and the ablation all call `select_images` with a `SplitSpec`, so "trained on
the classifier's train split" means exactly the same images everywhere, k-fold runs included.
The data set is identified by a fingerprint of its file names, not by a path, so a run can be
checked against a generator trained on another machine with the data in another folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import pandas as pd

from core.data.breakhis import IndexResult, index_folder, parse_name, unreadable_images, unreadable_words
from core.data.labels import MAGNIFICATIONS
from core.data.scale import parse_magnification
from core.data.splits import (
    PATIENT,
    PROTOCOL_NAMES,
    assert_no_case_leakage,
    make_split,
    normalise_protocol,
    patient_kfold,
)
from core.errors import UserInputError

log = logging.getLogger(__name__)
NO_SPLIT = "none"  # every image is a training image (a GAN for demonstrations only)
MAGNIFICATION_CHOICES = ("all", *MAGNIFICATIONS)  # every --magnification option's choices


def kfold_problem(folds: int, fold: int | None, protocol: str) -> str | None:
    """The one k-fold rule, or None when the settings keep it: >= 2 folds, 0 <= fold < folds, the
    patient-wise protocol, and no fold without folds. SplitSpec and TrainConfig both ask it."""
    if not folds:
        return None if fold is None else "a fold (--fold) needs a number of folds (--folds)"
    patient_wise = protocol in PROTOCOL_NAMES and normalise_protocol(protocol) == PATIENT
    if folds < 2 or not 0 <= (fold or 0) < folds or not patient_wise:
        return "k-fold needs >= 2 folds (--folds), 0 <= fold (--fold) < folds and the patient-wise protocol (--split)"
    return None


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """How a folder's images become train/val/test: the protocol, its seed, the magnification
    filter and, for k-fold cross-validation, the number of folds and which fold is the test set."""

    protocol: str = PATIENT
    seed: int = 0
    magnification: str = "all"
    folds: int = 0
    fold: int = 0

    def __post_init__(self):
        if self.protocol != NO_SPLIT:
            object.__setattr__(self, "protocol", normalise_protocol(self.protocol))
        problem = kfold_problem(self.folds, self.fold or None, self.protocol)  # fold 0 is also "no fold"
        if problem:
            raise UserInputError(problem)

    @property
    def label(self) -> str:
        """The protocol as every split.csv row and metric block records it."""
        if self.folds:
            return f"{PATIENT} {self.folds}-fold CV (fold {self.fold})"
        return "none: every image is a training image" if self.protocol == NO_SPLIT else self.protocol

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Selection:
    """A folder's images with their split, what was skipped while indexing, and the data's fingerprint."""

    split: pd.DataFrame
    skipped: list[tuple[str, str]]
    fingerprint: str

    def part(self, name: str) -> pd.DataFrame:
        return self.split[self.split["split"] == name]


def every_magnification(magnification) -> bool:
    """Whether a --magnification choice means no choice: "all" (any case) or None."""
    return magnification is None or str(magnification).strip().lower() == "all"


def select_magnification(images: pd.DataFrame, magnification="all") -> pd.DataFrame:
    """Rows at one magnification ("40X", "40x", "40" or 40), or all rows for "all"/None."""
    if every_magnification(magnification):
        return images
    text = str(magnification).strip().upper()
    wanted = text if text.endswith("X") else f"{text}X"
    if wanted not in MAGNIFICATIONS:
        raise UserInputError(f"Unknown magnification {magnification!r}; use 'all' or one of {list(MAGNIFICATIONS)}")
    return images[images["magnification"] == wanted]


def no_real_images(magnification, data, skipped=()) -> UserInputError:
    """The one message for a folder with no real image to learn from at the chosen magnification; `skipped`
    (its IndexResult.skipped) adds the files named as BreakHis images of that magnification that are no images."""
    wanted = None if every_magnification(magnification) else f"{parse_magnification(magnification)}X"
    where = f" at {wanted}" if wanted else ""
    unread = [path for path in unreadable_images(list(skipped)) if wanted in (None, parse_name(path).magnification)]
    return UserInputError(f"No real BreakHis images{where} in {data} (files named like SOB_B_A-14-22549AB-200-001.png, "
                          "in any folder layout; `python -m core index DATA` lists what it skipped and why)"
                          + (f": {unreadable_words(unread)}" if unread else ""))


def fingerprint(images: pd.DataFrame) -> str:
    """Identity of a data set that survives moving it: a hash of its sorted file names."""
    names = sorted(os.path.basename(path) for path in images["path"])
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def assign_splits(images: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    """`images` at the spec's magnification, with "split" and "protocol" columns; no case in two splits."""
    images = select_magnification(images, spec.magnification)
    if len(images) == 0:
        raise UserInputError(f"No images at magnification {spec.magnification}")
    if spec.protocol == NO_SPLIT:
        split = images.assign(split="train")
    elif spec.folds:
        split = patient_kfold(images, k=spec.folds, seed=spec.seed)[spec.fold]
    else:
        split = make_split(images, protocol=spec.protocol, seed=spec.seed)
    split["protocol"] = spec.label
    if spec.protocol == PATIENT:
        assert_no_case_leakage(split)
    return split


def scan(data_dir, report_skipped: bool = True) -> IndexResult:
    """Index `data_dir` (any layout); the scan report (skipped files, byte-identical copies left out, those of
    another patient named, files whose folder contradicts their name) goes to the log, i.e. the training log.
    Both pipelines' runs index their data through here."""
    index: IndexResult = index_folder(data_dir)
    if (index.skipped or index.misfiled) and report_skipped:
        log.warning(index.summary())
    return index


def select_images(data_dir, spec: SplitSpec, report_skipped: bool = True) -> Selection:
    """Index `data_dir` (scan: its report logged) and split it by `spec`."""
    index = scan(data_dir, report_skipped)
    if len(index.images) == 0:
        unread = unreadable_words(unreadable_images(index.skipped))
        raise UserInputError(f"No BreakHis images found in {data_dir}; {len(index.skipped)} files skipped"
                             + (f": {unread}" if unread else ""))
    return Selection(assign_splits(index.images, spec), index.skipped, fingerprint(index.images))


def relative_to_data(table: pd.DataFrame, data_dir) -> pd.DataFrame:
    """The table with paths under `data_dir` made relative to it (what a run's split.csv records),
    so a run folder stays valid when the data set moves; paths outside it (GAN images) stay as they are."""
    root = Path(data_dir).resolve()

    def relative(path: str) -> str:
        resolved = Path(path).resolve()
        return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(path)

    return table.assign(path=table["path"].map(relative))


def resolve_paths(table: pd.DataFrame, data_dir) -> pd.DataFrame:
    """Inverse of `relative_to_data`: relative paths are joined to `data_dir`, absolute ones kept."""
    root = Path(data_dir)
    return table.assign(path=[str(root / p) if not Path(p).is_absolute() else p for p in table["path"]])
