"""A small synthetic data set in the original BreakHis layout with a learnable signal per subtype.

Benign and malignant differ strongly (stain colour and nucleus density) and each subtype has its
own texture period, so a tiny model can learn stage 1 in a few epochs: a test of learning, not of
running. File names follow BreakHis, so the real indexer, splitter and pipeline are exercised.
Used by the tests and by bench/trust_synthetic.py and bench/fast_full.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from core.data.labels import CLASS_OF_SUBTYPE, CODE_OF_SUBTYPE, MAGNIFICATIONS, SUBTYPES

_BASE_COLOUR = {"benign": (236, 170, 200), "malignant": (120, 60, 150)}


def synthetic_image(subtype: str, rng: np.random.Generator, size=(96, 64), separation: float = 1.0,
                    tint: float = 0.0) -> np.ndarray:
    """separation < 1 moves the class colours towards each other and tint adds a random colour cast
    per image, so the classes overlap: a set a model cannot get all right (for calibration tests)."""
    width, height = size
    label = CLASS_OF_SUBTYPE[subtype]
    period = 4 + 3 * SUBTYPES.index(subtype)  # subtype signal: stripe period
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = (np.sin(2 * np.pi * (xx + yy) / period) > 0).astype(np.float32)
    middle = (np.asarray(_BASE_COLOUR["benign"]) + np.asarray(_BASE_COLOUR["malignant"])) / 2.0
    image = np.empty((height, width, 3), np.float32)
    image[:] = middle + separation * (np.asarray(_BASE_COLOUR[label]) - middle) + rng.normal(0, tint, 3)
    image *= (0.8 + 0.2 * stripes)[..., None]
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_synthetic_breakhis(root: Path, images_per_case: int = 4, cases_per_subtype: int = 3,
                             size=(96, 64), seed: int = 0, separation: float = 1.0, tint: float = 0.0,
                             mislabelled: float = 0.0) -> Path:
    """Write the data set under root/BreaKHis_v1/histology_slides/breast/...; returns that root.

    mislabelled: the share of cases whose images look like a subtype of the OTHER class (filed
    under their own name): errors no model can avoid, for calibration tests.
    """
    rng = np.random.default_rng(seed)
    breast = Path(root) / "BreaKHis_v1" / "histology_slides" / "breast"
    case_number = 1000
    for subtype in SUBTYPES:
        label = CLASS_OF_SUBTYPE[subtype]
        code = CODE_OF_SUBTYPE[subtype]
        for _ in range(cases_per_subtype):
            case_number += 1
            other = [s for s in SUBTYPES if CLASS_OF_SUBTYPE[s] != label]
            looks_like = other[int(rng.integers(len(other)))] if rng.random() < mislabelled else subtype
            slide = f"14-{case_number}"
            for i in range(images_per_case):
                magnification = MAGNIFICATIONS[i % len(MAGNIFICATIONS)]
                folder = breast / label / "SOB" / subtype / f"SOB_{label[0].upper()}_{code}_{slide}" / magnification
                folder.mkdir(parents=True, exist_ok=True)
                name = f"SOB_{label[0].upper()}_{code}-{slide}-{magnification[:-1]}-{i + 1:03d}.png"
                Image.fromarray(synthetic_image(looks_like, rng, size, separation, tint)).save(folder / name)
    return Path(root)
