"""Fields at one scale, held in memory: the input of the field recipe (core.training.field_fit).

A BreakHis field is 700x460 px; its published copies differ (500x328 shrunk, 224x224 squashed).
`restore_field` brings any of them back to the field's true aspect at FIELD_PX = 350x230 px, i.e.
about 1 um/px for a 200X field (core.data.scale), so that the model sees cells at one size and
never a squashed field. Training draws random square crops from these fields on the accelerator
(core.data.keras_augment); prediction looks at `crops` squares of `crop_px` along the field
(`view_boxes`), each resized to the model's input, the same crop-and-resize op as training.

A field of another magnification covers more (40X, 100X) or less (400X) tissue in the same pixels.
With `physical` views (a model trained with --physical-crops) a crop covers the same tissue at every
magnification that the image states: crop_px at 200X, crop_px / 5 px at 40X (then resized up like
every crop), the whole short side at 400X. Training crops follow the same rule
(core.data.keras_augment.FieldAugmentation with each field's scale), so a model learns tissue at
one scale whatever the magnification it was photographed at (README, "Physical views").

Resolution: 599 of the 757 real images here are copies a publisher squashed to 224x224 px, so a
field restored from them holds 224 samples across; a full-size 700x460 source holds three times
more horizontally, and so does every image of the full data set, another lab's camera or a slide.
Trained on the mix, the field recipe was weakest on held-out full-size fields (and phyllodes
tumour here comes only from full-size sources). A model with `band_limit` views sees every field
and slide tile at the squashed copies' detail (`band_limit`: down to it and back), in training and
in prediction alike; measured better on held-out full-size fields on two sets of folds (README,
"The bundled model").

Everything here is numpy and PIL: no TensorFlow, so the same code feeds training under JAX on a
machine without TensorFlow (`pack_fields` / `read_pack`: JPEG fields, ~30 kB each).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.data.breakhis import field_key
from core.data.scale import BREAKHIS_FIELD, magnification_mpp
from core.errors import DatasetError

FIELD_PX = (350, 230)  # (width, height): a BreakHis field at half its original pixel count, ~1 um/px at 200X
FIELD_MAGNIFICATION = "200X"  # the magnification whose fields FIELD_PX puts at ~1 um/px
PUBLISHED_PX = (224, 224)  # (width, height) of the squashed copies most small BreakHis sets are made of
PACK_INDEX = "fields.csv"
PACK_COLUMNS = ("file", "label", "subtype", "magnification", "case", "slide")


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """How a field model looks at an image (written in its card as card["views"]).

    crops squares of crop_px (at the field scale, FIELD_PX) spaced evenly along the field's long
    side, each resized to input_size; with dihedral, each crop in its 8 symmetries too. Tiles of
    a slide are already one crop each (core.slide): they get the dihedral views only."""

    input_size: int
    crop_px: int = 224
    crops: int = 3
    dihedral: bool = True
    field_px: tuple[int, int] = FIELD_PX
    physical: bool = False  # crops of the same tissue at every stated magnification (crop_px at 200X)
    band_limit: bool = False  # fields and tiles at the squashed copies' detail (band_limit), as trained

    def to_dict(self) -> dict:
        return {"kind": "field", **dataclasses.asdict(self), "field_px": list(self.field_px)}

    @classmethod
    def from_card(cls, card: dict) -> "ViewSpec | None":
        views = card.get("views")
        if not views or views.get("kind") != "field":
            return None
        # Cards written before physical views predict as they were measured: crop_px at every magnification.
        return cls(int(views["input_size"]), int(views["crop_px"]), int(views["crops"]), bool(views["dihedral"]),
                   tuple(int(v) for v in views["field_px"]), bool(views.get("physical", False)),
                   bool(views.get("band_limit", False)))

    @property
    def views_per_image(self) -> int:
        return self.crops * (8 if self.dihedral else 1)

    def crop_px_at(self, magnification=None) -> float:
        """The crop side in field pixels for a field of this magnification ("40X", 400, None): with
        physical views the same tissue as crop_px at 200X (at most the field's short side, view_boxes);
        an unknown or unstated magnification is taken as 200X, the scale the field frame is built for."""
        return self.crop_px * (physical_scale(magnification) if self.physical else 1.0)

    def boxes(self, height: int, width: int, magnification=None) -> np.ndarray:
        """(crops, 4) view boxes of one field (view_boxes at crop_px_at(magnification))."""
        return view_boxes(height, width, self.crop_px_at(magnification), self.crops)

    def detail(self, rgb: np.ndarray) -> np.ndarray:
        """A restored field or a slide tile at the detail this model was trained at (band_limit)."""
        return band_limit(rgb, self.field_px) if self.band_limit else rgb

    def describe(self) -> str:
        sym = " x 8 dihedral symmetries" if self.dihedral else ""
        scale = (f"crops of the same tissue at every stated magnification ({self.crop_px} px at 200X, "
                 f"{self.crop_px_at('40X'):.0f} px at 40X; unstated: as 200X)" if self.physical
                 else f"crops of {self.crop_px} px")
        detail = (f" at the detail of a {PUBLISHED_PX[0]}x{PUBLISHED_PX[1]} px copy" if self.band_limit else "")
        return (f"field restored to its aspect at {self.field_px[0]}x{self.field_px[1]} px (~1 um/px at 200X){detail}; "
                f"{self.crops} {scale} along it{sym}, each resized to {self.input_size} px; "
                "the mean softmax of these views")


def per_image(magnifications, count: int) -> list:
    """One magnification (or None, unstated) per image: None for all when none were given."""
    magnifications = [None] * count if magnifications is None else list(magnifications)
    if len(magnifications) != count:
        raise ValueError(f"{len(magnifications)} magnifications for {count} images")
    return magnifications


def physical_scale(magnification) -> float:
    """How much of a field's side holds the tissue of the same side at 200X: 0.2 at 40X, 2 at 400X;
    1 for an unknown or unstated magnification (read as 200X, the scale the field frame is built for)."""
    value = magnification_value(magnification)
    return 1.0 if value is None else magnification_mpp(FIELD_MAGNIFICATION) / magnification_mpp(value)


def magnification_value(magnification) -> int | None:
    """'40X', '40x', 40 -> 40; None, '', 'not stated' or anything else -> None (unknown)."""
    text = str(magnification or "").strip().upper().removesuffix("X")
    return int(text) if text.isdigit() and int(text) > 0 else None


def restore_field(rgb: np.ndarray, field_px: tuple[int, int] = FIELD_PX) -> np.ndarray:
    """uint8 RGB field of any published size -> the field at field_px, aspect restored.

    A square image smaller than a field is a squashed copy of a 700x460 field (the 224x224 sets):
    it is stretched back. Any other image keeps its aspect and is resized so that its short side is
    the field's short side (700x460 and 500x328 become exactly 350x230); a portrait image is turned
    to landscape first, so that every field has the same shape."""
    image = Image.fromarray(np.asarray(rgb, np.uint8))
    width, height = image.size
    if height > width:
        image, (width, height) = image.transpose(Image.Transpose.ROTATE_90), (height, width)
    if width == height and width < BREAKHIS_FIELD[1]:
        size = field_px
    else:
        short = field_px[1]
        size = (max(short, round(width * short / height)), short)
    resized = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
    if size != field_px:  # a field of another aspect: the central field_px window (or padded by reflection)
        resized = _fit_width(np.asarray(resized), field_px[0])
        return resized
    return np.asarray(resized, np.uint8)


def band_limit(rgb: np.ndarray, field_px: tuple[int, int] = FIELD_PX,
               published_px: tuple[int, int] = PUBLISHED_PX) -> np.ndarray:
    """uint8 (H, W, 3) at the field scale (a restored field, or a slide tile at the model's scale)
    -> the same shape with at most the detail a field published at published_px holds: resized down
    (PIL's bilinear is antialiased when it shrinks) and back up. Measured on the bundled full-size
    samples: a field and its squashed copy differ by 1.8-2.7 of 255 per pixel, 0.8-1.7 once both are
    band-limited (tests/test_band_limit.py, three ways of squashing). Cheaper than it looks: a 224-px
    view resized to a 128-px input keeps less than this detail anyway, but without an antialiasing
    filter (core.data.keras_augment.crop_and_resize), through which the finer detail would alias."""
    height, width = rgb.shape[:2]
    small = (max(1, round(width * published_px[0] / field_px[0])), max(1, round(height * published_px[1] / field_px[1])))
    if small[0] >= width and small[1] >= height:
        return rgb
    image = Image.fromarray(np.asarray(rgb, np.uint8)).resize(small, Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None), np.uint8)


def band_limit_all(fields: np.ndarray, workers: int = 4) -> np.ndarray:
    """band_limit of every field of an (N, H, W, 3) stack (threads: PIL releases the GIL)."""
    if not len(fields):
        return fields
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(band_limit, fields)))


def _fit_width(array: np.ndarray, width: int) -> np.ndarray:
    """Centre-crop (or reflect-pad) an (H, W', 3) array to width W, so every field stacks."""
    have = array.shape[1]
    if have >= width:
        start = (have - width) // 2
        return np.ascontiguousarray(array[:, start:start + width])
    pad = width - have
    return np.pad(array, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)), mode="reflect")


def view_boxes(height: int, width: int, crop_px: float, crops: int) -> np.ndarray:
    """(crops, 4) boxes [y0, x0, side, side] in pixels: squares of crop_px (at most the short side),
    centred across the short side and spaced evenly along the long side, ends included."""
    side = min(crop_px, height, width)
    y_room, x_room = height - side, width - side
    along = np.linspace(0.0, 1.0, crops) if crops > 1 else np.array([0.5])
    if x_room >= y_room:
        return np.stack([np.full(crops, y_room / 2), along * x_room, np.full(crops, side), np.full(crops, side)], 1)
    return np.stack([along * y_room, np.full(crops, x_room / 2), np.full(crops, side), np.full(crops, side)], 1)


def load_fields(paths, workers: int = 4, own_images: bool = False) -> np.ndarray:
    """Image files -> (N, H, W, 3) uint8 fields at FIELD_PX (decoded once, in threads). own_images:
    files this project wrote (the GAN's samples, core.gan.sampling), decoded directly, since a coarse
    generator's field may be smaller than the upload checks' minimum size."""
    from core.data.images import load_image  # the project's safe decoder (modes, bit depths, EXIF)

    def one(path):
        if own_images:
            with Image.open(path) as image:
                return restore_field(np.asarray(image.convert("RGB")))
        return restore_field(load_image(Path(path).read_bytes(), name=str(path)).rgb)

    paths = list(paths)
    if not paths:
        return np.zeros((0, FIELD_PX[1], FIELD_PX[0], 3), np.uint8)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(one, paths)))


