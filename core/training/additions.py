"""Images a run adds to its training patients only, never to validation, test or a fold's held-out
patients: images a pathologist reviewed (the review queue's export, `--reviewed-dir`) and, in the
fields recipe, GAN images topping up minority subtypes (`--balance synthetic`).

TensorFlow-free (the fields recipe runs under JAX); the tf.data pipeline (core.training.fit) and the
fields recipe (core.training.field_run) take reviewed images through the same rule.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from core.data.balance import synthetic_fill
from core.data.breakhis import index_folder
from core.data.fields import band_limit_all, load_fields
from core.data.synthetic import refuse_leaky_folder
from core.errors import UserInputError

log = logging.getLogger(__name__)


def _may_train(reviewed: pd.DataFrame, held_out_cases) -> np.ndarray:
    """Which reviewed rows may train a model tested on held_out_cases: none of those patients (the
    ones left out are logged), so that held-out patients stay unseen."""
    keep = ~reviewed["case"].isin(set(held_out_cases)).to_numpy()
    if not keep.all():
        log.warning("%d reviewed image(s) left out: their patients are held out", (~keep).sum())
    return keep


def reviewed_for_training(folder, held_out_cases) -> pd.DataFrame:
    """The reviewed images of `folder` (BreakHis names, as core.store.reviews exports them, with the
    reviewed class and subtype) that may train a model tested on held_out_cases (_may_train)."""
    reviewed = index_folder(folder).images
    if reviewed.empty:
        raise UserInputError(f"No reviewed images in {folder} (export them with `python -m core reviews export`)")
    return reviewed[_may_train(reviewed, held_out_cases)].reset_index(drop=True)


class ReviewedFields:
    """A fields run's reviewed images, decoded once (at the run's detail) and added to each model's
    training fields without the patients that model is tested on."""

    def __init__(self, config):
        self.rows = reviewed_for_training(config.reviewed_dir, ()) if config.reviewed_dir else None
        self.fields = None
        if self.rows is not None:
            fields = load_fields(self.rows["path"])
            self.fields = band_limit_all(fields) if config.band_limit else fields

    def added_to(self, rows: pd.DataFrame, fields: np.ndarray, held_out_cases=()) -> tuple[pd.DataFrame, np.ndarray]:
        """(rows, fields) of a model's training patients plus the reviewed images of other patients."""
        if self.rows is None:
            return rows, fields
        keep = _may_train(self.rows, held_out_cases)
        combined = pd.concat([rows, self.rows[keep].assign(split="train", reviewed=True)], ignore_index=True)
        combined.attrs = dict(rows.attrs)  # a GAN fill's shortfall, for the card
        return combined, np.concatenate([fields, self.fields[keep]]) if keep.any() else fields


def from_reviews(rows: pd.DataFrame) -> pd.Series:
    """Which of a model's training rows came from the reviews (ReviewedFields marks them)."""
    return rows["reviewed"].eq(True) if "reviewed" in rows else pd.Series(False, index=rows.index)


def reviewed_count(rows: pd.DataFrame) -> int:
    """How many of a model's training rows came from the reviews."""
    return int(from_reviews(rows).sum())


def gan_fill(config, table: pd.DataFrame, train: np.ndarray, data_fingerprint: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The training rows plus GAN images topping up minority subtypes (core.data.balance.synthetic_fill),
    and the fields of the added images, restored like real ones; refused when a generator behind them
    may have seen this run's validation or test patients (core.data.synthetic). data_fingerprint: the
    run's data (core.training.field_run.data_fingerprint: every real image, not only the run's
    magnification), as the generator's training recorded it."""
    if not config.allow_gan_leak:
        refuse_leaky_folder(config.synthetic_dir, data_fingerprint, config.split_spec())
    filled = synthetic_fill(table.iloc[train].assign(split="train"), config.synthetic_dir,
                            subtypes=config.synthetic_subtypes, seed=config.seed)
    added = load_fields(filled.loc[filled["synthetic"].astype(bool), "path"], own_images=True)
    return filled, band_limit_all(added) if config.band_limit else added
