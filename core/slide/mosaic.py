"""Test slides made of real BreakHis fields: benign tissue with a malignant focus, and its ground truth.

BreakHis has no whole slides, only fields taken inside each lesion. A slide-level rule (a
malignant focus in benign tissue, core.slide.call) is checked on mosaics: fields of given
patients placed edge to edge on a grid of slots at the model's scale (core.data.scale: a slot is
one whole 700x460 field of the commonest magnification at least as fine as the model's mpp, at
that mpp: 700x460 px for a whole-field model at 200X, 350x230 for the field recipe's 1 um/px; a
field of that magnification, or a shrunk or squashed copy of one, is resampled once to it), with
a glass margin around, written as a pyramidal tiled TIFF that OpenSlide and tiffslide open (`write_pyramid`).

`build_mosaic` places `focus` malignant fields of ONE patient (a focus is one tumour) as a
connected blob (4-connected, grown from a random slot) or scattered, the other slots benign
fields (each used once before any repeats; random flips); `Mosaic.slots` is the ground truth and
`Mosaic.focus_tiles(tiles)` marks the analysed tiles lying mostly inside the focus.

Used by `python -m core slide-threshold` (core.slide.choose), the tests and the benches.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from core.data.breakhis import parse_name
from core.data.images import load_image
from core.data.scale import BREAKHIS_FIELD, Scale, image_scale, magnification_mpp, model_scale, scaled_size, to_scale

GLASS = 242  # background grey of an empty slide (above the tissue mask's optical density)


def write_pyramid(path: Path, rgb: np.ndarray, mpp: float | None = 0.5, levels: int = 3,
                  tile: int = 256, compression: str = "jpeg") -> Path:
    """Write `rgb` as a tiled pyramid of `levels` levels (each half the previous) in OpenSlide's
    generic-TIFF layout: reduced levels are NewSubfileType 1 in the main IFD chain, resolution in
    pixels per centimetre (read back as mpp)."""
    with tifffile.TiffWriter(path) as writer:
        level = rgb
        for i in range(levels):
            extra = {}
            if mpp:
                per_cm = 1e4 / (mpp * 2 ** i)
                extra = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            writer.write(level, tile=(tile, tile), photometric="rgb", compression=compression,
                         subfiletype=0 if i == 0 else 1, **extra)
            level = np.asarray(Image.fromarray(level).reduce(2))
    return Path(path)


def _magnification(path) -> str | None:
    parsed = parse_name(Path(path).name)
    return parsed.magnification if parsed is not None else None


def fields_at_scale(table: pd.DataFrame, mpp: float) -> pd.DataFrame:
    """The rows of a field table (columns path, label, case; BreakHis names) that fill a mosaic at the
    model's mpp: those of the commonest magnification whose fields are at least as fine as mpp
    (shrunk to it, never enlarged), so every slot is the same piece of tissue. A whole-field model
    at 0.5 um/px gets the 200X fields as they are; the field recipe at 1 um/px gets them halved."""
    magnifications = table["path"].map(_magnification)
    fine = magnifications[[m is not None and magnification_mpp(m) <= mpp * 1.02 for m in magnifications]]
    if not len(fine):
        return table.iloc[:0].reset_index(drop=True)
    return table[magnifications == fine.value_counts().index[0]].reset_index(drop=True)


def field_slot(fields: pd.DataFrame, mpp: float) -> tuple[int, int]:
    """(width, height) of one mosaic slot: a whole BreakHis field of these fields' magnification at mpp."""
    magnification = _magnification(fields["path"].iloc[0])
    native = magnification_mpp(magnification)
    return scaled_size(*BREAKHIS_FIELD, Scale(native, native, magnification), mpp)


@functools.lru_cache(maxsize=512)
def _field(path: str, mpp: float, slot: tuple[int, int]) -> np.ndarray:
    loaded = load_image(path, check_histology=False).rgb
    scale = image_scale(Path(path).name, loaded.shape[1], loaded.shape[0])
    rgb = to_scale(loaded, scale, mpp) if scale is not None else loaded
    if (rgb.shape[1], rgb.shape[0]) != slot:
        rgb = np.asarray(Image.fromarray(rgb).resize(slot, Image.Resampling.LANCZOS))
    return rgb


@dataclasses.dataclass
class Mosaic:
    path: Path
    size: tuple[int, int]  # level-0 (w, h)
    mpp: float
    slot: tuple[int, int]  # level-0 (w, h) of one field
    slots: pd.DataFrame  # one row per field: row, col, x, y, width, height, label, case, path, flip

    @property
    def focus(self) -> pd.DataFrame:
        return self.slots[self.slots["label"] == "malignant"]

    @property
    def focus_share(self) -> float:
        """Share of the tissue (fields) that is malignant."""
        return len(self.focus) / len(self.slots)

    @property
    def focus_box(self) -> tuple[int, int, int, int] | None:
        f = self.focus
        if not len(f):
            return None
        return int(f["x"].min()), int(f["y"].min()), int((f["x"] + f["width"]).max()), int((f["y"] + f["height"]).max())

    def focus_tiles(self, tiles: pd.DataFrame, least: float = 0.5) -> np.ndarray:
        """Per tile (x, y, width, height in level-0 px): True when >= `least` of it lies on malignant fields."""
        inside = np.zeros(len(tiles))
        for f in self.focus.itertuples(index=False):
            w = np.clip(np.minimum(tiles["x"] + tiles["width"], f.x + f.width) - np.maximum(tiles["x"], f.x), 0, None)
            h = np.clip(np.minimum(tiles["y"] + tiles["height"], f.y + f.height) - np.maximum(tiles["y"], f.y), 0, None)
            inside += (w * h).to_numpy(float)
        return inside / (tiles["width"] * tiles["height"]).to_numpy(float) >= least

    def to_dict(self) -> dict:
        return {"path": str(self.path), "size": list(self.size), "mpp": self.mpp, "fields": len(self.slots),
                "focus_fields": len(self.focus), "focus_share": self.focus_share,
                "focus_case": None if not len(self.focus) else str(self.focus["case"].iloc[0]),
                "focus_box": self.focus_box}


