"""A SlideResult's files: heat-map PNG over the thumbnail, tiles CSV, QuPath GeoJSON, summary JSON.

GeoJSON: one FeatureCollection; each malignant region (the union of touching tiles called
malignant, made with shapely) is a Feature whose geometry is in LEVEL-0 pixel coordinates, as
QuPath's "File > Import objects" expects for an image opened at full resolution, with
properties {"objectType": "annotation", "classification": {"name": "Malignant", "color": [r, g,
b]}} (the format QuPath 0.4+ writes and reads back) and the region's tile count and mean
p(malignant) as "measurements".

`write_outputs` writes every file to a temporary name and renames it into place, summary.json
last: a cancelled or failed run never leaves a folder that looks complete.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from shapely import box, unary_union
from shapely.geometry import mapping

MALIGNANT_COLOR = [200, 0, 0]
SUMMARY = "summary.json"
CSV_COLUMNS = ["tile", "x", "y", "width", "height", "tissue", "p_benign", "p_malignant", "label", "subtype",
               "p_subtype", "confidence", "entropy_bits", "p_malignant_spread", "refer", "refer_reasons"]


def heatmap_rgb(result, alpha: float = 0.5) -> np.ndarray:
    """The thumbnail with p(malignant) in the Turbo colormap blended over the analysed tiles."""
    from core.model.cam import colorize

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    thumbnail = result.thumbnail.astype(np.float32)
    covered = np.isfinite(result.p_malignant)[..., None]
    colored = colorize(np.nan_to_num(result.p_malignant)).astype(np.float32)
    blended = np.where(covered, (1 - alpha) * thumbnail + alpha * colored, thumbnail)
    return np.round(blended).astype(np.uint8)


def heatmap_png(result, alpha: float = 0.5) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(heatmap_rgb(result, alpha)).save(buffer, format="PNG")
    return buffer.getvalue()


def tiles_csv(result) -> str:
    """One row per analysed tile; x, y, width, height in level-0 pixels."""
    return result.tiles[CSV_COLUMNS].to_csv(index=False, float_format="%.5f")


def malignant_regions(result) -> list:
    """Shapely polygons (level-0 px) of the unions of malignant tiles."""
    malignant = result.tiles[result.tiles["label"] == "malignant"]
    boxes = [box(r.x, r.y, r.x + r.width, r.y + r.height) for r in malignant.itertuples(index=False)]
    if not boxes:
        return []
    union = unary_union(boxes)
    return list(getattr(union, "geoms", [union]))


def geojson(result) -> dict:
    """The malignant regions as a GeoJSON FeatureCollection QuPath imports as annotations."""
    malignant = result.tiles[result.tiles["label"] == "malignant"]
    features = []
    for polygon in malignant_regions(result):
        inside = [r for r in malignant.itertuples(index=False)
                  if polygon.contains(box(r.x, r.y, r.x + r.width, r.y + r.height).centroid)]
        features.append({
            "type": "Feature", "geometry": mapping(polygon),
            "properties": {"objectType": "annotation", "name": "Malignant (model)",
                           "classification": {"name": "Malignant", "color": MALIGNANT_COLOR},
                           "isLocked": False,
                           "measurements": {"tiles": len(inside),
                                            "mean p(malignant)": float(np.mean([r.p_malignant for r in inside]))}},
        })
    return {"type": "FeatureCollection", "features": features}


def summary(result) -> dict:
    """What the slide is, how it was tiled, the call and the model: the run's record."""
    plan = result.plan
    return {"slide": result.name, "dimensions": list(result.dimensions),
            "slide_mpp": {"x": result.slide_scale.x, "y": result.slide_scale.y, "source": result.slide_scale.source},
            "model_scale": plan.model_scale, "tile_level0_px": list(plan.size), "read_level": plan.level,
            "tiles_total": len(plan.origins), "tiles_analysed": int(len(result.tiles)),
            "call": result.call, "model": result.model, "timings_s": result.timings, "notes": result.notes,
            "top_tiles": [int(result.tiles.at[t.index, "tile"]) for t in result.top]}


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def write_outputs(result, out_dir, alpha: float = 0.5) -> dict[str, Path]:
    """heatmap.png, tiles.csv, malignant.geojson, then summary.json; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).unlink(missing_ok=True)  # a re-run is incomplete until its summary is written
    paths = {"heatmap": out / "heatmap.png", "tiles": out / "tiles.csv", "geojson": out / "malignant.geojson",
             "summary": out / SUMMARY}
    _write(paths["heatmap"], heatmap_png(result, alpha))
    _write(paths["tiles"], tiles_csv(result).encode())
    _write(paths["geojson"], json.dumps(geojson(result), indent=1).encode())
    _write(paths["summary"], json.dumps(summary(result), indent=1, default=float).encode())
    return paths
