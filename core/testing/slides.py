"""Small pyramidal slides for the slide tests and bench/slide.py (core.slide.mosaic.write_pyramid; no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from core.paths import REPO
from core.slide.mosaic import write_pyramid  # noqa: F401 (the tests import it from here)

SHARED = REPO.parent / "shared" / "breakhis"  # ../shared/breakhis (README: reference data)

# Real 200X BreakHis fields (700x460 originals) from different patients, benign and malignant by their
# labels, not by a model's calls: the bundled model calls some of them wrongly (SOB_B_F-14-25197-200-032
# malignant, p 0.83), and all are its training images. The mosaic tests check tiling, stitching and export
# (that a tile reproduces its own field's call in place, whatever it is), not the model's accuracy.
BENIGN_FIELDS = ("SOB_B_A-14-29960CD-200-007.png", "SOB_B_TA-14-16184-200-025.png",
                 "SOB_B_F-14-25197-200-032.png", "SOB_B_PT-14-29315EF-200-013.png")
MALIGNANT_FIELDS = ("SOB_M_LC-14-13412-200-003.png", "SOB_M_MC-14-18842D-200-016.png",
                    "SOB_M_MC-14-19979-200-013.png", "SOB_M_MC-14-19979-200-004.png")
FIELD = (700, 460)
MOSAIC_MPP = 0.5  # 200X fields at the scale of core.data.scale


def _field(name: str) -> np.ndarray:
    found = next((SHARED / "real").rglob(name), None)
    assert found is not None, f"{name} missing from ../shared/breakhis/real"
    return np.asarray(Image.open(found).convert("RGB"))


def mosaic() -> tuple[np.ndarray, dict]:
    """(rgb, regions): benign fields 2x2 on the left, malignant 2x2 on the right, white glass
    around and between, laid on the 700x460 field grid. regions: {label: (x0, y0, x1, y1)}."""
    w, h = FIELD
    rgb = np.full((4 * h, 7 * w, 3), 255, np.uint8)
    regions = {}
    for label, names, column in (("benign", BENIGN_FIELDS, 1), ("malignant", MALIGNANT_FIELDS, 4)):
        for i, name in enumerate(names):
            x, y = (column + i % 2) * w, (1 + i // 2) * h
            rgb[y:y + h, x:x + w] = _field(name)
        regions[label] = (column * w, h, (column + 2) * w, 3 * h)
    return rgb, regions


def write_mosaic(path: Path) -> tuple[Path, dict]:
    rgb, regions = mosaic()
    return write_pyramid(path, rgb, MOSAIC_MPP, levels=3), regions
