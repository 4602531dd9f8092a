"""Class-imbalance strategies for the training split, and a before/after preview of each.

BreakHis is dominated by ductal carcinoma (3,451 of 7,909 images; adenosis has 444), so a model
can score well by favouring it. Each strategy here changes only the *training* table: weights,
duplicated minority images, a thinned majority, or GAN images added under unmistakable
`SYN_...` names. Validation and test stay real and untouched, which is why every function
refuses a table that contains val/test rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.data.breakhis import subtype_counts
from core.data.labels import SUBTYPES
from core.data.synthetic import find_synthetic_images
from core.errors import UserInputError

STRATEGIES = ("none", "class_weights", "oversample", "undersample", "synthetic")


def _training_only(train_df: pd.DataFrame) -> None:
    if len(train_df) == 0:
        raise ValueError("The training table is empty; nothing to balance.")
    if "split" in train_df and (train_df["split"] != "train").any():
        found = sorted(set(train_df["split"]) - {"train"})
        raise ValueError(f"Balance the training split only; the table also holds {found} rows.")


def class_weights(train_df: pd.DataFrame, column: str = "subtype") -> dict[str, float]:
    """'Balanced' weights n / (k * count): every class contributes the same total weight."""
    _training_only(train_df)
    counts = train_df[column].value_counts()
    return {name: float(len(train_df) / (len(counts) * count)) for name, count in counts.items()}


def oversample(train_df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Repeat random minority images until every subtype has as many as the largest one.

    Every original image is kept once; only the extra copies are drawn (with replacement).
    """
    _training_only(train_df)
    rng = np.random.default_rng(seed)
    counts = train_df["subtype"].value_counts()
    subtypes = train_df["subtype"].to_numpy()
    extra = []
    for subtype in sorted(counts.index):
        rows = np.flatnonzero(subtypes == subtype)
        extra.extend(rng.choice(rows, size=int(counts.max() - counts[subtype]), replace=True))
    return pd.concat([train_df, train_df.iloc[extra]], ignore_index=True)


def undersample(train_df: pd.DataFrame, target: int | str = "second_largest", seed: int = 0) -> pd.DataFrame:
    """Drop random images of subtypes above `target` images.

    "second_largest" (default) cuts only the majority (ductal carcinoma) down to the next subtype;
    "smallest" equalises everything to the rarest subtype; an int is an explicit cap.
    """
    _training_only(train_df)
    counts = train_df["subtype"].value_counts()
    if target == "second_largest":
        cap = int(counts.iloc[1]) if len(counts) > 1 else int(counts.iloc[0])
    elif target == "smallest":
        cap = int(counts.min())
    elif isinstance(target, (int, np.integer)) and target > 0:
        cap = int(target)
    else:
        raise UserInputError(f"Undersampling target must be 'second_largest', 'smallest' or a positive int, got {target!r}.")
    rng = np.random.default_rng(seed)
    subtypes = train_df["subtype"].to_numpy()
    keep = []
    for subtype in sorted(counts.index):
        rows = np.flatnonzero(subtypes == subtype)
        keep.extend(rows if len(rows) <= cap else rng.choice(rows, size=cap, replace=False))
    return train_df.iloc[np.sort(keep)].reset_index(drop=True)


def synthetic_fill(train_df: pd.DataFrame, synthetic_dir: str | Path, subtypes=None,
                   target: int | str = "max", seed: int = 0) -> pd.DataFrame:
    """Add GAN images to minority subtypes of the training table, up to `target` images each.

    subtypes=None fills every subtype below the target. If the folder has too few images for a
    subtype, all of them are used and the shortfall is recorded in `result.attrs["shortfall"]`.
    Added rows have synthetic=True and case "synthetic", so they can never leak into val/test.
    """
    _training_only(train_df)
    available = find_synthetic_images(synthetic_dir)
    counts = train_df["subtype"].value_counts()
    goal = int(counts.max()) if target == "max" else int(target)
    if subtypes is None:
        subtypes = [s for s in SUBTYPES if counts.get(s, 0) < goal]
    unknown = sorted(set(subtypes) - set(SUBTYPES))
    if unknown:
        raise UserInputError(f"Unknown subtype(s) {unknown}; choose from {list(SUBTYPES)}.")

    rng = np.random.default_rng(seed)
    used = set(train_df["path"])
    added, shortfall = [], {}
    for subtype in subtypes:
        need = goal - int(counts.get(subtype, 0))
        if need <= 0:
            continue
        pool = available[(available["subtype"] == subtype) & ~available["path"].isin(used)]
        take = min(need, len(pool))
        if take < need:
            shortfall[subtype] = need - take
        chosen = pool.iloc[np.sort(rng.choice(len(pool), size=take, replace=False))] if take else pool.iloc[:0]
        added.append(chosen)
    new_rows = pd.concat(added, ignore_index=True) if added else available.iloc[:0]
    if "split" in train_df:
        new_rows = new_rows.assign(split="train")
    if "protocol" in train_df:
        new_rows = new_rows.assign(protocol=train_df["protocol"].iloc[0])
    result = pd.concat([train_df, new_rows], ignore_index=True) if len(new_rows) else train_df.reset_index(drop=True)
    result.attrs["shortfall"] = shortfall
    return result


def apply_strategy(train_df: pd.DataFrame, strategy: str, synthetic_dir=None, subtypes=None,
                   seed: int = 0) -> tuple[pd.DataFrame, dict[str, float] | None]:
    """Training table after `strategy`, plus subtype weights for "class_weights" (else None)."""
    if strategy not in STRATEGIES:
        raise UserInputError(f"Unknown balancing strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    _training_only(train_df)
    if strategy == "class_weights":
        return train_df.reset_index(drop=True), class_weights(train_df)
    if strategy == "oversample":
        return oversample(train_df, seed=seed), None
    if strategy == "undersample":
        return undersample(train_df, seed=seed), None
    if strategy == "synthetic":
        if synthetic_dir is None:
            raise UserInputError("The 'synthetic' strategy needs a folder of GAN images (synthetic_dir / --synthetic-dir).")
        return synthetic_fill(train_df, synthetic_dir, subtypes=subtypes, seed=seed), None
    return train_df.reset_index(drop=True), None


def balance_preview(train_df: pd.DataFrame, strategy: str, synthetic_dir=None, subtypes=None,
                    seed: int = 0) -> pd.DataFrame:
    """Per subtype: images before, after, synthetic added, weight, and effective count.

    "effective" is what the loss sees: images after the strategy times their class weight
    (for "class_weights" every subtype's effective count becomes n / k). For "synthetic",
    `preview.attrs["shortfall"]` says how many GAN images each subtype still lacked.
    """
    after, weights = apply_strategy(train_df, strategy, synthetic_dir, subtypes, seed)
    preview = pd.DataFrame(index=pd.Index(SUBTYPES, name="subtype"))
    preview["before"] = subtype_counts(train_df)
    preview["after"] = subtype_counts(after)
    preview["synthetic_added"] = subtype_counts(_synthetic(after)) - subtype_counts(_synthetic(train_df))
    preview["weight"] = [float(weights.get(s, 0.0)) if weights else 1.0 for s in SUBTYPES]
    preview["effective"] = preview["after"] * preview["weight"]
    preview.attrs["shortfall"] = dict(after.attrs.get("shortfall", {}))
    return preview


def _synthetic(images: pd.DataFrame) -> pd.DataFrame:
    return images[images["synthetic"].astype(bool)] if "synthetic" in images else images.iloc[:0]
