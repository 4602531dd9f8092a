"""Does an image look like an H&E-stained field of view? A heuristic with three verdicts.

Uploads may be photos, screenshots, immunostains or blank slides; the model's output on those is
meaningless, and a confident call on a photo misleads more than no call. So an image that is
clearly not H&E tissue (blank, flat, noise, greyscale, or coloured with colours neither stain
produces) is NOT analysed: no call, no heat map, no case contribution. An image that is H&E-like
but atypical (pale, weak pink/purple share, little structure) is analysed with a warning, because
real tissue falls there too (12 of the 757 real images are pale 200X scans). The check works on
the ORIGINAL image (before any stain normalisation), reads a 256-px thumbnail (~3 ms) and explains
its verdict.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from core.data.stain import hed_concentrations, summed_optical_density

# Thresholds measured on the 757 real BreakHis images of ../shared/breakhis/real (worst case in
# brackets), the 22 samples, synthetic non-histology images and skimage's photos (astronaut,
# coffee, chelsea, rocket, retina, an immunostain, colour wheel, logo, motorcycle).
_TISSUE_OD = 0.2          # summed optical density (log10) above which a pixel is not background
_MIN_TISSUE = 0.05        # at least 5 % of the image is not blank
_MIN_CHROMA = 8           # max-min channel difference for a pixel to count as coloured
_MIN_STAINED = 0.15       # share of tissue pixels that are coloured (grey/greyscale images fail)
_MIN_PINK_PURPLE = 0.35   # share of coloured pixels in the H&E hue sector (green is the lowest
#                           channel); below it: atypical, analysed with a warning (real: 0.24)
_MIN_STRUCTURE = 0.4      # neighbour-pixel correlation below which a warning is given (real: 0.38)
_NOISE_STRUCTURE = 0.3    # ... and below which it is noise, not analysed (noise ~0.15)
_STRONG_CHROMA = 24       # a clearly coloured pixel
_OFF_STAIN_MARGIN = 8     # green above red or blue by this much: a colour neither stain makes
_MAX_OFF_STAIN = 0.15     # off-stain share minus pink/purple share above which the colours are
#                           not H&E (real images: at most 0.04; photos: 0.25 and up)
_MEDIAN_SAMPLE = 8192      # tissue pixels the reported median stain densities are read from

TYPICAL, ATYPICAL, NOT_HISTOLOGY = "typical", "atypical", "not histology"
MOSTLY_GLASS = "almost entirely blank background"  # the reason's start when too little is tissue
NOT_ANALYSED = "not analysed: not H&E tissue"  # what the app, CLI, CSV and PDF show instead of a call


@dataclasses.dataclass(frozen=True)
class HistologyVerdict:
    """The check's outcome: `status` is TYPICAL, ATYPICAL (analysed, warned) or NOT_HISTOLOGY
    (not analysed); `score` 0..1 is the share of pink-purple stained tissue, `reason` says why."""

    status: str
    score: float
    reason: str

    @property
    def typical(self) -> bool:
        return self.status == TYPICAL

    @property
    def analysable(self) -> bool:
        return self.status != NOT_HISTOLOGY


def _lag_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of a with the same row of b, (K, n) -> (K,); a row pair
    without variance: 1 if equal after centring, else 0."""
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    scale = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    equal = np.all(a == b, axis=1).astype(np.float64)
    return np.where(scale > 0, (a * b).sum(axis=1) / np.where(scale > 0, scale, 1.0), equal)


_STRUCTURE_SIDE = 1024  # the structure is measured on the image at most this large, in crops


def _field_structure(rgb: np.ndarray) -> float:
    """Neighbour correlation of the field at close to its own scale: the median over a 3 x 3 grid
    of 128-px crops of the image shrunk to at most 1024 px. On a 256-px thumbnail of a 5,000-px
    field, cell-sized texture is below the thumbnail's pixel and reads as noise."""
    image = Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("L")
    image.thumbnail((_STRUCTURE_SIDE, _STRUCTURE_SIDE), Image.Resampling.BILINEAR)
    gray = np.asarray(image, dtype=np.float32)
    height, width = gray.shape
    side = min(128, height, width)
    crops = np.stack([gray[y:y + side, x:x + side] for y in np.linspace(0, height - side, 3).astype(int)
                      for x in np.linspace(0, width - side, 3).astype(int)])
    textured = crops.reshape(len(crops), -1).std(axis=1) >= 2.0
    return float(np.median(_structures(crops[textured] if textured.any() else crops)))


def _structure(gray: np.ndarray) -> float:
    """Smaller of horizontal and vertical lag-1 correlation: tissue is smooth, noise is not."""
    return float(_structures(gray[None])[0])


def _structures(stack: np.ndarray) -> np.ndarray:
    """_structure of every image of a (K, h, w) stack in one set of array operations: the nine
    crops of _field_structure one by one were 18 correlations of ~10 small NumPy calls each, which
    hold the GIL while the model's input is made beside the check (core.app.service.classify)."""
    count, height, width = stack.shape
    if min(height, width) < 2:
        return np.zeros(count)
    horizontal = _lag_correlations(stack[:, :, :-1].reshape(count, -1), stack[:, :, 1:].reshape(count, -1))
    vertical = _lag_correlations(stack[:, :-1].reshape(count, -1), stack[:, 1:].reshape(count, -1))
    flat = stack.reshape(count, -1).std(axis=1) < 2.0
    return np.where(flat, 0.0, np.minimum(horizontal, vertical))


