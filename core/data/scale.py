"""Physical scale: microns per pixel (mpp) of an image, resampling to a scale, and the tile grid.

A model sees tissue at one physical scale. Slides state theirs (OpenSlide's mpp properties); a
BreakHis field states only its magnification, so its scale is estimated here, once, for every
caller (training tiles, slides, the GAN, the Diagnose page).

BreakHis fields (700x460 px) were captured through 4x, 10x, 20x and 40x objectives, named by the
total magnification 40X, 100X, 200X and 400X. The data set's paper gives no calibrated pixel size,
so the figure used here is the whole-slide-scanner equivalent of each objective: a "40x" scan is
about 0.25 um/px and a "20x" scan about 0.5 um/px (Sellaro et al., J Pathol Inform 2013), so

    mpp = 0.25 * 400 / magnification:  40X 2.5, 100X 1.0, 200X 0.5, 400X 0.25 um/px

(a 200X field is then 350 x 230 um; carcinoma nuclei of 8-12 um are 16-24 px across at 200X,
which is what the images show). It is an estimate to within perhaps 30 %, used only to bring
images to a common scale, never to measure.

The scale a classifier sees is written into its card as `card["scale"] = {"mpp", "tile_px",
"source"}`: one model input covers tile_px = [w, h] pixels at mpp um/px, resized to the input
square. Every model trained here so far sees a WHOLE BreakHis field, so its tile is the field,
700 x 460 px, at its training magnification's mpp (the dominant one when trained on "all": the
bundled model, 411 of its 457 training images at 200X, is [700, 460] at 0.5 um/px, i.e. 350 x 230 um per
input). `model_scale` reads the card's figure, or derives it that way for older cards and says
"estimated" in its source.

Copies of BreakHis fields that were shrunk keep their field of view: a 500x328 copy has 700/500
times the original mpp, and a 224x224 copy (squashed from 700x460 by its publisher) is anisotropic
(700/224 across, 460/224 down), which `field_mpp` reports so that `to_scale` restores the aspect.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image

from core.data.breakhis import parse_name

BREAKHIS_FIELD = (700, 460)  # (width, height) of an original BreakHis field
# A magnification token standing alone in a name ("biopsy_40x", "scan-400X"), not part of a word or of
# a number: "crop_400x300" and "tile_200x200" are pixel sizes, "x1400" and "img40xb" no magnification.
_MAGNIFICATION_TOKEN = re.compile(r"(?<![0-9A-Za-z])(40|100|200|400)[xX](?![0-9A-Za-z])")
REFERENCE_MAGNIFICATION, REFERENCE_MPP = 400, 0.25  # a 40x objective ~ 0.25 um/px (see above)


def parse_magnification(magnification: str | int) -> int:
    """'200X', '200x', '200' or 200 -> 200: the one reading of a stated magnification; anything else (a
    word, a fraction, zero or less) refused in words (ValueError)."""
    text = str(magnification).strip().upper().removesuffix("X").strip()
    if not text.isdigit() or int(text) <= 0:  # isdigit: no sign, no decimal point, not empty
        raise ValueError(f"a magnification is a whole number of times such as 200X, not {str(magnification)!r}")
    return int(text)


def magnification_mpp(magnification: str | int) -> float:
    """'200X' (or 200) -> the estimated microns per pixel of an original BreakHis field."""
    return REFERENCE_MPP * REFERENCE_MAGNIFICATION / parse_magnification(magnification)


@dataclasses.dataclass(frozen=True)
class Scale:
    """Microns per pixel across (x) and down (y) an image, and where the figure comes from."""

    x: float
    y: float
    source: str  # "slide metadata", "file name (200X, 224x224 copy of a 700x460 field)", "chosen by user", ...

    @property
    def isotropic(self) -> bool:
        return math.isclose(self.x, self.y, rel_tol=0.02)

    @property
    def mean(self) -> float:
        return math.sqrt(self.x * self.y)


def field_mpp(magnification: str | int, width: int, height: int, source: str = "magnification") -> Scale:
    """Scale of a BreakHis field (or a shrunk copy of one) of this size at this magnification.

    A size of the original field's aspect, at most its size (700x460, 500x328, ...), is a uniform
    copy; a square one is taken as a squashed copy of a 700x460 field (the published 224x224 sets);
    any other size is taken at the original field's pixel size (a crop, a mosaic, or a camera of the
    same pixel pitch). Nobody publishes enlarged fields: a larger image of the field's aspect (a 3x3
    mosaic of fields, a 3:2 camera frame) read as one would be given a fraction of its true scale.
    """
    base = magnification_mpp(magnification)
    field_w, field_h = BREAKHIS_FIELD
    if width <= field_w and math.isclose(width / height, field_w / field_h, rel_tol=0.02):
        return Scale(base * field_w / width, base * field_h / height, f"{source}, {width}x{height} field")
    if width == height and width < field_h:
        return Scale(base * field_w / width, base * field_h / height,
                     f"{source}, {width}x{height} copy squashed from {field_w}x{field_h}")
    return Scale(base, base, f"{source}, original pixel size")


def name_magnification(name: str) -> str | None:
    """40X ... 400X stated by a file name: a BreakHis name's, else a standalone token ('biopsy_40x.png');
    None when the name states none. The one rule for every caller (Diagnose, predict, slides, scale)."""
    parsed = parse_name(name)
    if parsed is not None:
        return parsed.magnification
    match = _MAGNIFICATION_TOKEN.search(Path(name).stem)
    return f"{match.group(1)}X" if match else None


def image_scale(name: str, width: int, height: int, magnification: str | None = None) -> Scale | None:
    """The scale of an image from the magnification its name states (name_magnification), else from
    the one given (the user's choice); None when neither states one."""
    named = name_magnification(name)
    if named is not None:
        return field_mpp(named, width, height, f"file name ({named})")
    if magnification and str(magnification).upper().endswith("X"):
        return field_mpp(magnification, width, height, f"chosen by user ({magnification})")
    return None


def scaled_size(width: int, height: int, scale: Scale, target_mpp: float) -> tuple[int, int]:
    """(width, height) of the image resampled to target_mpp (at least 1 x 1)."""
    return (max(1, round(width * scale.x / target_mpp)), max(1, round(height * scale.y / target_mpp)))


def to_scale(rgb: np.ndarray, scale: Scale, target_mpp: float) -> np.ndarray:
    """Resample a uint8 RGB image ONCE to target_mpp in both directions (restoring a squashed copy's
    aspect). Shrinking uses Pillow's antialiased box/Lanczos filter; enlarging bicubic."""
    height, width = rgb.shape[:2]
    size = scaled_size(width, height, scale, target_mpp)
    if size == (width, height):
        return rgb
    enlarging = size[0] * size[1] > width * height
    method = Image.Resampling.BICUBIC if enlarging else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb, np.uint8)).resize(size, method))


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Top-left coordinates along one axis of a grid of `tile`-long windows `stride` apart that cover
    [0, length): the last window is moved back to end at the edge (never padded past it), and a
    length shorter than a tile gives one window at 0 (the caller pads)."""
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile and stride must be positive, not {tile} and {stride}")
    if length <= tile:
        return [0]
    origins = list(range(0, length - tile + 1, stride))
    if origins[-1] + tile < length:
        origins.append(length - tile)
    return origins


def tile_grid(width: int, height: int, tile: int, stride: int | None = None) -> list[tuple[int, int]]:
    """(x, y) top-left corners of the tiles covering a width x height image, row by row."""
    stride = stride or tile
    return [(x, y) for y in tile_origins(height, tile, stride) for x in tile_origins(width, tile, stride)]


def whole_field_scale(magnifications, source: str) -> dict:
    """The card's "scale" block of a model that sees whole BreakHis fields: the field [700, 460]
    at the mpp of `magnifications` (one "200X", or {magnification: image count}: the dominant one)."""
    if isinstance(magnifications, dict):
        counted = {str(m): int(n) for m, n in magnifications.items() if int(n) > 0}
        if not counted:
            raise ValueError("no magnification counts to derive a scale from")
        dominant = max(counted, key=lambda m: (counted[m], m))
        share = f"{counted[dominant]} of {sum(counted.values())} training images at {dominant}"
    else:
        dominant, share = str(magnifications).upper(), f"all training images at {str(magnifications).upper()}"
    return {"mpp": magnification_mpp(dominant), "tile_px": list(BREAKHIS_FIELD),
            "source": f"{source}: a whole {BREAKHIS_FIELD[0]}x{BREAKHIS_FIELD[1]} BreakHis field at {dominant} "
                      f"({share}; mpp = {REFERENCE_MPP} x {REFERENCE_MAGNIFICATION} / magnification)"}


def model_scale(card: dict) -> dict:
    """{"mpp", "tile_px": [w, h], "source"}: the physical scale a classifier's input covers.

    The card's own "scale" when it has one; else estimated from what it was trained on: its
    training magnification, or with "all" the dominant magnification of its images (the card's
    evidence counts), else 200X (most of BreakHis' own pipelines and of the real set)."""
    stated = card.get("scale")
    if stated:
        mpp, tile = float(stated["mpp"]), [int(v) for v in stated["tile_px"]]
        if mpp <= 0 or len(tile) != 2 or min(tile) < 1:
            raise ValueError(f"the model card's scale is invalid: {stated}")
        return {"mpp": mpp, "tile_px": tile, "source": str(stated.get("source", "model card"))}
    training = card.get("training") or {}
    magnification = str(training.get("magnification") or "all")
    if magnification.lower() != "all":
        return whole_field_scale(magnification, "estimated from the card's training magnification")
    counts = (card.get("evidence") or {}).get("by_magnification")
    if counts:
        return whole_field_scale(counts, "estimated from the card's training images")
    return whole_field_scale("200X", "estimated (the card states no magnification; 200X assumed)")
