"""Train/val/test splits that keep every patient on one side of the line.

BreakHis has 7,909 images from only 70 patients (cases), so images of one patient are near
duplicates of each other. Splitting images at random puts the same patient in train and test and
inflates accuracy (the "image-level" numbers most papers report). The default here groups by
`case` (not slide: a case can have several slides, and three cases carry two subtypes), and
stratifies by each case's majority subtype so every subtype reaches every split its case count
allows. The leaky image-level split exists only under the explicit name IMAGE, for comparison.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from core.data.breakhis import identical_files
from core.data.labels import SUBTYPES
from core.errors import UserInputError

PATIENT = "patient-wise"
IMAGE = "image-level (leaky)"
PROTOCOLS = (PATIENT, IMAGE)
SPLITS = ("train", "val", "test")
# Which split gets a subtype first when it has too few cases for all three.
_PRIORITY = ("train", "test", "val")
_ALIASES = {"patient": PATIENT, "patient-wise": PATIENT, "image": IMAGE, "image-level": IMAGE}
# Every spelling normalise_protocol accepts (CLI and full names).
PROTOCOL_NAMES = tuple(sorted({*_ALIASES, *PROTOCOLS}))
# The command-line spellings of PROTOCOLS: the choices of every --split option (train, GAN, forms).
SPLIT_CHOICES = ("patient-wise", "image-level")


def normalise_protocol(protocol: str) -> str:
    """Accept the CLI spellings ("patient-wise", "image-level") as well as the full names."""
    if protocol in PROTOCOLS:
        return protocol
    if protocol in _ALIASES:
        return _ALIASES[protocol]
    raise UserInputError(f"Unknown split protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}.")


def _check_input(images: pd.DataFrame, val_fraction: float, test_fraction: float) -> None:
    if len(images) == 0:
        raise ValueError("Cannot split an empty image table.")
    missing = {"case", "subtype"} - set(images.columns)
    if missing:
        raise ValueError(f"Image table lacks column(s) {sorted(missing)}; index it with core.data.breakhis.")
    if "synthetic" in images and images["synthetic"].astype(bool).any():
        raise ValueError(
            "Synthetic (GAN) images must not be split: split the real images, then add synthetic "
            "ones to the training part only (core.data.balance.synthetic_fill)."
        )
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"Fractions must leave room for training: val={val_fraction}, test={test_fraction}.")


def case_table(images: pd.DataFrame) -> pd.DataFrame:
    """One row per case: its majority subtype (the stratum), all its subtypes, its image count.

    Ties (case 14-13412 has 123 ductal and 123 lobular images) go to the subtype with fewer
    cases, which is the one that needs the case more to be represented.
    """
    cases_per_subtype = images.groupby("subtype")["case"].nunique()
    order = {s: i for i, s in enumerate(SUBTYPES)}
    rows = []
    for case, group in images.groupby("case", sort=True):
        counts = group["subtype"].value_counts()
        ranked = sorted(counts.index, key=lambda s: (-counts[s], cases_per_subtype[s], order.get(s, 99), s))
        rows.append({"case": case, "subtype": ranked[0], "subtypes": frozenset(counts.index),
                     "images": int(len(group))})
    return pd.DataFrame(rows).set_index("case")


def _targets(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Cases per split for a stratum of n cases; small strata still reach test, then val."""
    targets = {split: int(round(n * fraction)) for split, fraction in fractions.items()}
    minimum_n = {"test": 2, "val": 3}  # Train always keeps at least one case.
    for split in targets:
        if fractions[split] > 0 and n >= minimum_n.get(split, 2):
            targets[split] = max(targets[split], 1)
    for split in ("val", "test"):  # Never take the last training case.
        while split in targets and targets[split] > 0 and n - sum(targets.values()) < 1:
            targets[split] -= 1
    return targets


