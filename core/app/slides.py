"""What the Slide page (and Diagnose, for very large uploads) needs from core.slide, without Streamlit.

Server-side slides come from the folders in BREAKHIS_SLIDE_DIRS (os.pathsep-separated): whole
slides are gigabytes and browsers upload at most a few hundred megabytes. Uploads are read from
memory (core.slide.reader.open_slide on bytes) and never written to disk.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import logging
from pathlib import Path

import numpy as np

from core.data.breakhis import parse_name
from core.data.fields import ViewSpec
from core.data.histology import MOSTLY_GLASS  # mostly glass: no reason to refuse a tiled upload
from core.data.labels import SUBTYPES, pretty
from core.data.scale import (
    BREAKHIS_FIELD,
    image_scale,
    magnification_mpp,
    model_scale,
    name_magnification,
    tile_origins,
)
from core.digests import file_sha256
from core.evaluation.subtype_trust import SUBTYPE_NOT_RELIABLE, subtype_shown
from core.paths import folder_setting_problem, folders_setting
from core.slide.call import call_text  # noqa: F401 (the pages' name for it)
from core.slide.export import GEOJSON, driving_region, geojson, heatmap_png, region_outline, tiles_csv
from core.slide.reader import SlideError, slide_files

TILE_AN_UPLOAD_FROM = 4  # tiles at the model's scale: an upload this large is analysed as tiles


def slide_dirs() -> list[Path]:
    return folders_setting("BREAKHIS_SLIDE_DIRS")


def slide_folder_problem(folder: Path) -> str | None:
    """Why a configured slide folder cannot be listed, or None (it would leave the slide list empty)."""
    return folder_setting_problem("BREAKHIS_SLIDE_DIRS", folder)


def slide_folder_problems() -> list[str]:
    """A sentence per configured slide folder that cannot be listed, for the Slide page."""
    return [problem for problem in map(slide_folder_problem, slide_dirs()) if problem]


def server_slides() -> dict[str, Path]:
    """{"folder/name": path} of every slide in the configured folders (those that cannot be listed
    skipped: slide_folder_problems says why)."""
    found = {}
    for folder in slide_dirs():
        if slide_folder_problem(folder):
            continue
        try:
            for path in slide_files(folder):
                found[f"{folder.name}/{path.relative_to(folder).as_posix()}"] = path
        except (SlideError, OSError) as problem:
            logging.getLogger(__name__).warning("slide folder %s skipped: %s", folder, problem)
    return found


# A server slide's audit row names the file contents analysed: its SHA-256, read in chunks (core.digests),
# about 1.5 GB/s on one core, seconds next to the minutes its tiles take. A file larger than this is identified
# by its size, modification time and the SHA-256 of its first and last MiB, and its row says so.
FULL_HASH_LIMIT = 4 * 1024**3
EDGE_BYTES = 1024**2


def file_identity(path) -> tuple[str | None, str]:
    """(SHA-256 of the whole file, or None when it is over FULL_HASH_LIMIT; how the file is identified, for
    the audit row) of a slide on the server. Hashed once per path, size and modification time."""
    stat = Path(path).stat()
    return _file_identity(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_identity(path: str, size: int, mtime_ns: int) -> tuple[str | None, str]:
    if size <= FULL_HASH_LIMIT:
        return file_sha256(path), "SHA-256 of the whole file"
    with open(path, "rb") as file:
        edges = hashlib.sha256(file.read(EDGE_BYTES))
        file.seek(-EDGE_BYTES, 2)
        edges.update(file.read(EDGE_BYTES))
    modified = datetime.datetime.fromtimestamp(mtime_ns / 1e9, datetime.UTC).isoformat(timespec="seconds")
    return None, (f"not hashed whole (over {FULL_HASH_LIMIT / 1024**3:g} GiB): identified by its size, {size} "
                  f"bytes, its modification time, {modified}, and the SHA-256 of its first and last MiB, "
                  f"{edges.hexdigest()}")


def _spans(size: tuple[int, int], scale, mpp: float, window_px: list[int]) -> int:
    """How many windows of window_px pixels at mpp an image of `size` (w, h) at `scale` spans."""
    width = max(1, round(window_px[0] * mpp / scale.x))
    height = max(1, round(window_px[1] * mpp / scale.y))
    return len(tile_origins(size[0], width, width)) * len(tile_origins(size[1], height, height))


def tiles_needed(card: dict, name: str, size: tuple[int, int], magnification: str | None) -> int | None:
    """How many model tiles an image of `size` (w, h) spans at the model's scale; None when its
    scale is unknown (no magnification in the name or chosen)."""
    scale, model = image_scale(name, size[0], size[1], magnification), model_scale(card)
    return None if scale is None else _spans(size, scale, model["mpp"], model["tile_px"])


def trained_field_px(card: dict) -> list[int]:
    """The field a model was trained on, in pixels at its mpp: a field recipe's restored field
    (350x230 at ~1 um/px), of which its tiles are 224-px views; else its tile, the whole field."""
    views = ViewSpec.from_card(card)
    return list(views.field_px) if views is not None else list(model_scale(card)["tile_px"])


def should_tile(card: dict, name: str, size: tuple[int, int], magnification: str | None) -> str | None:
    """A sentence saying why this upload is analysed as tiles, or None to diagnose it whole.

    A BreakHis-named image is a field, what the model was trained on (at whatever magnification:
    models trained on all of them see whole fields of each), so it is never tiled; another image
    is tiled when it spans TILE_AN_UPLOAD_FROM of the model's training fields or more at the model's
    scale (fields, not a field model's 224-px views: a plain 200X field spans 4 of those). A field is
    the larger of the model's training field and a BreakHis field at the image's magnification where
    the model learnt from whole fields of that magnification (its card's evidence): a 700x460 field
    at 40X is one field, diagnosed whole whether its name is BreakHis' or 'field_40x.png' (it was
    tiled as 25 training fields, 90-px tiles enlarged 2.5x, and not called)."""
    scale = image_scale(name, size[0], size[1], magnification)
    if parse_name(name) is not None or scale is None:
        return None
    model = model_scale(card)
    window_um, whole = [v * model["mpp"] for v in trained_field_px(card)], ""
    stated = name_magnification(name) or magnification
    if (card.get("evidence") or {}).get("by_magnification", {}).get(stated):  # learnt whole fields of it
        own_um = [v * magnification_mpp(stated) for v in BREAKHIS_FIELD]
        if own_um[0] * own_um[1] > window_um[0] * window_um[1]:
            window_um, whole = own_um, f", a whole {stated} field"
    if _spans(size, scale, 1.0, window_um) < TILE_AN_UPLOAD_FROM:
        return None
    um = [round(v) for v in window_um]
    return (f"{name} ({size[0]}x{size[1]} px) is much larger than the field the model was trained on "
            f"({um[0]}x{um[1]} um{whole}): it is analysed as {_spans(size, scale, model['mpp'], model['tile_px'])} "
            "tiles at the model's scale instead of being squashed into one input.")


def tile_reason(card: dict, result, magnification: str | None) -> str | None:
    """should_tile for a Diagnose result (core.app.service.ImageResult), at its upright full size: one
    with a call, or one the whole-image H&E check refused only for being mostly glass (a small biopsy
    on a large scan), since each tile has its own tissue check; None for any other result."""
    glass = (result.not_histology or "").startswith(MOSTLY_GLASS)
    if result.image is None or not (result.ok or glass):
        return None
    return should_tile(card, result.name, result.image.upright_size, magnification)


def scale_hint(name: str, size: tuple[int, int], magnification: str | None) -> str | None:
    """A sentence for an upload of unknown scale that is larger than a microscope field in both
    directions (twice a 700x460 BreakHis field): it is diagnosed whole, as one field, which is right
    only if it is one; with its magnification stated it is tiled at the model's scale when larger."""
    if image_scale(name, size[0], size[1], magnification) is not None:
        return None
    if size[0] < 2 * BREAKHIS_FIELD[0] or size[1] < 2 * BREAKHIS_FIELD[1]:
        return None
    return (f"{name} is {size[0]}x{size[1]} px and states no magnification, so it was diagnosed as one field. If it "
            "shows a larger region than a microscope field, choose its magnification: it is then analysed as tiles "
            "at the model's scale.")


def heatmap_figure(result, opacity: float = 0.5):
    """Plotly figure: the thumbnail, p(malignant) over it at `opacity`, tile centres to click."""
    import plotly.graph_objects as go

    d = result.map_downsample
    h, w = result.thumbnail.shape[:2]
    # Both traces place their first pixel's CENTRE at x0, y0: pixel k of the thumbnail covers level-0
    # [k d, (k + 1) d), as the heat-map cell k does, so the image's edge is at 0 (x0 = 0 shifted it by d / 2).
    figure = go.Figure(go.Image(z=result.thumbnail, x0=d / 2, dx=d, y0=d / 2, dy=d, hoverinfo="skip", name="slide"))
    figure.add_trace(go.Heatmap(z=np.where(np.isfinite(result.p_malignant), result.p_malignant, None),
                                x0=d / 2, dx=d, y0=d / 2, dy=d, zmin=0, zmax=1, colorscale="Turbo",
                                opacity=opacity, colorbar={"title": "p(malignant)"}, hoverinfo="skip",
                                name="p(malignant)"))
    tiles = result.tiles
    figure.add_trace(go.Scatter(
        x=tiles["x"] + tiles["width"] / 2, y=tiles["y"] + tiles["height"] / 2, mode="markers",
        marker={"size": 7, "color": "rgba(255,255,255,0.35)", "line": {"width": 1, "color": "black"}},
        customdata=tiles.index.to_numpy(), name="tiles",
        text=[f"tile {t.tile}: p(malignant) {t.p_malignant:.2f}, subtype {subtype_text(result, t.subtype)}"
              for t in tiles.itertuples()],
        hovertemplate="%{text}<extra></extra>"))
    for x, y in region_outline_xy(result):
        figure.add_trace(go.Scatter(x=x, y=y, mode="lines", line={"color": "white", "width": 3}, hoverinfo="skip",
                                    name="driving region"))
        figure.add_trace(go.Scatter(x=x, y=y, mode="lines", line={"color": "black", "width": 1, "dash": "dot"},
                                    hoverinfo="skip", name="driving region"))
    figure.update_layout(margin={"l": 0, "r": 0, "t": 0, "b": 0}, height=min(720, max(320, int(720 * h / w))),
                         xaxis={"visible": False, "range": [0, w * d]},
                         yaxis={"visible": False, "range": [h * d, 0], "scaleanchor": "x"},
                         showlegend=False, dragmode="zoom")
    return figure


def region_outline_xy(result) -> list[tuple[list[float], list[float]]]:
    """Level-0 (x, y) rings of the driving region's outline, one per polygon part; [] when none qualified."""
    driving = driving_region(result)
    if driving is None:
        return []
    outline = region_outline(result, driving)
    rings = []
    for polygon in getattr(outline, "geoms", [outline]):
        x, y = polygon.exterior.xy
        rings.append(([float(v) for v in x], [float(v) for v in y]))
    return rings


def subtype_reliable(result) -> bool:
    """Whether the slide's model shows its subtype as a finding: the app's one rule
    (core.evaluation.subtype_trust), as the predictor recorded it and the tiles CSV carries it."""
    return bool((getattr(result, "model", None) or {}).get("subtype_reliable", True))


def subtype_text(result, subtype: str) -> str:
    """A tile's subtype as the page prints it: demoted, still visible, when not reliable for the model."""
    return subtype_shown(subtype, subtype_reliable(result))


def tile_label(result, row: int) -> str:
    t = result.tiles.loc[row]
    driving = driving_region(result)
    in_region = " · driving region" if driving is not None and row in driving.rows else ""
    return (f"tile {int(t.tile)} at ({int(t.x)}, {int(t.y)}): p(malignant) {t.p_malignant:.2f}, "
            f"subtype {subtype_text(result, t.subtype)}" + in_region + (" · refer" if t.refer else ""))


def subtype_legend(result) -> dict[str, float]:
    """Share of analysed tissue (map pixels) per predicted subtype, for the subtype map's caption."""
    values = result.subtype[result.subtype >= 0]
    if values.size == 0:
        return {}
    counts = np.bincount(values, minlength=len(SUBTYPES)) / values.size
    return {pretty(s): float(c) for s, c in zip(SUBTYPES, counts) if c > 0}


def subtype_caption(result) -> str | None:
    """The subtype map's caption: each subtype's share of the analysed tissue, most first; for a model
    whose subtype is not reliable, said first and the shares given as context only. None without tiles."""
    legend = subtype_legend(result)
    if not legend:
        return None
    shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(legend.items(), key=lambda kv: -kv[1]))
    if subtype_reliable(result):
        return f"Subtype map (share of analysed tissue): {shares}"
    return (f"Subtype: {SUBTYPE_NOT_RELIABLE}. Most probable subtype per tile (share of analysed tissue), "
            f"for context only: {shares}")


