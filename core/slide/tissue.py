"""Where the tissue is: Otsu's threshold on optical density, on a low-resolution overview.

Glass transmits nearly all light; stained tissue absorbs some in at least one channel. Optical
density OD = -log10(I / Io) turns that into a number that is ~0 on glass and grows with the stain.
Io is the slide's own glass colour (glass_level, per channel), not 255: scanners' glass is 243,
a dim scan's 205, aged mounting medium's (240, 236, 208), and against 255 such glass was "tissue"
(OD > max_od) and a fragment on it was refused as "not H&E" for its glass tiles. The mask is
computed on an overview of a few microns per pixel (TissueSettings.mask_mpp), never on level 0.

The threshold is Otsu's, clipped to [min_od, max_od]: the floor keeps an empty slide empty
(Otsu always splits something, even scanner noise), the ceiling keeps a field that is ALL
tissue whole (there Otsu would split dark nuclei from pale stroma and drop the stroma) and keeps
pale tissue in. Relative to the glass, glass is ~0.00 and 0.04 keeps the pale fields: of the 641
real 200X BreakHis fields laid on 243 glass, 99.5 % keep at least a quarter of their overview
(99.4 % with the old absolute 0.08), 89.7 % keep 90 % of it (84.7 %); the pale tubular adenoma row
of the QA mosaic keeps 0.36-0.97 of each field (0.06-0.96). Alone (a field that is all tissue, no
glass to measure), 99.7 % keep a quarter (98.6 %).

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

from core.data.histology import off_stain
from core.errors import UserInputError
from core.options import option


@dataclasses.dataclass(frozen=True)
class TissueSettings:
    mask_mpp: float = option(8.0, "microns per pixel of the tissue mask's overview")
    min_od: float = option(0.03, "optical density (relative to the slide's glass) below which a pixel is never "
                           "tissue (glass is ~0.00)")
    max_od: float = option(0.04, "optical density (relative to the slide's glass) above which a pixel is always "
                           "tissue (keeps the palest BreakHis fields)")
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


WHITE = np.full(3, 255.0, np.float32)  # the glass level believed when a slide shows none of its own
GLASS_SHARE = 0.05  # a glass level needs at least this share of the overview's pixels in one flat bright mode
GLASS_HALF = 4  # half-width of that mode, in grey levels (an overview's glass varies by a few levels)
GLASS_FLOOR = 150.0  # a "glass" with a channel below this is a dark scan or tissue, not glass: 255 instead
# Ink: pathologists' green and blue pen marks have a high OD and were "tissue". A pixel in a hue no stain
# makes (core.data.histology.off_stain) with a max-min channel of at least INK_CHROMA is ink: the pens are
# 100-140, and of the 641 real 200X BreakHis fields' pixels 0.0000 % reach 80 in that hue (the worst field
# 0.002 %; at the H&E check's 24, 1.6 %: greenish glass and pale stroma). When more than MAX_INK of a
# slide's stained overview is "ink", the slide is not H&E with pen marks but a photo or another stain: it
# is left to the H&E check, which refuses it in its words.
INK_CHROMA = 80
MAX_INK = 0.5
# Two pens that hue alone misses, each measured on the 757 real fields' pixels: pure blue (blue above both
# other channels by PURE_BLUE, red not above green; haematoxylin keeps red above green): 0 pixels; and a
# black marker, neutral near-black brighter than BLACK (brightest channel below DARK_INK, max-min below
# DARK_CHROMA; the darkest nuclei are purple): 0.0002 % of the pixels, at most 0.04 % of one field's.
PURE_BLUE = 80
DARK_INK, DARK_CHROMA = 60, 15
GLASS_FLAT = 1.0  # glass is flat: median grey step between neighbouring pixels of its mode at most this
# A bright flat background whose max-min channel reaches GLASS_TINT is no glass colour (tinted): of the 757 real
# BreakHis fields (bare and on 243 glass, overviews of 44 and 175 px) the most coloured background is 50, e.g. a
# greenish (207, 255, 230); magenta from a YCbCr/RGB mix-up is 130.
GLASS_TINT = 80


def glass_level(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3,) float32: the slide's own glass colour (its "white", Io in Macenko's stain
    work), so that OD is ~0 on glass whether a scanner's glass is 243, 205 or (240, 236, 208).

    Glass is the overview's background (flat_background) where that is believable as glass: a dark or
    strongly tinted one (a channel below GLASS_FLOOR) is not, nor is none at all (a field that is all
    tissue has no sharp flat peak): both keep WHITE, the absolute OD of the old mask."""
    return _glass(flat_background(rgb))