def pack_fields(table: pd.DataFrame, out: str | Path, quality: int = 92) -> Path:
    """Write an indexed table's images as JPEG fields at FIELD_PX plus fields.csv: the training set
    in a form that travels (757 fields ~ 20 MB) to a machine without the data set or TensorFlow."""
    names = _pack_names(table["path"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fields = load_fields(table["path"])
    rows = []
    for field, row, name in zip(fields, table.itertuples(index=False), names):
        Image.fromarray(field).save(out / name, quality=quality, subsampling=0)
        rows.append({"file": name, **{c: getattr(row, c) for c in PACK_COLUMNS[1:]}})
    pd.DataFrame(rows, columns=list(PACK_COLUMNS)).to_csv(out / PACK_INDEX, index=False)
    return out


def _pack_names(paths) -> list[str]:
    """Each image's pack file: its BreakHis name as .jpg (index_folder, the GAN and evaluate read a pack
    too). Refused before anything is written when two rows would share a file (the same field twice,
    e.g. as .png and .jpg: breakhis.field_key, or names differing in case only): the later one would
    overwrite the first and fields.csv would list it twice, more fields than files."""
    names, first = [], {}
    for path in paths:
        name = f"{Path(path).stem}.jpg"
        key = field_key(name) or name.lower()
        if key in first:
            raise DatasetError(f"{path} and {first[key]} would be one file of the pack ({name}): the same "
                               "field twice; pack one copy of each field (index_folder keeps one)")
        first[key] = path
        names.append(name)
    return names


def is_pack(folder: str | Path) -> bool:
    return (Path(folder) / PACK_INDEX).is_file()


def read_pack(folder: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """(table, fields) of a pack_fields folder; the table has the index's columns plus `path`, and
    `synthetic` False: a pack holds real fields only (pack-fields keeps the real images), and every
    consumer of a BreakHis index (the run's card, the splits) reads that column."""
    folder = Path(folder)
    try:
        table = pd.read_csv(folder / PACK_INDEX, dtype=str)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{folder / PACK_INDEX} is not a readable field pack ({error})") from None
    missing = [c for c in PACK_COLUMNS if c not in table]
    if missing:
        raise DatasetError(f"{folder / PACK_INDEX} lacks the columns {missing}")
    fields = np.stack([np.asarray(Image.open(io.BytesIO((folder / f).read_bytes())).convert("RGB"))
                       for f in table["file"]]) if len(table) else np.zeros((0, FIELD_PX[1], FIELD_PX[0], 3), np.uint8)
    if fields.shape[1:3] != (FIELD_PX[1], FIELD_PX[0]):
        raise DatasetError(f"{folder}: fields are {fields.shape[1:3]}, not {FIELD_PX[::-1]}")
    return table.assign(path=[str(folder / f) for f in table["file"]], synthetic=False), fields
