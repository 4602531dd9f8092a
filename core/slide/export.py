"""A SlideResult's files: heat-map PNG over the thumbnail, tiles CSV, QuPath GeoJSON, summary JSON.

Each names the region that drove the slide call (core.slide.call) first: the CSV lists its tiles
first (column "region" = 1, "drives_call" true), the GeoJSON's first Feature is its outline
(name "Driving region (slide call)"), summary.json's call has it under "region" with a
"statement" (or says that no region qualified, and which came closest).

GeoJSON: one FeatureCollection; each region (the union of the boxes of connected tiles with
p(malignant) >= 0.5, made with shapely) is a Feature whose geometry is in LEVEL-0 pixel coordinates, as
QuPath's "File > Import objects" expects for an image opened at full resolution, with
properties {"objectType": "annotation", "classification": {"name": "Malignant", "color": [r, g,
b]}} (the format QuPath 0.4+ writes and reads back) and the region's tile count and mean
p(malignant) as "measurements".

`write_outputs` writes every file to a temporary name and renames it into place, summary.json
last: a cancelled or failed run never leaves a folder that looks complete. `check_out_folder` is
asked before any slide is read, so an --out that cannot be written is refused, not found out
after the first slide's tiles.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from shapely.geometry import mapping

from core.errors import UserInputError
from core.model.heatmap import colorize

MALIGNANT_COLOR = [200, 0, 0]
NOT_CALLED_CLASS, NOT_CALLED_COLOR = "Suspicious (model, not called)", [230, 140, 0]  # rule "none": no call
SUSPICIOUS_CLASS = "Suspicious (model)"  # a region that did not make the slide's malignant call
SUMMARY = "summary.json"
# Every region the model found suspicious, the one that drove a malignant call (if any) first: named for that,
# whatever the call (a model that makes no slide call, or a benign call, has no malignant region in it).
GEOJSON = "suspicious_regions.geojson"
DRIVING_NAME = "Driving region (slide call)"
CSV_COLUMNS = ["tile", "region", "drives_call", "row", "col", "x", "y", "width", "height", "tissue", "p_benign", "p_malignant", "label", "subtype",
               "p_subtype", "confidence", "entropy_bits", "p_malignant_spread", "refer", "refer_reasons"]
# What every row of the tiles CSV says of the model (SlideResult.model): column -> key.
MODEL_COLUMNS = {"model": "name", "model_limited": "limited", "model_demo": "demo",
                 "subtype_reliable": "subtype_reliable"}


def heatmap_rgb(result, alpha: float = 0.5) -> np.ndarray:
    """The thumbnail with p(malignant) in the Turbo colormap blended over the analysed tiles, and the
    outline of the region that drove a malignant call (white with a black core)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    thumbnail = result.thumbnail.astype(np.float32)
    covered = np.isfinite(result.p_malignant)[..., None]
    colored = colorize(np.nan_to_num(result.p_malignant)).astype(np.float32)
    blended = np.round(np.where(covered, (1 - alpha) * thumbnail + alpha * colored, thumbnail)).astype(np.uint8)
    driving = driving_region(result)
    if driving is None:
        return blended
    image = Image.fromarray(blended)
    draw = ImageDraw.Draw(image)
    outline = region_outline(result, driving)
    width = max(2, round(max(image.size) / 300))
    for polygon in getattr(outline, "geoms", [outline]):
        ring = [(x / result.map_downsample, y / result.map_downsample) for x, y in polygon.exterior.coords]
        draw.line(ring, fill=(255, 255, 255), width=width + 2, joint="curve")
        draw.line(ring, fill=(0, 0, 0), width=max(1, width - 1), joint="curve")
    return np.asarray(image)


def heatmap_png(result, alpha: float = 0.5) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(heatmap_rgb(result, alpha)).save(buffer, format="PNG")
    return buffer.getvalue()


def driving_region(result):
    """The core.slide.call.Region that drove a malignant call, or None (benign: no region qualified)."""
    regions = getattr(result, "regions", None) or []
    return regions[0] if regions and regions[0].qualified and result.call.get("region") else None


def ordered_tiles(result):
    """The tiles table with the driving region's tiles first (most suspicious first), then the rest."""
    tiles = result.tiles.copy()
    driving = driving_region(result)
    tiles["drives_call"] = tiles.index.isin(driving.rows) if driving is not None else False
    if "region" not in tiles:
        tiles["region"] = 0
    return tiles.sort_values(["drives_call", "p_malignant", "tile"], ascending=[False, False, True])