def histology_check(rgb: np.ndarray) -> HistologyVerdict:
    """Does this look like an H&E-stained field of view? -> HistologyVerdict.

    Not histology: almost no tissue, flat or noise-like, no colour (grey), or colours neither
    stain produces (green, yellow, orange, cyan: green well above red or blue) outweighing the
    pink-purple ones. Atypical: a weak pink-purple share or weak structure. The score is the
    share of all pixels that are pink-purple stained tissue, scaled down when structure is
    noise-like (correlation 0.2 -> 0, 0.7 and above -> 1).
    A strict HED-cone test was measured and rejected: BreakHis scans are pale and 6 of the 22
    samples have a negative median eosin density with the standard matrix; the median
    haematoxylin/eosin densities are still reported in the reason for transparency.
    """
    small = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    small.thumbnail((256, 256), Image.Resampling.BILINEAR)
    pixels = np.asarray(small, dtype=np.float32)
    # Per-channel arithmetic, not reductions over the last axis of size 3: NumPy's slow path there
    # made this check as long as the image decoding (8 ms -> 3 ms; bench/diagnose.py).
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    tissue = summed_optical_density(pixels) > _TISSUE_OD
    chroma = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    coloured = tissue & (chroma >= _MIN_CHROMA)
    pink_purple = coloured & (green <= red) & (green <= blue)
    off_stain = coloured & _off_stain(red, green, blue, chroma)
    gray = (red + green + blue) / 3.0

    tissue_share = float(tissue.mean())
    stained_share = float(coloured.sum() / max(tissue.sum(), 1))
    pink_share = float(pink_purple.sum() / max(coloured.sum(), 1))
    off_share = float(off_stain.sum() / max(coloured.sum(), 1))
    structure = _field_structure(rgb) if max(np.shape(rgb)[:2]) > 2 * 256 else _structure(gray)
    score = float(pink_purple.mean() * np.clip((structure - 0.2) / 0.5, 0.0, 1.0))
    # The medians are reported, not tested: every k-th tissue pixel (at most ~8k) gives them to the
    # two decimals shown at a fifth of the cost of all ~40k (a quarter of the check, bench/diagnose.py).
    stained = pixels[tissue]
    hed = hed_concentrations(stained[::max(1, len(stained) // _MEDIAN_SAMPLE)])
    medians = np.median(hed[:, :2], axis=0) if len(hed) else None
    stains = f"median H {medians[0]:.2f}, E {medians[1]:.2f} OD" if len(hed) else "no stain density"

    def verdict(status: str, reason: str) -> HistologyVerdict:
        return HistologyVerdict(status, score, reason)

    if tissue_share < _MIN_TISSUE:
        return verdict(NOT_HISTOLOGY, f"{MOSTLY_GLASS} ({tissue_share:.0%} tissue)")
    if structure < _NOISE_STRUCTURE:
        what = "flat image without structure" if gray.std() < 2.0 else "no spatial structure, looks like noise"
        return verdict(NOT_HISTOLOGY, f"{what} (neighbour correlation {structure:.2f})")
    if stained_share < _MIN_STAINED:
        return verdict(NOT_HISTOLOGY, f"no stain colour: grey or greyscale image ({stained_share:.0%} coloured pixels)")
    if off_share - pink_share > _MAX_OFF_STAIN:
        return verdict(NOT_HISTOLOGY, (
            f"colours are not H&E pink/purple ({off_share:.0%} of coloured pixels have colours neither "
            f"stain produces, {pink_share:.0%} pink/purple; {_dominant_hue(pixels[coloured])})"))
    if structure < _MIN_STRUCTURE:
        return verdict(ATYPICAL, f"weak spatial structure (neighbour correlation {structure:.2f})")
    if pink_share < _MIN_PINK_PURPLE:
        return verdict(ATYPICAL, (
            f"colours are only partly H&E pink/purple ({pink_share:.0%} of coloured pixels; "
            f"{_dominant_hue(pixels[coloured])})"))
    return verdict(TYPICAL, (
        f"H&E-like: {tissue_share:.0%} tissue, {pink_share:.0%} pink/purple, structure {structure:.2f}, {stains}"))


def off_stain(rgb: np.ndarray, min_chroma: float = _STRONG_CHROMA) -> np.ndarray:
    """(..., 3) RGB -> bool (...): pixels clearly coloured (max-min channel at least `min_chroma`) in a hue
    neither stain produces (green well above red or blue: green, yellow, orange, cyan, and the green and
    blue of pathologists' pen ink). The rule histology_check counts as "colours neither stain produces";
    core.slide.tissue keeps such ink, at a stronger colour, out of the tissue mask and the model's tiles."""
    pixels = np.asarray(rgb, dtype=np.float32)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    chroma = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    return _off_stain(red, green, blue, chroma, min_chroma)


def _off_stain(red, green, blue, chroma, min_chroma: float = _STRONG_CHROMA) -> np.ndarray:
    return (chroma >= min_chroma) & ((green > red + _OFF_STAIN_MARGIN) | (green > blue + _OFF_STAIN_MARGIN))


def _dominant_hue(colours: np.ndarray) -> str:
    """Name the dominant colour channel of the coloured pixels, for the user-facing reason."""
    if len(colours) == 0:
        return "no coloured pixels"
    names = ("red/orange", "green", "blue")
    return f"mostly {names[int(np.bincount(colours.argmax(axis=-1), minlength=3).argmax())]}"