def _glass(background: np.ndarray | None) -> np.ndarray:
    return background if background is not None and background.min() >= GLASS_FLOOR else WHITE.copy()


def flat_background(rgb: np.ndarray) -> np.ndarray | None:
    """(H, W, 3) uint8 -> (3,) float32 or None: the brightest flat colour that covers a share of the
    overview, i.e. its background, whatever its colour: the brightest mean-grey level whose
    +-GLASS_HALF window holds GLASS_SHARE of the (non-black) pixels and is a peak (at least twice the
    pixels of the windows either side) and flat (_flat); its colour is the per-channel median there."""
    image = np.asarray(rgb, np.float32)
    grey_image = image.mean(axis=-1)  # one grey for the histogram and the flatness test
    kept = image.max(axis=-1) >= BLACK
    pixels = image[kept]
    if len(pixels) == 0:
        return None
    grey = np.rint(grey_image[kept]).astype(int)
    width = 2 * GLASS_HALF + 1
    window = np.convolve(np.bincount(grey, minlength=256).astype(float), np.ones(width), mode="same")
    flanks = np.maximum(np.concatenate([np.zeros(width), window[:-width]]),
                        np.concatenate([window[width:], np.zeros(width)]))
    peaks = np.flatnonzero((window >= GLASS_SHARE * len(pixels)) & (window >= 2 * flanks))
    for level in peaks[::-1]:  # the brightest flat one
        if _flat(grey_image, np.abs(grey_image - level) <= GLASS_HALF + 0.5):
            return np.median(pixels[np.abs(grey - level) <= GLASS_HALF], axis=0).astype(np.float32)
    return None


def tinted(background: np.ndarray | None) -> bool:
    """Is a slide's background bright but of a colour no glass has (GLASS_TINT)? Glass and mounting
    medium are grey to faintly coloured (aged medium's (240, 236, 208) has a max-min channel of 32); a flat
    background of a strong colour, e.g. (255, 125, 255) magenta from a YCbCr/RGB mix-up in a file's
    export, means every colour of the slide is wrong, and the model would read the tinted glass and
    tissue as stain (benign fields of such a slide were called p 0.82 malignant, with no note)."""
    return background is not None and float(background.max()) >= GLASS_FLOOR and \
        float(background.max() - background.min()) >= GLASS_TINT


def _flat(grey: np.ndarray, mode: np.ndarray) -> bool:
    """Is the mode flat like glass? Between neighbouring pixels both in it, the median grey step is at
    most GLASS_FLAT: 0.33 on the glass inside real BreakHis fields, 1.7-2.0 on their pale stroma."""
    steps = np.concatenate([np.abs(np.diff(grey, axis=1))[mode[:, 1:] & mode[:, :-1]],
                            np.abs(np.diff(grey, axis=0))[mode[1:] & mode[:-1]]])
    return len(steps) > 0 and float(np.median(steps)) <= GLASS_FLAT