def downloads(result, opacity: float = 0.5, model: dict | None = None,
              audit_id: int | None = None) -> list[tuple[str, bytes, str, str]]:
    """(label, data, file name, mime) of the heat map, the tiles table, the GeoJSON and, given the
    model's description (core.app.registry.describe_model), the PDF report."""
    import json

    from core.app.pdf_report import build_slide_report

    stem = Path(result.name).stem
    pdf = [] if model is None else [("Slide report (PDF)", build_slide_report(result, model, audit_id, opacity),
                                     f"{stem}_report.pdf", "application/pdf")]
    return pdf + [("Heat map (PNG)", heatmap_png(result, opacity), f"{stem}_heatmap.png", "image/png"),
            ("Tiles (CSV)", tiles_csv(result).encode(), f"{stem}_tiles.csv", "text/csv"),
            ("Regions, the driving one first (GeoJSON, QuPath)", json.dumps(geojson(result)).encode(),
             f"{stem}_{GEOJSON}", "application/geo+json")]


def analyse_upload(predictor, name: str, data: bytes, magnification: str | None, settings=None):
    """An upload much larger than the model's field, analysed as tiles (core.slide) from memory."""
    from core.slide.predictor import SlidePredictor, TileSettings
    from core.slide.reader import open_slide

    with open_slide(data, name=name, magnification=magnification) as reader:
        return SlidePredictor(predictor, settings or TileSettings(top_k=3)).predict(reader)
