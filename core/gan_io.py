"""Generator folders: save, verify, load, and sample to files.

A generator folder is model.keras plus card.json, like a classifier folder, but with card kind
"gan_generator" so the two can never be confused. The card pins the model file's sha256 and the
model loads in Keras safe mode, so a changed or foreign file is refused with a message rather
than run. Synthetic images are written under SYN_ names that the real BreakHis indexer never
takes for real images (core.breakhis.synthetic_name), next to a provenance.json that says which
generator made them and which real images it learned from, so classifier training can refuse a
generator that saw its val/test images (leak_check, check_synthetic_folder).
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from core.breakhis import synthetic_name
from core.labels import SUBTYPES
from core.model_io import ModelFolderError, labels_block, sha256_of
from core.splits import normalise_protocol

GENERATOR_KIND = "gan_generator"  # card kind: keeps generator and classifier folders apart
PROVENANCE_FILE = "provenance.json"  # next to synthetic images: which generator, trained on what
_GENERATOR_IN_NAME = re.compile(r"^SYN_[A-Za-z]+-(?P<generator>[\w.]+)-\d+-\d+\.png$")


class GeneratorFolderError(ModelFolderError):
    """A generator folder is missing, corrupt or tampered with (message is shown to the user)."""


def save_generator(generator: keras.Model, folder, card: dict) -> Path:
    """folder/model.keras + folder/card.json; the card pins the model file's sha256."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator.save(folder / "model.keras")
    card = {**card, "kind": GENERATOR_KIND, "labels": labels_block(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sha256": sha256_of(folder / "model.keras"),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}}
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    return folder


def load_generator(folder) -> tuple[keras.Model, dict]:
    """(generator, card), after checking the card and the model file's checksum (safe_mode)."""
    folder = Path(folder)
    model_path, card_path = folder / "model.keras", folder / "card.json"
    if not model_path.is_file() or not card_path.is_file():
        raise GeneratorFolderError(f"{folder} is not a generator folder (needs model.keras and card.json)")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GeneratorFolderError(f"{card_path} is not valid JSON: {error}") from None
    if card.get("kind") != GENERATOR_KIND:
        raise GeneratorFolderError(f"{folder} holds a {card.get('kind', 'classifier')!r}, not a GAN generator")
    if "labels" in card and card["labels"] != labels_block():  # the embedding is indexed by subtype order
        raise GeneratorFolderError(f"{folder} was trained with a different label order {card['labels']}; "
                                   f"this app uses {labels_block()}")
    if card.get("sha256") != sha256_of(model_path):
        raise GeneratorFolderError(f"{model_path} does not match the checksum in its card (changed or corrupt)")
    try:
        generator = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad archive.
        raise GeneratorFolderError(f"Cannot load {model_path}: {type(error).__name__}: {error}") from None
    return generator, card


def to_uint8(images) -> np.ndarray:
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def noise_for(seed: int, n: int, latent_dim: int) -> np.ndarray:
    """Noise for images 0..n-1 of a seed; image i is the same whatever n is."""
    return np.random.default_rng(seed).standard_normal((n, latent_dim)).astype(np.float32)


def generate(generator: keras.Model, subtype: str, n: int, seed: int = 0, batch_size: int = 64,
             noise: np.ndarray | None = None) -> np.ndarray:
    """n uint8 images of a subtype; deterministic for a seed."""
    if subtype not in SUBTYPES:
        raise ValueError(f"Unknown subtype {subtype!r}; choose from {list(SUBTYPES)}")
    noise = noise_for(seed, n, generator.inputs[0].shape[-1]) if noise is None else noise
    labels = np.full((len(noise), 1), SUBTYPES.index(subtype), np.int32)
    out = [generator([noise[i:i + batch_size], labels[i:i + batch_size]], training=False)
           for i in range(0, len(noise), batch_size)]
    return to_uint8(np.concatenate([np.asarray(o) for o in out])) if out else np.zeros((0, 1, 1, 3), np.uint8)


def grid(rows: list[np.ndarray]) -> np.ndarray:
    """List of [n,S,S,3] uint8 rows -> one image with a 2-px gap."""
    n, size = rows[0].shape[0], rows[0].shape[1]
    canvas = np.full((len(rows) * (size + 2), n * (size + 2), 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            canvas[r * (size + 2):r * (size + 2) + size, c * (size + 2):c * (size + 2) + size] = image
    return canvas


def save_sample_grid(generator, subtypes, noise: np.ndarray, path: Path) -> None:
    """Same noise at every save, one row per subtype, so grids show progress over training."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid([generate(generator, s, len(noise), noise=noise) for s in subtypes])).save(path)


def write_samples(model_dir, subtype: str, n: int, out_dir, seed: int = 0) -> list[Path]:
    """n PNGs named SYN_<code>-<generator>-<seed>-<i>.png (never a BreakHis name)."""
    generator, card = load_generator(model_dir)
    if subtype not in card["subtypes"]:
        raise ValueError(f"Generator {card['name']!r} was not trained on {subtype!r}; it knows {card['subtypes']}")
    if n < 0:
        raise ValueError("n must be >= 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _record_provenance(out_dir, provenance_of(card))
    paths = []
    for i, image in enumerate(generate(generator, subtype, n, seed)):
        paths.append(out_dir / synthetic_name(subtype, card["name"], seed, i))
        Image.fromarray(image).save(paths[-1])
    return paths


def fill_folder_from_generator(model_dir, subtypes, counts, out_dir, seed: int = 0) -> dict[str, int]:
    """Write counts[subtype] (or one int for all) synthetic images per subtype for balance.synthetic_fill."""
    counts = counts if isinstance(counts, dict) else {s: int(counts) for s in subtypes}
    return {s: len(write_samples(model_dir, s, int(counts.get(s, 0)), out_dir, seed)) for s in subtypes}


def provenance_of(card: dict) -> dict:
    """What a classifier run must know about the generator behind synthetic images."""
    used = card.get("config") or {}
    return {"generator": card.get("name"), "sha256": card.get("sha256"), "split": used.get("split", "none"),
            "split_seed": used.get("split_seed"), "magnification": used.get("magnification", "all"),
            "data_source": (card.get("training") or {}).get("data_source")}


def _safe_name(generator) -> str:
    return re.sub(r"[^\w.]", "_", str(generator))  # as core.breakhis.synthetic_name writes it


def _record_provenance(out_dir: Path, record: dict) -> None:
    """Add a generator to out_dir/provenance.json; refuse a different generator under the same name."""
    path = out_dir / PROVENANCE_FILE
    known = read_provenance(out_dir) if path.is_file() else {}
    name = _safe_name(record["generator"])
    if name in known and known[name].get("sha256") != record["sha256"]:
        raise ValueError(f"{out_dir} already holds images of another generator named {record['generator']!r}; "
                         "write these into a fresh folder")
    known[name] = record
    path.write_text(json.dumps({"generators": known}, indent=2))


def read_provenance(folder) -> dict[str, dict]:
    """{generator name as in the file names: provenance record} of one provenance.json's folder."""
    path = Path(folder) / PROVENANCE_FILE
    try:
        generators = json.loads(path.read_text())["generators"]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"Cannot read the synthetic images' provenance {path}: {error}") from None
    if not isinstance(generators, dict):
        raise ValueError(f"{path} is not a provenance file (no generators table)")
    return generators


def leak_check(record: dict, data, split: str, seed: int, magnification: str, folds: int = 0) -> str | None:
    """Why a generator (provenance_of its card) may have seen this run's val/test images, or None."""
    if record.get("split", "none") == "none":
        return "the generator was trained on all images, including the classifier's val/test images"
    source = record.get("data_source")
    if source is None or Path(str(source)).resolve() != Path(data).resolve():
        return f"the generator was trained on {source}, not on {data}, so its split is not this one"
    if folds:
        return (f"this is a {folds}-fold cross-validation run; the generator learned from a single "
                f"{record['split']} train split, which overlaps the other folds' test images")
    try:
        same_protocol = normalise_protocol(record["split"]) == normalise_protocol(split)
    except ValueError as error:
        return f"the generator's split cannot be compared: {error}"
    if not same_protocol or (record.get("split_seed"), record.get("magnification", "all")) != (seed, magnification):
        return (f"the generator used split {record['split']} seed {record.get('split_seed')} magnification "
                f"{record.get('magnification', 'all')}, the classifier {split} seed {seed} "
                f"magnification {magnification}")
    return None


def check_synthetic_folder(folder, data, split: str, seed: int, magnification: str, folds: int = 0) -> list[str]:
    """Leak problems of the generators behind a folder's SYN_ images (empty: safe to train with)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []  # balance.synthetic_fill reports a missing folder itself
    records = {}
    for path in sorted(folder.rglob(PROVENANCE_FILE)):
        records.update(read_provenance(path.parent))
    problems = []
    for name in sorted({m["generator"] for p in folder.rglob("SYN_*") if (m := _GENERATOR_IN_NAME.match(p.name))}):
        if name not in records:
            problems.append(f"images of generator {name!r} have no {PROVENANCE_FILE}, so nothing shows "
                            "which images it learned from")
        elif reason := leak_check(records[name], data, split, seed, magnification, folds):
            problems.append(f"generator {name!r}: {reason}")
    return problems


def run_cli_command(command: Callable[[], int]) -> int:
    """The GAN CLIs' exit code: bad input or a bad folder prints one line and exits 2, not a traceback."""
    try:
        return command()
    except (ValueError, OSError, ModelFolderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