def _blob(rng: np.random.Generator, grid: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """n slots (row, col) forming a 4-connected blob grown from a random slot."""
    rows, cols = grid
    cells = [(int(rng.integers(rows)), int(rng.integers(cols)))]
    while len(cells) < n:
        frontier = sorted({(r + dr, c + dc) for r, c in cells for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))
                           if 0 <= r + dr < rows and 0 <= c + dc < cols} - set(cells))
        cells.append(frontier[int(rng.integers(len(frontier)))])
    return cells


def _draw(rng: np.random.Generator, table: pd.DataFrame, n: int) -> pd.DataFrame:
    """n rows: each row once (in random order) before any is repeated."""
    order = np.concatenate([rng.permutation(len(table)) for _ in range(-(-n // len(table)))])[:n]
    return table.iloc[order].reset_index(drop=True)


def build_mosaic(path, benign: pd.DataFrame, malignant: pd.DataFrame | None = None, focus: int = 0,
                 grid: tuple[int, int] = (4, 4), seed: int = 0, mpp: float = 0.5, slot: tuple[int, int] = (700, 460),
                 margin: float = 1.0, scattered: bool = False, focus_case: str | None = None,
                 levels: int = 3) -> Mosaic:
    """A rows x cols mosaic (grid = (rows, cols)) of benign fields with `focus` malignant fields of
    one patient (`focus_case`, or one drawn at random), `margin` slots of glass around it."""
    rows, cols = grid
    if not 0 <= focus <= rows * cols:
        raise ValueError(f"a focus of {focus} fields does not fit a {rows}x{cols} grid")
    if focus and (malignant is None or not len(malignant)):
        raise ValueError("a focus needs malignant fields")
    if not len(benign) and focus < rows * cols:
        raise ValueError("benign fields are needed around the focus")
    rng = np.random.default_rng(seed)
    cells = [] if not focus else (
        [divmod(int(i), cols) for i in rng.choice(rows * cols, focus, replace=False)] if scattered
        else _blob(rng, grid, focus))
    drawn_malignant = None
    if focus:
        cases = sorted(malignant["case"].unique())
        case = focus_case if focus_case is not None else cases[int(rng.integers(len(cases)))]
        drawn_malignant = _draw(rng, malignant[malignant["case"] == case], focus)
    drawn_benign = _draw(rng, benign, rows * cols - focus) if focus < rows * cols else None
    w, h = slot
    x0, y0 = round(margin * w), round(margin * h)
    size = (cols * w + 2 * x0, rows * h + 2 * y0)
    rgb = np.full((size[1], size[0], 3), GLASS, np.uint8)
    placed, used = [], {"malignant": 0, "benign": 0}
    for r in range(rows):
        for c in range(cols):
            label = "malignant" if (r, c) in cells else "benign"
            source = (drawn_malignant if label == "malignant" else drawn_benign).iloc[used[label]]
            used[label] += 1
            flip = int(rng.integers(4))  # none, left-right, up-down, both (a 180-degree turn)
            field = _field(str(source["path"]), mpp, slot)
            field = field[:, ::-1] if flip & 1 else field
            field = field[::-1] if flip & 2 else field
            x, y = x0 + c * w, y0 + r * h
            rgb[y:y + h, x:x + w] = field
            placed.append({"row": r, "col": c, "x": x, "y": y, "width": w, "height": h, "label": label,
                           "case": str(source["case"]), "path": str(source["path"]), "flip": flip})
    write_pyramid(Path(path), rgb, mpp, levels=levels)
    return Mosaic(Path(path), size, mpp, slot, pd.DataFrame(placed))


def mosaic_set(fields: pd.DataFrame, out_dir, card: dict, foci=(0, 1, 2, 4), repeats: int = 2,
               benign_mosaics: int = 12, grid: tuple[int, int] = (4, 4), seed: int = 0) -> list[Mosaic]:
    """Mosaics of the given patients' fields at the model's scale: `benign_mosaics` benign-only, and
    for each focus size > 0 and each malignant patient, `repeats` mosaics with a focus of its fields;
    every other one with a half-field glass margin, its fields straddling the tile grid."""
    mpp = model_scale(card)["mpp"]
    usable = fields_at_scale(fields, mpp)
    benign, malignant = usable[usable["label"] == "benign"], usable[usable["label"] == "malignant"]
    if not len(benign) or not len(malignant):
        raise ValueError(f"mosaics need benign and malignant fields at {mpp:g} um/px; found {len(benign)} benign "
                         f"and {len(malignant)} malignant")
    slot = field_slot(usable, mpp)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = [(0, None, i) for i in range(benign_mosaics if 0 in foci else 0)]
    plan += [(n, case, i) for n in foci if n > 0 for case in sorted(malignant["case"].unique()) for i in range(repeats)]
    mosaics = []
    for k, (n, case, i) in enumerate(plan):
        name = f"mosaic_{k:03d}_focus{n}" + (f"_{case}_{i}" if case else f"_{i}") + ".tif"
        # Every other mosaic is offset by half a field, so that its fields straddle the tile grid.
        mosaics.append(build_mosaic(out / name, benign, malignant, n, grid, seed=seed * 100_003 + k, mpp=mpp,
                                    slot=slot, focus_case=case, levels=2, margin=0.5 if k % 2 else 1.0))
    return mosaics
