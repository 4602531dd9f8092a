"""Folders of GAN images: finding them, and knowing which real images their generator saw.

Synthetic images are named SYN_<code>-<generator>-<seed>-<n>.png (core.data.breakhis), which can
never be taken for a BreakHis image. Next to them a provenance.json records, per generator, its
checksum, the data set it learned from (a fingerprint of file names, core.data.selection) and
the split it learned from. A classifier run may use them only if that split is its own: a
generator trained on other patients has seen the run's validation or test images.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.data.breakhis import COLUMNS, parse_synthetic_name, safe_generator_name, synthetic_generator
from core.data.labels import CLASS_OF_SUBTYPE
from core.data.selection import NO_SPLIT, SplitSpec
from core.errors import UserInputError
from core.jsonfile import read_json, write_json_atomic

PROVENANCE_FILE = "provenance.json"
SYNTHETIC_CASE = "synthetic"


def find_synthetic_images(synthetic_dir: str | Path) -> pd.DataFrame:
    """GAN images under a folder (recursively), recognised by their SYN_<code>-... names."""
    folder = Path(synthetic_dir)
    if not folder.is_dir():
        raise UserInputError(f"Synthetic image folder not found: {folder}")
    rows = []
    for path in sorted(folder.rglob("SYN_*")):
        subtype = parse_synthetic_name(path.name)
        if subtype is not None and path.is_file():
            rows.append({
                "path": str(path), "label": CLASS_OF_SUBTYPE[subtype], "subtype": subtype,
                "magnification": "unknown", "slide": SYNTHETIC_CASE, "slide_folder": SYNTHETIC_CASE,
                "case": SYNTHETIC_CASE, "synthetic": True,
            })
    return pd.DataFrame(rows, columns=COLUMNS)


def provenance_of(card: dict) -> dict:
    """What a classifier run must know about the generator behind synthetic images (from its card)."""
    training = card.get("training") or {}
    return {"generator": card.get("name"), "sha256": card.get("sha256"),
            "split": training.get("split_spec"), "fingerprint": training.get("data_fingerprint"),
            "data_source": training.get("data_source")}


def record_provenance(out_dir: Path, record: dict) -> None:
    """Add a generator to out_dir/provenance.json; refuse a different generator under the same name."""
    known = read_provenance(out_dir) if (Path(out_dir) / PROVENANCE_FILE).is_file() else {}
    name = safe_generator_name(record["generator"])
    if name in known and known[name].get("sha256") != record["sha256"]:
        raise UserInputError(f"{out_dir} already holds images of another generator named {record['generator']!r}; "
                         "write these into a fresh folder")
    known[name] = record
    write_json_atomic(Path(out_dir) / PROVENANCE_FILE, {"generators": known})


def read_provenance(folder) -> dict[str, dict]:
    """{generator name as in the file names: provenance record} of one provenance.json's folder."""
    path = Path(folder) / PROVENANCE_FILE
    try:
        generators = read_json(path)["generators"]
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise UserInputError(f"Cannot read the synthetic images' provenance {path}: {error}") from None
    if not isinstance(generators, dict) or not all(isinstance(r, dict) for r in generators.values()):
        raise UserInputError(f"{path} is not a provenance file (no generators table of records)")
    return generators


def leak_check(record: dict, fingerprint: str, spec: SplitSpec) -> str | None:
    """Why a generator (provenance_of its card) may have seen this run's val/test images, or None."""
    learned = record.get("split")
    if not isinstance(learned, dict):
        return "the generator's card does not record which split it learned from"
    if learned.get("protocol") == NO_SPLIT:
        return "the generator was trained on all images, including the classifier's val/test images"
    if record.get("fingerprint") != fingerprint:
        return (f"the generator was trained on another data set ({record.get('data_source')}, fingerprint "
                f"{record.get('fingerprint')}), not on this one (fingerprint {fingerprint}), so its split is not this one")
    try:
        theirs = SplitSpec(**learned)
    except (TypeError, ValueError) as error:
        return f"the generator's split cannot be compared: {error}"
    if theirs != spec:
        return f"the generator learned from split {theirs.label} (seed {theirs.seed}, magnification " \
               f"{theirs.magnification}), the classifier uses {spec.label} (seed {spec.seed}, magnification " \
               f"{spec.magnification})"
    return None


def check_synthetic_folder(folder, fingerprint: str, spec: SplitSpec) -> list[str]:
    """Leak problems of the generators behind a folder's SYN_ images (empty: safe to train with).

    Each image is judged by the provenance.json of its own folder (or the nearest folder above it,
    up to `folder`) that names its generator: two generators may share a name in sibling folders,
    and one's record must not vouch for the other's images."""
    folder = Path(folder)
    if not folder.is_dir():
        return []  # balance.synthetic_fill reports a missing folder itself
    owners = {}  # (generator name, folder of its provenance.json or None) -> a folder of its images
    for path in sorted(folder.rglob("SYN_*")):
        if name := synthetic_generator(path.name):
            owners.setdefault((name, _provenance_home(path.parent, folder, name)), path.parent)
    problems = []
    for (name, home), images in owners.items():
        where = "" if images == folder else f" (in {images.relative_to(folder)})"
        if home is None:
            problems.append(f"images of generator {name!r}{where} have no {PROVENANCE_FILE}, so nothing shows "
                            "which images it learned from")
        elif reason := leak_check(read_provenance(home)[name], fingerprint, spec):
            problems.append(f"generator {name!r}{where}: {reason}")
    return problems


def _provenance_home(start: Path, root: Path, name: str) -> Path | None:
    """The nearest folder from start up to root whose provenance.json records generator `name`."""
    for candidate in (start, *start.parents):
        if (candidate / PROVENANCE_FILE).is_file() and name in read_provenance(candidate):
            return candidate
        if candidate == root:
            return None
    return None


def refuse_leaky_folder(folder, fingerprint: str, spec: SplitSpec) -> None:
    """UserInputError when a generator behind the folder may have seen the run's val/test patients."""
    problems = check_synthetic_folder(folder, fingerprint, spec)
    if problems:
        raise UserInputError(f"Refusing the GAN images in {folder}: " + "; ".join(problems)
                             + ". Train the GAN on this run's training split (python -m core gan train --split "
                             "SPLIT --split-seed SEED --magnification MAG [--folds K --fold I] on the same data), "
                             "or pass --allow-gan-leak (allow_gan_leak=True) to use them anyway.")