def ink(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB -> bool (...): pen ink, i.e. a strong colour in a hue no stain makes (off_stain at
    INK_CHROMA: green, and the green-tinged blue of most pens), pure blue, or a black marker."""
    pixels = np.asarray(rgb, np.float32)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    brightest = np.maximum(np.maximum(red, green), blue)
    blue_pen = (blue - np.maximum(red, green) >= PURE_BLUE) & (red <= green)
    black_pen = (brightest < DARK_INK) & (brightest >= BLACK) & (
        brightest - np.minimum(np.minimum(red, green), blue) < DARK_CHROMA)
    return off_stain(pixels, INK_CHROMA) | blue_pen | black_pen


def optical_density(rgb: np.ndarray, white: np.ndarray = WHITE) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float32: the strongest absorption over the three channels relative
    to `white` (the glass colour, glass_level), never below 0; 0 for black pixels (brightest channel
    below BLACK), which are no stain."""
    rgb = np.asarray(rgb, np.float32)
    white = np.asarray(white, np.float32)
    od = np.maximum((-np.log10(np.maximum(rgb, 1.0) / white)).max(axis=-1), np.float32(0.0))
    return np.where(rgb.max(axis=-1) < BLACK, np.float32(0.0), od)


@dataclasses.dataclass(frozen=True)
class Glass:
    """What a slide's mask learned that its tiles need: the glass colour (`white`) and the OD threshold."""

    white: tuple[float, float, float] = tuple(WHITE.tolist())
    threshold: float = TissueSettings.min_od
    ink: bool = True  # pen ink is whitened (False where most of the slide has ink colours: no H&E)
    ink_share: float = 0.0  # share of the stained overview that is ink
    tint: tuple[float, float, float] | None = None  # a background of no glass colour (tinted): the slide's colours are wrong

    def clean(self, rgb: np.ndarray) -> np.ndarray:
        """The tile the model sees: black pixels (brightest channel below BLACK: a scanner's border, zero
        padding in the file) and ink become white, as the reader's padding outside the slide already is.
        The mask counts them as no tissue; left as they were, a 120-px black border took malignant tiles
        beside it from p 0.7 to 0.1, a green pen circle round them from 0.6-0.76 to 0.10-0.17."""
        rgb = np.asarray(rgb, np.uint8)
        red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # channel-wise: max(axis=-1) is 10x slower
        brightest = np.maximum(np.maximum(red, green), blue)
        drop = brightest < BLACK
        if self.ink:  # only strongly coloured or dark pixels can be ink: the float rule runs on those alone (a
            # 448-px tile took 27 ms with it on every pixel, more than the bundled model's forward of the tile)
            maybe = ((brightest - np.minimum(np.minimum(red, green), blue)) >= INK_CHROMA) | (brightest < DARK_INK)
            if maybe.any():
                pixels = rgb[maybe]
                drop[maybe] |= ink(pixels) & (optical_density(pixels, np.array(self.white)) > self.threshold)
        if not drop.any():
            return rgb
        rgb = rgb.copy()
        rgb[drop] = 255
        return rgb


class TissueMasker:
    """fit: the threshold of one overview; transform: its mask (TIAToolbox's masker shape)."""

    def __init__(self, settings: TissueSettings = TissueSettings()):
        self.settings = settings
        self.threshold_: float | None = None
        self.white_: np.ndarray = WHITE.copy()
        self.ink_, self.ink_share_ = True, 0.0
        self.background_: np.ndarray | None = None

    def fit(self, rgb: np.ndarray) -> "TissueMasker":
        self._fit(rgb)
        return self

    def _fit(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fit on an overview; returns its optical density and ink pixels, which the mask is made of
        (fit_transform reuses them: each is a pass of float work over the whole overview)."""
        self.background_ = flat_background(rgb)
        self.white_ = _glass(self.background_)
        od, pen = optical_density(rgb, self.white_), ink(rgb)
        s = self.settings
        stained = od > s.min_od
        inked = stained & pen
        self.ink_share_ = float(inked.sum() / max(int(stained.sum()), 1))
        self.ink_ = self.ink_share_ <= MAX_INK
        split = np.where(inked, np.float32(0.0), od) if self.ink_ else od  # ink is no part of Otsu's split either
        if float(split.max()) <= s.min_od or float(split.max() - split.min()) < 1e-6:
            self.threshold_ = s.min_od  # all glass, or one flat colour: nothing for Otsu to split
        else:
            self.threshold_ = float(np.clip(threshold_otsu(split), s.min_od, s.max_od))
        return od, pen

    def transform(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        """Boolean (H, W) tissue mask of an overview at `mpp` microns per pixel."""
        if self.threshold_ is None:
            raise RuntimeError("TissueMasker.fit must run before transform")
        return self._mask(optical_density(rgb, self.white_), ink(rgb), mpp)

    def _mask(self, od: np.ndarray, pen: np.ndarray, mpp: float) -> np.ndarray:
        mask = od > self.threshold_
        if self.ink_:
            mask &= ~pen
        smallest = int(self.settings.min_area_um2 / (mpp * mpp))
        if smallest >= 1 and mask.any():
            mask = remove_small_objects(mask, max_size=smallest)
            mask = remove_small_holes(mask, max_size=smallest)
        return mask

    @property
    def glass_(self) -> Glass:
        if self.threshold_ is None:
            raise RuntimeError("TissueMasker.fit must run before glass_")
        tint = tuple(float(v) for v in self.background_) if tinted(self.background_) else None
        return Glass(tuple(float(v) for v in self.white_), self.threshold_, self.ink_, self.ink_share_, tint)

    def fit_transform(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        return self._mask(*self._fit(rgb), mpp)