def tiles_csv(result) -> str:
    """One row per analysed tile, the driving region's first; x, y, width, height in level-0 pixels (the tile's
    box clipped to the slide, TilePlan.level0_box).
    Every row names the model, whether its data are LIMITED (or a demo) and whether its subtype is
    reliable (the app's rule), as the Diagnose CSV does: the file is read away from the app."""
    tiles = ordered_tiles(result)
    table = tiles[[c for c in CSV_COLUMNS if c in tiles]]
    model = getattr(result, "model", None) or {}
    table = table.assign(**{column: model.get(key) for column, key in MODEL_COLUMNS.items()})
    return table.to_csv(index=False, float_format="%.5f")


def region_outline(result, region):
    """Shapely (Multi)Polygon (level-0 px): the union of the region's tile boxes, the geometry its size is
    measured on (core.slide.call.tile_union)."""
    from core.slide.call import tile_union

    return tile_union(result.tiles.loc[region.rows])


def malignant_regions(result) -> list:
    """Shapely outlines (level-0 px) of the regions, the driving one first."""
    return [region_outline(result, region) for region in (getattr(result, "regions", None) or [])]


def geojson(result) -> dict:
    """The regions as a GeoJSON FeatureCollection QuPath imports as annotations; the driving one first.
    Each names the model, whether its data are LIMITED and the slide call, since the file is opened away
    from the app. Only the region that drove a malignant call is classed "Malignant"; the others (and every
    region of a benign call) are SUSPICIOUS_CLASS, and a model that makes no call (rule "none") gets
    NOT_CALLED_CLASS: QuPath shows the class, and a benign slide's regions must not read as malignant."""
    from core.slide.call import NOT_CALLED

    driving = driving_region(result)
    model, call = getattr(result, "model", None) or {}, result.call["label"]
    features = []
    for region in getattr(result, "regions", None) or []:
        drives = region is driving
        classification = ({"name": NOT_CALLED_CLASS, "color": NOT_CALLED_COLOR} if call == NOT_CALLED else
                          {"name": "Malignant", "color": MALIGNANT_COLOR} if drives and call == "malignant" else
                          {"name": SUSPICIOUS_CLASS, "color": NOT_CALLED_COLOR})
        features.append({
            "type": "Feature", "geometry": mapping(region_outline(result, region)),
            "properties": {"objectType": "annotation",
                           "name": DRIVING_NAME if drives else f"Suspicious region {region.id} (model)",
                           "classification": classification, "model": model.get("name"),
                           "model_limited": bool(model.get("limited")), "model_demo": bool(model.get("demo")),
                           "slide_call": call,
                           "isLocked": False, "drives_call": drives, "region": region.id,
                           "tiles": [int(t) for t in region.tiles],
                           "measurements": {"tiles": len(region.tiles), "mean p(malignant)": region.mean_p,
                                            "max p(malignant)": region.max_p}},
        })
    return {"type": "FeatureCollection", "features": features}


def summary(result) -> dict:
    """What the slide is, how it was tiled, the call and the model: the run's record."""
    plan = result.plan
    return {"slide": result.name, "dimensions": list(result.dimensions),
            "slide_mpp": {"x": result.slide_scale.x, "y": result.slide_scale.y, "source": result.slide_scale.source},
            "model_scale": plan.model_scale, "tile_level0_px": list(plan.size), "read_level": plan.level,
            "tiles_total": len(plan.origins), "tiles_analysed": int(len(result.tiles)),
            "call": result.call, "statement": result.call.get("statement"), "model": result.model, "timings_s": result.timings, "notes": result.notes,
            "top_tiles": [int(result.tiles.at[t.index, "tile"]) for t in result.top]}


def check_out_folder(out_dir, what: str = "--out", hint: str = "") -> None:
    """UserInputError unless `out_dir` is, or can be made as, a folder this process may write into.
    Nothing is created: the nearest existing folder on its path is probed with a temporary file."""
    out = existing = Path(out_dir).absolute()
    try:
        existing = next(p for p in (out, *out.parents) if p.exists())
        if not existing.is_dir():
            raise UserInputError(f"{what} {out_dir}: {existing} is a file, not a folder.{hint}")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        where = "" if existing == out else f": {existing}"
        raise UserInputError(f"{what} {out_dir}{where} cannot be written to "
                             f"({error.strerror or error}).{hint}") from None


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def write_outputs(result, out_dir, alpha: float = 0.5) -> dict[str, Path]:
    """heatmap.png, tiles.csv, suspicious_regions.geojson (GEOJSON), then summary.json; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).unlink(missing_ok=True)  # a re-run is incomplete until its summary is written
    paths = {"heatmap": out / "heatmap.png", "tiles": out / "tiles.csv", "geojson": out / GEOJSON,
             "summary": out / SUMMARY}
    _write(paths["heatmap"], heatmap_png(result, alpha))
    _write(paths["tiles"], tiles_csv(result).encode())
    _write(paths["geojson"], json.dumps(geojson(result), indent=1).encode())
    _write(paths["summary"], json.dumps(summary(result), indent=1, default=float).encode())
    return paths