def _allocate(cases: pd.DataFrame, fractions: dict[str, float], rng: np.random.Generator) -> dict[str, str]:
    """case -> split. First cover every subtype (rarest first), then fill each stratum's quota."""
    splits = [s for s in _PRIORITY if s == "train" or fractions.get(s, 0) > 0]
    shuffled = [str(c) for c in rng.permutation(sorted(cases.index))]
    assigned: dict[str, str] = {}

    containing = {s: [c for c in shuffled if s in cases.at[c, "subtypes"]]
                  for s in sorted(set().union(*cases["subtypes"]))}
    for subtype in sorted(containing, key=lambda s: (len(containing[s]), s)):
        # Prefer cases whose majority is this subtype, so mixed cases move only when needed.
        candidates = sorted((c for c in containing[subtype] if c not in assigned),
                            key=lambda c: cases.at[c, "subtype"] != subtype)
        present = {assigned[c] for c in containing[subtype] if c in assigned}
        for split in splits:
            if split not in present and candidates:
                assigned[candidates.pop(0)] = split
                present.add(split)

    for subtype, stratum in cases.groupby("subtype", sort=True):
        quota = _targets(len(stratum), {s: f for s, f in fractions.items() if s in splits})
        have = Counter(assigned[c] for c in stratum.index if c in assigned)
        for case in (c for c in shuffled if c in stratum.index and c not in assigned):
            deficits = {s: quota[s] - have[s] for s in quota}
            best = max(deficits, key=lambda s: (deficits[s], -_PRIORITY.index(s))) if deficits else None
            split = best if best is not None and deficits[best] > 0 else "train"
            assigned[case] = split
            have[split] += 1
    return assigned


def _image_level(images: pd.DataFrame, val_fraction: float, test_fraction: float,
                 rng: np.random.Generator) -> pd.Series:
    """Stratified random split of images, ignoring patients: leaky by design."""
    split = pd.Series("train", index=images.index, dtype=object)
    for _, group in images.groupby("subtype", sort=True):
        quota = _targets(len(group), {"test": test_fraction, "val": val_fraction})
        order = rng.permutation(group.index.to_numpy())
        split.loc[order[: quota["test"]]] = "test"
        split.loc[order[quota["test"]: quota["test"] + quota["val"]]] = "val"
    return split


