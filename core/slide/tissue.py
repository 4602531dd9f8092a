"""Where the tissue is: Otsu's threshold on optical density, on a low-resolution overview.

Glass transmits nearly all light; stained tissue absorbs some in at least one channel. Optical
density OD = -log10(I / 255) turns that into a number that is ~0 on glass and grows with the
stain, the same on any scanner's white level. The mask is computed on an overview of a few
microns per pixel (TissueSettings.mask_mpp), never on level 0.

The threshold is Otsu's, clipped to [min_od, max_od]: the floor keeps an empty slide empty
(Otsu always splits something, even scanner noise), the ceiling keeps a field that is ALL
tissue whole (there Otsu would split dark nuclei from pale stroma and drop the stroma) and keeps
pale tissue in: 0.08 is well above glass (~0.01) and about the median OD of the palest BreakHis
fields (0.07-0.09; with the earlier 0.15 half of the test mosaic's benign fields were lost).

Black is not stain: a pixel whose brightest channel is below BLACK (missing scan data, a reader's
zero padding, ink) would otherwise have the highest OD of all and read as the densest tissue, so
an all-black slide was "all tissue". Its OD counts as 0. No real BreakHis pixel is that dark (the
darkest nuclei keep a channel above 60; at most 0.002 % of any field's pixels fall below 20).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from core.errors import UserInputError
from core.options import option


@dataclasses.dataclass(frozen=True)
class TissueSettings:
    mask_mpp: float = option(8.0, "microns per pixel of the tissue mask's overview")
    min_od: float = option(0.05, "optical density below which a pixel is never tissue (glass is ~0.02)")
    max_od: float = option(0.08, "optical density above which a pixel is always tissue (pale BreakHis "
                           "fields have a median of ~0.07)")
    min_area_um2: float = option(2500.0, "tissue pieces smaller than this are dropped and holes smaller than "
                                 "this filled (um^2; 2500 = 50 x 50 um)")

    def __post_init__(self):
        """UserInputError naming each impossible setting: a mask_mpp of 0 or less would read the whole slide
        at level 0 as its overview, a min_od above max_od would find no tissue anywhere."""
        problems = [f"{need}, not {value}" for value, ok, need in (
            (self.mask_mpp, 0 < self.mask_mpp < math.inf, "mask_mpp must be a positive number"),
            ((self.min_od, self.max_od), 0 <= self.min_od <= self.max_od, "0 <= min_od <= max_od is needed"),
            (self.min_area_um2, self.min_area_um2 >= 0, "min_area_um2 must be at least 0")) if not ok]
        if problems:
            raise UserInputError("Invalid tissue settings: " + "; ".join(problems) + ".")


BLACK = 25  # a pixel whose brightest channel is below this is black, not stain (its OD counts as 0)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float32: the strongest absorption over the three channels; 0 for
    black pixels (brightest channel below BLACK), which are no stain."""
    rgb = np.asarray(rgb, np.float32)
    od = (-np.log10(np.maximum(rgb, 1.0) / 255.0)).max(axis=-1)
    return np.where(rgb.max(axis=-1) < BLACK, np.float32(0.0), od)


class TissueMasker:
    """fit: the threshold of one overview; transform: its mask (TIAToolbox's masker shape)."""

    def __init__(self, settings: TissueSettings = TissueSettings()):
        self.settings = settings
        self.threshold_: float | None = None

    def fit(self, rgb: np.ndarray) -> "TissueMasker":
        od = optical_density(rgb)
        s = self.settings
        if float(od.max()) <= s.min_od or float(od.max() - od.min()) < 1e-6:
            self.threshold_ = s.min_od  # all glass, or one flat colour: nothing for Otsu to split
        else:
            self.threshold_ = float(np.clip(threshold_otsu(od), s.min_od, s.max_od))
        return self

    def transform(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        """Boolean (H, W) tissue mask of an overview at `mpp` microns per pixel."""
        if self.threshold_ is None:
            raise RuntimeError("TissueMasker.fit must run before transform")
        mask = optical_density(rgb) > self.threshold_
        smallest = int(self.settings.min_area_um2 / (mpp * mpp))
        if smallest >= 1 and mask.any():
            mask = remove_small_objects(mask, max_size=smallest)
            mask = remove_small_holes(mask, max_size=smallest)
        return mask

    def fit_transform(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        return self.fit(rgb).transform(rgb, mpp)
