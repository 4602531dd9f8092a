"""Tile models: an image -> tiles at the model's physical scale -> one pass -> one image-level result.

A tile model (card["tiling"] present) was trained on square tiles cut from fields brought to one
physical scale, card["scale"] = {"mpp", "tile_px", "source"} (core.data.scale explains the
microns-per-pixel estimate). Squashed 224x224 copies get their aspect back in the same resample,
so every tile shows the same tissue area whatever the source of the file. At inference an image is

    brought to the model's mpp (core.data.scale.to_scale, once) -> cut into a grid of tiles
    (core.data.scale.tile_grid; a field smaller than a tile is mirror-padded) -> every tile of every
    image through ONE compiled pass (core.model.cam: probabilities and the Grad-CAMs of every
    target) -> per image the mean of its tiles' probabilities, and each target's Grad-CAM stitched
    back over the image (overlaps averaged).

Training (core.training.tiles) cuts its random tiles with the same `scaled_field` and `pad_to`, so
the model sees at inference exactly what it saw in training. Whole-slide inference (core.slide)
reads the same card["scale"] and cuts the same grid.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from core.data.scale import Scale, field_mpp, image_scale, tile_grid, to_scale

# An image whose magnification is not stated is taken to be a BreakHis field at this one (most of the
# training data is 200X); the prediction then says so.
ASSUMED_MAGNIFICATION = "200X"


@dataclasses.dataclass(frozen=True)
class TileSpec:
    """The physical scale and tile grid of a tile model (from its card)."""

    mpp: float  # microns per pixel of the tiles
    tile: int  # tile side in pixels at that scale (square tiles)
    stride: int  # grid step at inference (tile: no overlap)
    aggregate: str = "mean"  # how tile probabilities become the image's

    @classmethod
    def from_card(cls, card: dict) -> "TileSpec | None":
        """The card's tiling, or None for a whole-field model (no card["tiling"])."""
        tiling = card.get("tiling")
        if not tiling:
            return None
        scale = card["scale"]
        width, height = (int(v) for v in scale["tile_px"])
        if width != height:
            raise ValueError(f"tile models have square tiles, not {width}x{height}")
        return cls(float(scale["mpp"]), width, int(tiling.get("stride") or width), tiling.get("aggregate", "mean"))

    def card_blocks(self, source: str) -> dict:
        """card["scale"] (the agreed schema) and card["tiling"] for this spec."""
        return {"scale": {"mpp": self.mpp, "tile_px": [self.tile, self.tile], "source": source},
                "tiling": {"stride": self.stride, "aggregate": self.aggregate, "padding": "mirror (reflect)",
                           "description": f"{self.tile}x{self.tile}-px tiles at {self.mpp:g} um/px "
                                          f"({self.tile * self.mpp:.0f} um square), grid step {self.stride} px; "
                                          "image result = mean of the tiles' calibrated probabilities"}}


def scale_of(name: str | None, rgb: np.ndarray, magnification: str | None = None) -> tuple[Scale, str | None]:
    """(the image's scale, a note when it had to be assumed): from its BreakHis name, else the
    magnification given, else ASSUMED_MAGNIFICATION."""
    height, width = rgb.shape[:2]
    scale = image_scale(name or "", width, height, magnification)
    if scale is not None:
        return scale, None
    return (field_mpp(ASSUMED_MAGNIFICATION, width, height, f"assumed {ASSUMED_MAGNIFICATION}"),
            f"magnification not stated: taken as {ASSUMED_MAGNIFICATION} for the model's physical scale")


def scaled_field(rgb: np.ndarray, scale: Scale, mpp: float) -> np.ndarray:
    """The field at `mpp` in both directions (one resample; a squashed copy's aspect restored)."""
    return to_scale(np.asarray(rgb, np.uint8), scale, mpp)


def pad_to(rgb: np.ndarray, tile: int) -> np.ndarray:
    """Mirror-pad a field smaller than a tile (a 400X field at a coarse scale) up to the tile size,
    so it carries tissue texture rather than an artificial border."""
    height, width = rgb.shape[:2]
    if height >= tile and width >= tile:
        return rgb
    return np.pad(rgb, ((0, max(0, tile - height)), (0, max(0, tile - width)), (0, 0)), mode="reflect")


def cut_tiles(field: np.ndarray, tile: int, stride: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(tiles (T, tile, tile, 3) uint8, their (x, y) origins) of a field already at the model's scale."""
    field = pad_to(field, tile)
    height, width = field.shape[:2]
    origins = tile_grid(width, height, tile, stride)
    return np.stack([field[y:y + tile, x:x + tile] for x, y in origins]), origins


@dataclasses.dataclass
class TiledImage:
    """One image cut for a tile model: its tiles, where they sit, and the scaled field's size."""

    tiles: np.ndarray
    origins: list[tuple[int, int]]
    field_size: tuple[int, int]  # (height, width) of the scaled field before padding
    note: str | None = None


def tile_image(rgb: np.ndarray, spec: TileSpec, name: str | None = None, magnification: str | None = None,
               scale: Scale | None = None) -> TiledImage:
    """An image -> its tiles at the spec's scale (scale from `scale`, else the name / magnification)."""
    note = None
    if scale is None:
        scale, note = scale_of(name, rgb, magnification)
    field = scaled_field(rgb, scale, spec.mpp)
    tiles, origins = cut_tiles(field, spec.tile, spec.stride)
    return TiledImage(tiles, origins, field.shape[:2], note)


def aggregate(outputs: dict[str, np.ndarray], counts: list[int]) -> dict[str, np.ndarray]:
    """Per-tile outputs {head: (sum(counts), ...)} -> per image the mean over its tiles; per-view
    entries (name@views) likewise. The mean of probabilities (not of logits) keeps a confident tile
    from outvoting the rest, and is what the tiles were calibrated against."""
    bounds = np.cumsum([0, *counts])
    return {name: np.stack([np.asarray(value[a:b]).mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
            for name, value in outputs.items()}


def stitch(cams: np.ndarray, image: TiledImage, tile: int) -> np.ndarray:
    """Per-tile low-resolution maps (T, ..., h, w) -> one map over the scaled field (..., H', W'),
    each tile's map placed at its origin on a grid of cells tile/h pixels wide, overlaps averaged.
    Raw Grad-CAM values of one model and target are comparable between tiles, so the stitched map
    is normalised once, over the whole image (core.model.cam.to_heatmap)."""
    cams = np.asarray(cams, np.float32)
    cell = tile / cams.shape[-1]
    height, width = image.field_size
    rows, cols = max(1, round(height / cell)), max(1, round(width / cell))
    padded_rows = max(rows, round(max(height, tile) / cell))
    padded_cols = max(cols, round(max(width, tile) / cell))
    total = np.zeros(cams.shape[1:-2] + (padded_rows, padded_cols), np.float32)
    weight = np.zeros((padded_rows, padded_cols), np.float32)
    h, w = cams.shape[-2:]
    for cam, (x, y) in zip(cams, image.origins):
        top, left = min(round(y / cell), padded_rows - h), min(round(x / cell), padded_cols - w)
        total[..., top:top + h, left:left + w] += cam
        weight[top:top + h, left:left + w] += 1.0
    return (total / np.maximum(weight, 1.0))[..., :rows, :cols]
