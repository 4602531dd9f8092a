"""Sampling a generator: images per subtype, grids, and folders of SYN_ files with their provenance.

Synthetic images are written under SYN_ names that the BreakHis indexer never takes for real
images (core.data.breakhis.synthetic_name), next to a provenance.json that says which generator
made them and which real images it learned from (core.data.synthetic), so classifier training
can refuse a generator that saw its val/test images.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from PIL import Image

from core.data.breakhis import synthetic_name
from core.data.labels import SUBTYPES
from core.data.synthetic import provenance_of, record_provenance
from core.errors import UserInputError
from core.model.folders import GENERATOR, load_model_folder


def to_uint8(images) -> np.ndarray:
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def noise_for(seed: int, n: int, latent_dim: int) -> np.ndarray:
    """Noise for images 0..n-1 of a seed; image i is the same whatever n is."""
    return np.random.default_rng(seed).standard_normal((n, latent_dim)).astype(np.float32)


def generate(generator: keras.Model, subtype: str, n: int, seed: int = 0, batch_size: int = 64,
             noise: np.ndarray | None = None) -> np.ndarray:
    """n uint8 images of a subtype; deterministic for a seed."""
    if subtype not in SUBTYPES:
        raise UserInputError(f"Unknown subtype {subtype!r}; choose from {list(SUBTYPES)}")
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
    generator, card = load_model_folder(model_dir, kind=GENERATOR)
    if subtype not in card["subtypes"]:
        raise UserInputError(f"Generator {card['name']!r} was not trained on {subtype!r}; it knows {card['subtypes']}")
    if n < 0:
        raise UserInputError("n must be >= 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_provenance(out_dir, provenance_of(card))
    paths = []
    for i, image in enumerate(generate(generator, subtype, n, seed)):
        paths.append(out_dir / synthetic_name(subtype, card["name"], seed, i))
        Image.fromarray(image).save(paths[-1])
    return paths


def fill_folder_from_generator(model_dir, subtypes, counts, out_dir, seed: int = 0) -> dict[str, int]:
    """Write counts[subtype] (or one int for all) synthetic images per subtype for balance.synthetic_fill."""
    counts = counts if isinstance(counts, dict) else {s: int(counts) for s in subtypes}
    return {s: len(write_samples(model_dir, s, int(counts.get(s, 0)), out_dir, seed)) for s in subtypes}
