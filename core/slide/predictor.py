"""The patch predictor: a slide -> tiles at the model's scale -> the shared Predictor -> stitched maps.

TIAToolbox's shape: `SlidePredictor(predictor, settings).predict(reader)` owns the tiling and the
merging; the model pass is the app's own Predictor (same resize, stain normalisation,
calibration, refer rule), fed in batches, and Grad-CAM (core.model.cam) runs only for the top-k
tiles, so the slide costs one forward per tile plus k Grad-CAM passes.

A tile is what one model input covers: card["scale"]["tile_px"] pixels at its mpp
(core.data.scale.model_scale), i.e. tile_px * model_mpp / slide_mpp level-0 pixels. It is read
from the coarsest pyramid level that is still at least as fine as the model INPUT (tile_px
squashed to input_size: a 700x460 field into 128x128 is 2.7 x 1.8 um/px at 200X) and resized
ONCE, straight to the model's input square (core.data.preprocess, antialiased, as in training). Stride = tile x
(1 - overlap). Tiles whose footprint is less than `min_tissue` tissue (core.slide.tissue, on a
low-resolution overview) are skipped; what the mask counts as no stain is white in the tiles the model
sees (Glass.clean: black borders and padding, as the reader pads outside the slide, and pen ink). Maps are stitched at a thumbnail's resolution, overlapping
tiles averaged.

The tissue mask knows only optical density, so a photo, a greyscale scan or an immunostain is
"tissue" too. Before the model runs, a sample of the tissue tiles (HE_SAMPLE, spread over those
with the most tissue) gets Diagnose's H&E check (core.data.images.check_loaded, one source of
truth): when most of them are not H&E tissue the slide gets Diagnose's "not analysed" message
and no call; atypical ones are a note.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import pandas as pd

from core.data.histology import NOT_ANALYSED
from core.data.labels import CLASSES, SUBTYPES
from core.data.scale import model_scale, tile_origins
from core.errors import Cancelled, UserInputError
from core.evaluation.evidence import evidence_statement
from core.evaluation.subtype_trust import subtype_reliability
from core.options import option
from core.slide.call import Region, slide_call
from core.slide.reader import SlideError, SlideReader
from core.slide.tissue import Glass, TissueMasker, TissueSettings

HE_SAMPLE = 16  # tissue tiles given the H&E check before the model runs
INK_NOTE = 0.001  # ink on at least this share of the stained overview is said in a note
# A tile read larger than this (pixels at its read level) means a wrong resolution, not a slide: a 200X
# field at 0.1 um/px is 8 megapixels, and every tile is held several times (batch, readers, resize).
MAX_TILE_PIXELS = 25_000_000
# The maps are an overview: a larger side would read level 0 whole as the "thumbnail" on a real slide.
MAX_MAP_SIDE = 8192


@dataclasses.dataclass(frozen=True)
class TileSettings:
    overlap: float = option(0.0, "share of a tile that neighbouring tiles overlap (0 = none, 0.5 = half)")
    min_tissue: float = option(0.25, "share of a tile's area on the slide that must be tissue for it to be analysed "
                                     "(padding past the edge of a slide thinner than a tile is not counted)")
    batch_size: int = option(32, "tiles per model pass")
    top_k: int = option(6, "most suspicious tiles kept with both stages' Grad-CAM")
    tta: bool = option(False, "test-time augmentation per tile (8 views: 8x the time; gives the spread); always on "
                       "for a model whose card declares its views (the bundled one)")
    map_side: int = option(1024, "long side of the thumbnail and the stitched maps, in pixels")
    max_tiles: int = option(100_000, "a slide needing more tiles than this is refused")
    readers: int = option(2, "threads decoding tiles ahead of the model")

    def __post_init__(self):
        """UserInputError (the CLI's exit 2, its message) naming each impossible setting."""
        problems = [f"{name} must be {need}, not {value}" for name, value, ok, need in (
            ("overlap", self.overlap, 0.0 <= self.overlap <= 0.9, "between 0 and 0.9"),
            ("min_tissue", self.min_tissue, 0.0 <= self.min_tissue <= 1.0, "between 0 and 1"),
            ("batch_size", self.batch_size, self.batch_size >= 1, "at least 1"),
            ("top_k", self.top_k, self.top_k >= 0, "at least 0"),
            ("map_side", self.map_side, 16 <= self.map_side <= MAX_MAP_SIDE, f"between 16 and {MAX_MAP_SIDE}"),
            ("max_tiles", self.max_tiles, self.max_tiles >= 1, "at least 1"),
            ("readers", self.readers, self.readers >= 1, "at least 1")) if not ok]
        if problems:
            raise UserInputError("Invalid tile settings: " + "; ".join(problems) + ".")


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one slide are: level-0 origins and size, the level they are read at."""

    origins: list[tuple[int, int]]  # level-0 top-left corners, row by row
    size: tuple[int, int]  # level-0 (w, h) of one tile
    level: int
    read_size: tuple[int, int]  # (w, h) read at `level`, then resized to the model input
    model_scale: dict
    extent: tuple[int, int] | None = None  # the slide's level-0 (w, h); level0_box is clipped to it
    glass: Glass = Glass()  # the slide's glass, from its tissue mask: what read_tile whitens

    def read_box(self, i: int) -> tuple[int, int, int, int]:
        """Level-0 box the model reads for tile i: always a whole tile, padded white (as glass) where it
        reaches past a slide thinner than one tile."""
        (x, y), (w, h) = self.origins[i], self.size
        return x, y, x + w, y + h

    def level0_box(self, i: int) -> tuple[int, int, int, int]:
        """Tile i's box on the slide: read_box clipped to `extent`. The tiles table, the GeoJSON outlines and
        the tissue share use it, so nothing is placed past the edge of the image QuPath opens; the model
        still sees the padded read_box (only a slide thinner than a tile has any padding)."""
        x0, y0, x1, y1 = self.read_box(i)
        if self.extent is None:
            return x0, y0, x1, y1
        return x0, y0, min(x1, self.extent[0]), min(y1, self.extent[1])

    def grid_position(self, i: int) -> tuple[int, int]:
        """(row, col) of tile i on the tile grid (the origins are row by row)."""
        columns = len({x for x, _ in self.origins})
        return divmod(i, columns)


@dataclasses.dataclass
class TopTile:
    index: int  # row of SlideResult.tiles
    image: np.ndarray  # the tile as read (read_size), what the model saw before its resize
    cams: object  # core.model.cam.RawCams: stage 1 and stage 2 Grad-CAMs


@dataclasses.dataclass
class SlideResult:
    name: str
    dimensions: tuple[int, int]
    slide_scale: object  # core.data.scale.Scale of level 0
    plan: TilePlan
    tiles: pd.DataFrame  # one row per analysed (tissue) tile
    thumbnail: np.ndarray  # uint8 RGB, level 0 / map_downsample
    map_downsample: float
    tissue: np.ndarray  # bool, thumbnail size
    p_malignant: np.ndarray  # float32, thumbnail size, NaN where no tile was analysed
    subtype: np.ndarray  # int8 index into SUBTYPES, -1 where no tile
    uncertainty: np.ndarray  # float32 stage-1 entropy (bits), NaN where no tile
    top: list[TopTile]
    call: dict
    model: dict  # name, limited / demo flags, as Diagnose shows them
    timings: dict
    notes: list[str]
    regions: list[Region] = dataclasses.field(default_factory=list)  # core.slide.call: the driving one first


def binary_entropy_bits(p: np.ndarray) -> np.ndarray:
    """Stage-1 uncertainty of a tile: 0 when certain, 1 at p(malignant) = 0.5."""
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


class SlidePredictor:
    """Tiles a slide at the model's scale and merges the tile predictions into maps and a call."""

    def __init__(self, predictor, settings: TileSettings = TileSettings(),
                 tissue: TissueSettings = TissueSettings()):
        self.predictor, self.settings, self.tissue_settings = predictor, settings, tissue
        self.scale = model_scale(predictor.card)

    # -- tiling ---------------------------------------------------------------------------------
    def plan(self, reader: SlideReader) -> TilePlan:
        width, height = reader.dimensions
        mpp, (tile_w, tile_h) = self.scale["mpp"], self.scale["tile_px"]
        size = (max(1, round(tile_w * mpp / reader.scale.x)), max(1, round(tile_h * mpp / reader.scale.y)))
        # The model sees tile_px squashed to input_size: the coarsest level that is still at least
        # as fine as that input is read (decoding a finer one only to shrink it costs the time).
        seen = self.predictor.input_size / min(tile_w, tile_h)
        level = reader.best_level(min(mpp / reader.scale.x, mpp / reader.scale.y) / max(seen, 1e-9))
        d = reader.level_downsamples[level]
        read_size = (max(1, round(size[0] / d)), max(1, round(size[1] / d)))
        stride = [max(1, round(s * (1.0 - self.settings.overlap))) for s in size]
        origins = [(x, y) for y in tile_origins(height, size[1], stride[1])
                   for x in tile_origins(width, size[0], stride[0])]
        return TilePlan(origins, size, level, read_size, self.scale, (width, height))

    def check_plan(self, reader: SlideReader, plan: TilePlan) -> None:
        """SlideError, before anything is read, when a tile is absurd for the slide: the slide would fill
        less than a quarter of its one tile (the rest white padding), one tile would be larger than
        MAX_TILE_PIXELS (a resolution of 0.001 um/px asked for a 225-GiB tile), or a tile is so coarse that the
        model would enlarge it more than twice (a wrong --mpp of 8 ran for minutes on 28-px tiles)."""
        (width, height), (tile_w, tile_h), (read_w, read_h) = reader.dimensions, plan.size, plan.read_size
        filled = min(width, tile_w) * min(height, tile_h) / (tile_w * tile_h)
        coarse = 2 * min(tile_w, tile_h) < self.predictor.input_size
        if filled >= 0.25 and read_w * read_h <= MAX_TILE_PIXELS and not coarse:
            return
        scale = reader.scale
        why = (f"larger than the whole slide ({width}x{height} px)" if filled < 0.25 else
               f"{read_w * read_h / 1e6:,.0f} megapixels to read, more than {MAX_TILE_PIXELS / 1e6:.0f}"
               if read_w * read_h > MAX_TILE_PIXELS else
               f"too coarse: the model would enlarge it more than twice to its {self.predictor.input_size}-px input")
        small = "; a slide this small is diagnosed as one image (Diagnose, `predict`)" if filled < 0.25 else ""
        um = [round(v * self.scale["mpp"]) for v in self.scale["tile_px"]]
        raise SlideError(f"'{reader.name}' is read at {scale.x:g} um/px ({scale.source}): there the model's tile "
                         f"({um[0]}x{um[1]} um) is {tile_w:,}x{tile_h:,} px, {why}. Check that resolution: give the "
                         f"slide's true microns per pixel or the magnification it was captured at{small}.")

    def tissue(self, reader: SlideReader) -> tuple[np.ndarray, float, Glass]:
        """(tissue mask, its downsample from level 0, the slide's Glass) on an overview at about mask_mpp."""
        downsample = max(1.0, self.tissue_settings.mask_mpp / reader.scale.mean)
        overview = reader.overview(downsample)
        masker = TissueMasker(self.tissue_settings)
        return masker.fit_transform(overview, reader.scale.mean * downsample), downsample, masker.glass_

    @staticmethod
    def _share(mask: np.ndarray, downsample: float, box) -> float:
        """Tissue share of a level-0 box on the slide (TilePlan.level0_box): the mask covers only the slide."""
        x0, y0, x1, y1 = (v / downsample for v in box)
        window = mask[int(y0):max(int(y0) + 1, math.ceil(y1)), int(x0):max(int(x0) + 1, math.ceil(x1))]
        return float(window.mean()) if window.size else 0.0

    def read_tile(self, reader: SlideReader, plan: TilePlan, i: int) -> np.ndarray:
        """Tile i as the model sees it: read, then cleaned of what is no stain (Glass.clean)."""
        return plan.glass.clean(reader.read_region(plan.origins[i], plan.level, plan.read_size))

    def histology(self, reader: SlideReader, plan: TilePlan, chosen: np.ndarray, shares: np.ndarray) -> list[str]:
        """Diagnose's H&E check on up to HE_SAMPLE tissue tiles, as the model would see them (spread
        evenly over the tiles with at least the median tissue share). SlideError with Diagnose's words
        when more than half are not H&E tissue; a note when any is atypical or refused."""
        from core.data.images import LoadedImage, check_loaded

        fullest = chosen[shares[chosen] >= np.median(shares[chosen])]
        sample = fullest[np.unique(np.linspace(0, len(fullest) - 1, min(HE_SAMPLE, len(fullest))).round().astype(int))]
        checked = []
        for i in sample:
            rgb = self.read_tile(reader, plan, int(i))
            checked.append(check_loaded(LoadedImage(rgb, reader.name, "RGB", (rgb.shape[1], rgb.shape[0]))))
        refused = [c.not_histology for c in checked if c.not_histology]
        warned = [c.warnings[0] for c in checked if c.warnings]
        if 2 * len(refused) > len(checked):
            raise SlideError(f"'{reader.name}': {NOT_ANALYSED} ({refused[0]}; {len(refused)} of {len(checked)} tissue "
                             "tiles checked). No slide call and no heat map.")
        notes = [f"H&E check: {len(refused)} of {len(checked)} tissue tiles checked are not H&E tissue ({refused[0]})"
                 ] if refused else []
        if warned:
            notes.append(f"H&E check: {len(warned)} of {len(checked)} tissue tiles checked are atypical. {warned[0]}")
        return notes

    # -- the run --------------------------------------------------------------------------------
    def predict(self, reader: SlideReader, progress: Callable[[int, int], None] | None = None,
                cancelled: Callable[[], bool] | None = None) -> SlideResult:
        """Analyse every tissue tile of `reader`. progress(done, total) after each batch; when
        cancelled() turns true the run stops with core.errors.Cancelled (nothing is returned)."""
        s, timings, started = self.settings, {}, time.perf_counter()
        plan = self.plan(reader)
        self.check_plan(reader, plan)
        if len(plan.origins) > s.max_tiles:
            raise SlideError(f"'{reader.name}' needs {len(plan.origins):,} tiles at the model's scale, more than "
                             f"the limit of {s.max_tiles:,}, when read at {reader.scale.x:g} um/px "
                             f"({reader.scale.source}). Check that resolution; if it is right, raise max_tiles or "
                             "analyse a region.")
        mask, mask_downsample, glass = self.tissue(reader)
        if glass.tint is not None:
            raise SlideError(f"'{reader.name}': {NOT_ANALYSED} (its background, the glass, is "
                             f"{tuple(round(v) for v in glass.tint)}, a colour no glass has: the file's colours look "
                             "wrong, e.g. a colour-space mix-up when it was exported, and the model would read them "
                             "as stain). No slide call and no heat map.")
        plan = dataclasses.replace(plan, glass=glass)
        timings["tissue_mask_s"] = time.perf_counter() - started
        shares = np.array([self._share(mask, mask_downsample, plan.level0_box(i)) for i in range(len(plan.origins))])
        chosen = np.flatnonzero(shares >= max(s.min_tissue, 1e-9))
        if len(chosen) == 0:
            raise SlideError(f"No tissue found in '{reader.name}': every tile is background (glass) by the "
                             f"tissue mask (optical density at most {mask.mean():.0%} tissue). Nothing to analyse.")
        checked = self.histology(reader, plan, chosen, shares)
        outputs, t0 = [], time.perf_counter()
        batches = [chosen[start:start + s.batch_size] for start in range(0, len(chosen), s.batch_size)]
        # Tiles are decoded in threads (OpenSlide and NumPy release the GIL) while the model runs
        # on the previous batch: reading costs time only where it is slower than the model.
        threads = s.readers if reader.thread_safe else 1
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tile-reader") as pool:
            def read(indices):
                return [pool.submit(self.read_tile, reader, plan, int(i)) for i in indices]

            ahead = read(batches[0])
            for k in range(len(batches)):
                if cancelled is not None and cancelled():
                    for future in ahead:
                        future.cancel()
                    raise Cancelled(f"slide '{reader.name}' cancelled after {k * s.batch_size} of {len(chosen)} tiles")
                batch = [future.result() for future in ahead]
                ahead = read(batches[k + 1]) if k + 1 < len(batches) else []
                outputs.append(self.predictor.probabilities(batch, tta=s.tta, tiles=True))
                if progress is not None:
                    progress(min((k + 1) * s.batch_size, len(chosen)), len(chosen))
        timings["tiles_s"] = time.perf_counter() - t0
        merged = {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}
        predictions = self.predictor.interpret(merged, tta=s.tta)
        tiles = self._table(plan, chosen, shares, predictions)
        t0 = time.perf_counter()
        maps = self._stitch(reader, plan, tiles, mask, mask_downsample)
        top = self._top(reader, plan, tiles)
        timings["stitch_and_cams_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - started
        card = self.predictor.card
        call, regions = slide_call(tiles, card)
        tiles["region"] = 0
        for region in regions:
            if region.kind == "region":
                tiles.loc[region.rows, "region"] = region.id
        evidence = card.get("evidence") or {}
        model = {"name": self.predictor.name, "demo": self.predictor.is_demo,  # the one DEMO rule (card_is_demo)
                 "limited": bool(evidence.get("limited")), "statement": evidence_statement(card) or "",
                 "subtype_reliable": subtype_reliability(card)[0]}  # the app's one rule
        notes = list(reader.notes) + checked + ([
            f"Ink: {plan.glass.ink_share:.1%} of the stained overview has colours no stain makes (pen marks?); "
            "it is left out of the tissue mask and white in the tiles the model sees"]
            if plan.glass.ink and plan.glass.ink_share >= INK_NOTE else []) + [
            f"{len(chosen)} of {len(plan.origins)} tiles have tissue; each tile is {plan.size[0]}x{plan.size[1]} "
            f"level-0 px ({self.scale['tile_px'][0]}x{self.scale['tile_px'][1]} px at {self.scale['mpp']:g} um/px, "
            f"the model's scale: {self.scale['source']}), read at level {plan.level}"]
        if self.predictor.tta_fixed():
            notes.append("each tile's p is the mean over the 8 symmetries the model's card declares "
                         f"(test-time augmentation always on{'; --tta changed nothing' if s.tta else ''})")
        return SlideResult(reader.name, reader.dimensions, reader.scale, plan, tiles, maps["thumbnail"],
                           maps["downsample"], maps["tissue"], maps["p_malignant"], maps["subtype"],
                           maps["uncertainty"], top, call, model, timings, notes, regions)

    def _table(self, plan, chosen, shares, predictions) -> pd.DataFrame:
        rows = []
        for i, prediction in zip(chosen, predictions):
            x0, y0, x1, y1 = plan.level0_box(i)
            spread = (prediction.uncertainty or {}).get("p_malignant_spread")
            row, col = plan.grid_position(int(i))
            rows.append({"tile": int(i), "row": row, "col": col, "x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0,
                         "tissue": round(float(shares[i]), 4),
                         **{f"p_{c}": prediction.stage1[c] for c in CLASSES},
                         "label": prediction.label, "subtype": prediction.subtype,
                         "p_subtype": prediction.p_subtype, "confidence": prediction.confidence,
                         "entropy_bits": float(binary_entropy_bits(prediction.stage1["malignant"])),
                         "p_malignant_spread": np.nan if spread is None else float(spread),
                         "refer": prediction.refer, "refer_reasons": "; ".join(prediction.refer_reasons),
                         **{f"joint_{t}": v for t, v in prediction.subtype_probabilities().items()}})
        return pd.DataFrame(rows)

    def _stitch(self, reader, plan, tiles, mask, mask_downsample) -> dict:
        """Thumbnail-resolution maps; where tiles overlap their values are averaged."""
        width, height = reader.dimensions
        d = max(1.0, max(width, height) / self.settings.map_side)
        thumbnail = reader.overview(d)
        h, w = thumbnail.shape[:2]
        total = np.zeros((h, w), np.float32)
        entropy = np.zeros((h, w), np.float32)
        joint = np.zeros((h, w, len(SUBTYPES)), np.float32)
        count = np.zeros((h, w), np.float32)
        joint_columns = [f"joint_{t}" for t in SUBTYPES]
        for row in tiles.itertuples(index=False):
            x0, y0 = int(row.x / d), int(row.y / d)
            x1, y1 = max(x0 + 1, math.ceil((row.x + row.width) / d)), max(y0 + 1, math.ceil((row.y + row.height) / d))
            total[y0:y1, x0:x1] += row.p_malignant
            entropy[y0:y1, x0:x1] += row.entropy_bits
            joint[y0:y1, x0:x1] += np.array([getattr(row, c) for c in joint_columns], np.float32)
            count[y0:y1, x0:x1] += 1
        covered = count > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            p_map = np.where(covered, total / count, np.nan).astype(np.float32)
            uncertainty = np.where(covered, entropy / count, np.nan).astype(np.float32)
        subtype = np.where(covered, joint.argmax(axis=-1), -1).astype(np.int8)
        rows = np.minimum((np.arange(h) * d / mask_downsample).astype(int), mask.shape[0] - 1)
        cols = np.minimum((np.arange(w) * d / mask_downsample).astype(int), mask.shape[1] - 1)
        return {"thumbnail": thumbnail, "downsample": d, "tissue": mask[rows][:, cols], "p_malignant": p_map,
                "subtype": subtype, "uncertainty": uncertainty}

    def _top(self, reader, plan, tiles) -> list[TopTile]:
        """The k tiles of highest p(malignant), each with both stages' Grad-CAM (one pass for all)."""
        from core.model.cam import gradcam_diagnosis

        k = min(self.settings.top_k, len(tiles))
        if k == 0:
            return []
        rows = tiles.sort_values(["p_malignant", "tile"], ascending=[False, True]).index[:k]
        images = [self.read_tile(reader, plan, int(tiles.at[r, "tile"])) for r in rows]
        _, cams = gradcam_diagnosis(self.predictor, images, tiles=True)
        return [TopTile(int(r), image, cam) for r, image, cam in zip(rows, images, cams)]

    def explain_tile(self, reader: SlideReader, plan: TilePlan, i: int, level0: bool = True):
        """(tile image, core.model.cam.Diagnosis) of tile i: the image at full (level-0) resolution
        when `level0`, with both stages' Grad-CAM resized onto it. The tile is scored as the tile pass
        scores it (one view of the whole tile, `tiles=True`, the settings' TTA), so its view says the
        p(malignant) and subtype of the map, the list and tiles.csv: scored as a field (3 crops x 8
        symmetries of a restored field) it differed by up to 0.14, and its subtype could change."""
        from core.model.cam import Diagnosis, gradcam_diagnosis
        from core.model.heatmap import to_heatmap

        seen = self.read_tile(reader, plan, i)
        outputs, cams = gradcam_diagnosis(self.predictor, [seen], tta=self.settings.tta, tiles=True)
        diagnosis = Diagnosis(self.predictor.interpret(outputs, tta=self.settings.tta)[0], cams[0].explanations(seen.shape[:2], "gradcam"))
        if not level0 or plan.level == 0:
            return seen, diagnosis
        full = reader.read_region(plan.origins[i], 0, plan.size)
        for explanation in diagnosis.explanations.values():
            explanation.heatmap, _ = to_heatmap(explanation.heatmap, full.shape[:2])
        return full, diagnosis
