"""Slides: tile throughput vs the bare forward, memory on a large slide, Dask batch vs serial.

1. Throughput. A slide of real 200X BreakHis fields (core/testing/slides.py's mosaic, repeated) is
   analysed by core.slide.predictor.SlidePredictor (reading, tissue mask, the one resize,
   calibration, stitching; top-k Grad-CAM off, timed apart). The baseline, in the same run, is
   the model's bare batched forward (the compiled Predictor pass) on the same tiles, already
   resized to the model input. Goal: pipeline rate >= 0.8 x bare rate. Measured for the bundled
   model (models/default: whatever it is when the bench runs) and for DenseNet121 at 224 px (random
   weights: speed does not depend on them).
2. Memory. A synthetic pyramidal slide of --side x --side px (default 20,480) is written tile by
   tile (never whole in memory) in a child process; then its analysis's peak resident memory
   (sampled every 5 ms) above the resident memory of the loaded, warmed-up model. Goal <= 1.5 GB.
   Tissue-mask time reported.
3. Dask. --batch slides on a 2-worker LocalCluster (127.0.0.1) vs the same slides one after the
   other in this process: wall times (cluster start-up included and also given apart).

    python bench/slide.py [--side 20480] [--batch 4] [--out FILE.json] [--smoke]

--smoke: the bundled model only, one repeat, a 2,048 px slide written in this process, 1 slide on
the cluster, its start-up not timed apart (CI).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import CHECKOUT, add_smoke, emit, machine  # noqa: E402 - bench/common.py (the script's own folder)

from core.model.loading import load_predictor  # noqa: E402
from core.model.predict import Predictor  # noqa: E402
from core.paths import DEFAULT_MODEL_DIR  # noqa: E402
from core.slide.predictor import SlidePredictor, TileSettings  # noqa: E402
from core.slide.reader import open_slide  # noqa: E402
from core.testing.slides import FIELD, MOSAIC_MPP, mosaic, write_pyramid  # noqa: E402

THROUGHPUT_GOAL, MEMORY_GOAL_GB = 0.8, 1.5


def repeated_mosaic(path: Path, copies: int) -> Path:
    rgb, _ = mosaic()
    return write_pyramid(path, np.tile(rgb, (copies, 1, 1)), MOSAIC_MPP, levels=3)


def densenet() -> Predictor:
    from core.model.classifier import build_classifier

    model, _ = build_classifier("densenet121", "hierarchical", weights=None, input_size=224)
    card = {"name": "bench-densenet121", "backbone": "densenet121", "hierarchy": "hierarchical", "input_size": 224,
            "scale": {"mpp": 0.5, "tile_px": list(FIELD), "source": "bench: a 200X field"}}
    return Predictor(model, card)


def throughput(predictor: Predictor, slide: Path, repeats: int) -> dict:
    settings = TileSettings(top_k=0)
    with open_slide(slide) as reader:
        sp = SlidePredictor(predictor, settings)
        plan = sp.plan(reader)
        result = sp.predict(reader)  # warm-up: traces the passes
        tiles = [sp.read_tile(reader, plan, int(i)) for i in result.tiles["tile"]]
        inputs = [tf.constant(predictor.model_input(tiles[s:s + settings.batch_size]))
                  for s in range(0, len(tiles), settings.batch_size)]
        bare, pipeline = [], []
        for _ in range(repeats):  # interleaved, medians
            t0 = time.perf_counter()
            for batch in inputs:
                predictor._forward(batch)["stage1"].numpy()
            bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sp.predict(reader)
            pipeline.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        SlidePredictor(predictor, TileSettings(top_k=6)).predict(reader)
        with_cams = time.perf_counter() - t0
    n = len(tiles)
    bare_rate, pipeline_rate = n / float(np.median(bare)), n / float(np.median(pipeline))
    return {"model": predictor.name, "backbone": predictor.backbone, "input_size": predictor.input_size,
            "tiles": n, "bare_forward_tiles_per_s": round(bare_rate, 1), "pipeline_tiles_per_s": round(pipeline_rate, 1),
            "ratio": round(pipeline_rate / bare_rate, 3), "goal": THROUGHPUT_GOAL,
            "meets_goal": pipeline_rate / bare_rate >= THROUGHPUT_GOAL,
            "slide_with_top6_gradcam_s": round(with_cams, 3), "repeats": repeats}


def _write_large(path: str, side: int) -> None:
    """A side x side slide at 0.5 um/px, tile by tile: real fields in a disc of tissue, glass around."""
    import tifffile

    rgb, _ = mosaic()
    fields = rgb[460:1380, 700:2100].copy(), rgb[460:1380, 2800:4200].copy()
    tile = 256

    def level_tiles(d: int):
        size = -(-side // d)
        for ty in range(0, size, tile):
            for tx in range(0, size, tile):
                ys, xs = (np.arange(ty, ty + tile) * d) % 920, (np.arange(tx, tx + tile) * d) % 1400
                block = fields[(tx * d // 5000) % 2][ys][:, xs]
                yy, xx = np.meshgrid(np.arange(ty, ty + tile) * d, np.arange(tx, tx + tile) * d, indexing="ij")
                glass = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 > (0.4 * side) ** 2
                yield np.where(glass[..., None], np.uint8(245), block).astype(np.uint8)

    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for i, d in enumerate((1, 2, 4, 8, 16, 32)):
            size = -(-side // d)
            per_cm = 1e4 / (0.5 * d)
            writer.write(level_tiles(d), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                         compression="jpeg", subfiletype=0 if i == 0 else 1, resolution=(per_cm, per_cm),
                         resolutionunit="CENTIMETER")


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory(predictor: Predictor, side: int, folder: Path, child: bool = True) -> dict:
    path = folder / "large.tif"
    t0 = time.perf_counter()
    if child:  # written in a child process: the writing's memory is not this process's
        writer = multiprocessing.get_context("spawn").Process(target=_write_large, args=(str(path), side))
        writer.start()
        writer.join()
    else:
        _write_large(str(path), side)
    written = time.perf_counter() - t0
    baseline = _rss()  # the loaded, warmed-up model (throughput ran first)
    peak, running = [baseline], True

    def sample():
        while running:
            peak.append(_rss())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with open_slide(path) as reader:
        result = SlidePredictor(predictor, TileSettings(top_k=6)).predict(reader)
    running = False
    sampler.join()
    above = (max(peak) - baseline) / 2**30
    return {"slide_px": [side, side], "file_mb": round(path.stat().st_size / 2**20, 1), "write_s": round(written, 1),
            "tiles_total": len(result.plan.origins), "tiles_analysed": int(len(result.tiles)),
            "tissue_mask_s": round(result.timings["tissue_mask_s"], 3), "total_s": round(result.timings["total_s"], 2),
            "baseline_rss_gb": round(baseline / 2**30, 3), "peak_above_model_gb": round(above, 3),
            "goal_gb": MEMORY_GOAL_GB, "meets_goal": above <= MEMORY_GOAL_GB}


def dask_batch(count: int, folder: Path, time_startup: bool = True) -> dict:
    from core.slide.batch import run_dask, run_serial, slide_jobs

    slides = folder / "batch"
    slides.mkdir()
    for i in range(count):
        repeated_mosaic(slides / f"slide{i}.tif", 2)
    jobs = slide_jobs(slides, folder / "serial", str(DEFAULT_MODEL_DIR))
    t0 = time.perf_counter()
    run_serial(jobs)
    serial = time.perf_counter() - t0
    os.environ["PYTHONPATH"] = str(CHECKOUT)  # the workers run this checkout's core, as this process does
    from dask.distributed import Client, LocalCluster

    startup = None
    if time_startup:  # a cluster started only to time its start-up (run_dask starts its own)
        t0 = time.perf_counter()
        with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster, \
                Client(cluster):
            startup = time.perf_counter() - t0
    jobs = slide_jobs(slides, folder / "dask", str(DEFAULT_MODEL_DIR))
    t0 = time.perf_counter()
    run_dask(jobs, workers=2)
    cluster_wall = time.perf_counter() - t0
    same = all((folder / "serial" / f"slide{i}" / "tiles.csv").read_bytes()
               == (folder / "dask" / f"slide{i}" / "tiles.csv").read_bytes() for i in range(count))
    return {"slides": count, "tiles_per_slide": 16, "serial_s": round(serial, 2), "dask_2_workers_s": round(cluster_wall, 2),
            "cluster_startup_s": startup and round(startup, 2), "speedup": round(serial / cluster_wall, 2),
            "identical_tiles_csv": same, "note": "serial includes one model load in this process; each Dask worker "
            "loads the model once (TensorFlow import included in the cluster's time)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=20480)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-densenet", action="store_true")
    parser.add_argument("--out", type=Path)
    add_smoke(parser)
    args = parser.parse_args()
    copies = 4
    if args.smoke:
        args.side, args.batch, args.repeats, args.skip_densenet, copies = 2048, 1, 1, True, 1
    bundled = load_predictor(DEFAULT_MODEL_DIR)
    with tempfile.TemporaryDirectory(prefix="bench_slide_") as tmp:
        folder = Path(tmp)
        slide = repeated_mosaic(folder / "throughput.tif", copies)  # 4 copies: 32 fields, 112 tiles
        result = {"bench": "slide", "machine": machine(),
                  "throughput": [throughput(bundled, slide, args.repeats)]}
        if not args.skip_densenet:
            result["throughput"].append(throughput(densenet(), slide, max(2, args.repeats // 2)))
        result["memory"] = memory(bundled, args.side, folder, child=not args.smoke)
        result["dask"] = dask_batch(args.batch, folder, time_startup=not args.smoke)
    return emit(result, args.out, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