def make_split(images: pd.DataFrame, protocol: str = PATIENT, val_fraction: float = 0.15,
               test_fraction: float = 0.15, seed: int = 0) -> pd.DataFrame:
    """Copy of `images` with "split" (train/val/test) and "protocol" columns; same seed, same split."""
    protocol = normalise_protocol(protocol)
    _check_input(images, val_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    result = images.copy()
    if protocol == PATIENT:
        fractions = {"test": test_fraction, "val": val_fraction}
        assigned = _allocate(case_table(images), fractions, rng)
        result["split"] = images["case"].map(assigned)
    else:
        result["split"] = _image_level(images, val_fraction, test_fraction, rng)
    result["protocol"] = protocol
    return result


def _kfold_assignment(cases: pd.DataFrame, k: int, rng: np.random.Generator) -> dict[str, int]:
    """case -> fold, spreading each subtype's cases over the folds (rarest subtype dealt first).

    Dealing by every subtype a case carries (not only its majority) keeps mixed cases such as
    the second adenosis case out of the fold that already holds the first one.
    """
    fold_of: dict[str, int] = {}
    sizes = [0] * k
    per_fold = [Counter() for _ in range(k)]
    shuffled = [str(c) for c in rng.permutation(sorted(cases.index))]
    containing = {s: [c for c in shuffled if s in cases.at[c, "subtypes"]]
                  for s in sorted(set().union(*cases["subtypes"]))}
    for subtype in sorted(containing, key=lambda s: (len(containing[s]), s)):
        for case in (c for c in containing[subtype] if c not in fold_of):
            fold = min(range(k), key=lambda f: (per_fold[f][subtype], sizes[f], f))
            fold_of[case] = fold
            sizes[fold] += 1
            per_fold[fold].update(cases.at[case, "subtypes"])
    return fold_of


def patient_kfold(images: pd.DataFrame, k: int = 5, seed: int = 0, val_fraction: float = 0.15) -> list[pd.DataFrame]:
    """k patient-wise folds: fold i's cases are "test", the other cases are split into train/val.

    Every case is a test case in exactly one fold; each subtype's cases are spread over the folds.
    """
    _check_input(images, val_fraction, 0.0)
    cases = case_table(images)
    if not 2 <= k <= len(cases):
        raise UserInputError(f"k must be between 2 and the number of cases ({len(cases)}), got {k}.")
    rng = np.random.default_rng(seed)
    fold_of = _kfold_assignment(cases, k, rng)
    # val_fraction is of the whole data; the remaining cases are (k-1)/k of it.
    val_share = min(val_fraction * k / (k - 1), 0.9)
    folds = []
    for fold in range(k):
        rest = cases[[fold_of[c] != fold for c in cases.index]]
        assigned = _allocate(rest, {"val": val_share}, np.random.default_rng([seed, fold]))
        assigned.update({c: "test" for c in cases.index if fold_of[c] == fold})
        result = images.copy()
        result["split"] = images["case"].map(assigned)
        result["protocol"] = PATIENT
        folds.append(result)
    return folds


def shared_cases(split_df: pd.DataFrame) -> dict[str, list[str]]:
    """Cases found in more than one split -> the splits they are in."""
    real = split_df[~split_df["synthetic"].astype(bool)] if "synthetic" in split_df else split_df
    per_case = real.groupby("case")["split"].unique()
    return {case: sorted(splits) for case, splits in per_case.items() if len(splits) > 1}


def shared_content(split_df: pd.DataFrame) -> list[dict[str, str]]:
    """Groups of byte-identical files (path -> split) found in more than one split: the same picture under
    two names, e.g. filed under two patients, leaks although no case does. index_folder leaves such copies
    out; this catches tables built otherwise (a manifest, reviewed additions). Reads only files whose size
    collides (identical_files); files that are not found are not compared."""
    splits_of = split_df["split"].astype(str).groupby(split_df["path"]).agg(lambda s: "/".join(sorted(set(s))))
    groups = [{path: splits_of[path] for path in group} for group in identical_files(splits_of.index)]
    return [group for group in groups if len(set(group.values())) > 1]


def assert_no_case_leakage(split_df: pd.DataFrame) -> None:
    """Raise ValueError naming every case that sits in two splits, every byte-identical image in two
    splits under different names (shared_content), or synthetic data outside train."""
    leaks = shared_cases(split_df)
    if leaks:
        listed = ", ".join(f"{case} ({'/'.join(splits)})" for case, splits in list(leaks.items())[:10])
        more = f" and {len(leaks) - 10} more" if len(leaks) > 10 else ""
        raise ValueError(f"{len(leaks)} case(s) appear in more than one split: {listed}{more}.")
    copies = shared_content(split_df)
    if copies:
        listed = "; ".join(" = ".join(f"{path} ({split})" for path, split in group.items()) for group in copies[:5])
        more = f" and {len(copies) - 5} more" if len(copies) > 5 else ""
        raise ValueError(f"{len(copies)} image(s) sit in more than one split as byte-identical files under "
                         f"different names: {listed}{more}.")
    if "synthetic" in split_df:
        outside = split_df[split_df["synthetic"].astype(bool) & (split_df["split"] != "train")]
        if len(outside):
            raise ValueError(f"{len(outside)} synthetic image(s) are outside the training split.")


def is_synthetic(table: pd.DataFrame) -> pd.Series:
    """Which rows are GAN images (a table without the column has none): the one reading of that column."""
    return table["synthetic"].astype(bool) if "synthetic" in table else pd.Series(False, index=table.index)


def describe_split(split_df: pd.DataFrame) -> dict:
    """Counts for reports and the dataset page: images, cases and subtypes per split."""
    protocols = sorted(split_df["protocol"].unique()) if "protocol" in split_df else ["unknown"]
    synthetic = is_synthetic(split_df)
    leaks = shared_cases(split_df)
    description = {
        "protocol": protocols[0] if len(protocols) == 1 else "mixed: " + ", ".join(protocols),
        "leaky": bool(leaks) or IMAGE in protocols,
        "shared_cases": len(leaks),
        "images": {}, "cases": {}, "synthetic": {}, "subtypes": {}, "missing_subtypes": {},
    }
    present = [s for s in SUBTYPES if s in set(split_df["subtype"])]
    for split in SPLITS:
        part = split_df[split_df["split"] == split]
        counts = part["subtype"].value_counts()
        description["images"][split] = int(len(part))
        description["cases"][split] = int(part.loc[~synthetic[part.index], "case"].nunique())
        description["synthetic"][split] = int(synthetic[part.index].sum())
        description["subtypes"][split] = {s: int(counts.get(s, 0)) for s in present}
        description["missing_subtypes"][split] = [s for s in present if counts.get(s, 0) == 0]
    return description
