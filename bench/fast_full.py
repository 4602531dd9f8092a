"""Full-size fast mode on a CPU: a BreakHis-shaped set of 7,909 images, DenseNet121 features once,
heads trained, calibrated and evaluated, end to end. Goal: <= 20 minutes on 2 cores.

The set has the manifest's exact layout, names and counts per subtype, magnification, slide and
case (assets/breakhis_manifest.csv, core.paths.MANIFEST), each image a 700x460 PNG with a learnable synthetic
signal per subtype (core/testing/synthetic.py; a smooth field plus fine noise, compressing like
the real scans). Then, with `python -m core train`'s own function:
1. a fast run (backbone densenet121, patient-wise split, evaluation on), timed; its features go
   to a fresh on-disk feature cache (core.training.feature_cache);
2. a second fast run with other head settings, timed: it reads every feature from the cache.
Weights are random ("none"): ImageNet weights cannot be downloaded here, and speed does not
depend on them. Prints one JSON object (and writes --out).

    python bench/fast_full.py [--work DIR] [--keep] [--epochs 15] [--out bench/results/fast_full.json] [--smoke]

--smoke: one image of each of 3 slides per subtype (24), the small CNN at 64 px, 1 epoch (CI).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import add_smoke, emit, machine  # noqa: E402 - bench/common.py (the script's own folder)

from core.paths import MANIFEST, REPO  # noqa: E402

GOAL_S = 20 * 60
SIZE = (700, 460)


def _write(rows: list[tuple[str, str, int]]) -> int:
    import numpy as np
    from PIL import Image

    from core.testing.synthetic import synthetic_image

    for path, subtype, seed in rows:
        rng = np.random.default_rng(seed)
        small = synthetic_image(subtype, rng, size=(SIZE[0] // 2, SIZE[1] // 2))  # the learnable signal
        field = np.asarray(Image.fromarray(small).resize(SIZE, Image.Resampling.BILINEAR), np.int16)
        field += rng.integers(-3, 4, field.shape, dtype=np.int16)  # fine grain, as in a scan
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(path, compress_level=1)
    return len(rows)


def write_breakhis_shaped(root: Path, manifest: Path = MANIFEST, slides_per_subtype: int | None = None) -> tuple[int, float]:
    """One synthetic PNG per manifest row (or one image of each of the first `slides_per_subtype`
    slides of every subtype), at its original path; returns (count, seconds)."""
    import pandas as pd

    breast = root / "BreaKHis_v1" / "histology_slides" / "breast"
    table = pd.read_csv(manifest)
    if slides_per_subtype:
        table = table.groupby("slide").head(1).groupby("subtype").head(slides_per_subtype)
    rows = [(str(breast / path), subtype, i) for i, (path, subtype) in enumerate(zip(table["path"], table["subtype"]))]
    start = time.perf_counter()
    workers = max(1, os.cpu_count() or 1)
    chunks = [rows[i::workers * 8] for i in range(workers * 8)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        written = sum(pool.map(_write, chunks))
    return written, time.perf_counter() - start


def timed_run(data: Path, out: Path, epochs: int, backbone: dict, **heads) -> tuple[float, dict]:
    from core.training.fit import train

    start = time.perf_counter()
    train(dict(data=str(data), out=str(out), mode="fast", **backbone, weights="none",
               epochs=epochs, batch_size=32, balance="class_weights", echo_stdout=False, **heads))
    seconds = time.perf_counter() - start
    card = json.loads((out / "model" / "card.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    return seconds, {"feature_cache": card["training"]["feature_cache"], "counts": card["training"]["counts"],
                     "test": {k: metrics.get(k) for k in ("split_protocol", "stage1_accuracy", "stage1_balanced_accuracy",
                                                            "subtype_macro_f1", "patient_stage1_accuracy")}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="folder for the image set, runs and cache (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fast_full.json")
    add_smoke(parser)
    args = parser.parse_args(argv)
    backbone = {"backbone": "densenet121"}
    if args.smoke:
        args.epochs, backbone = 1, {"backbone": "small_cnn", "input_size": 64}
    work = args.work or Path(tempfile.mkdtemp(prefix="fast_full-"))
    os.environ["BREAKHIS_FEATURE_CACHE"] = str(work / "feature_cache")
    shutil.rmtree(work / "feature_cache", ignore_errors=True)
    try:
        written, write_s = write_breakhis_shaped(work / "data", slides_per_subtype=3 if args.smoke else None)
        first_s, first = timed_run(work / "data", work / "runs" / "first", args.epochs, backbone)
        second_s, second = timed_run(work / "data", work / "runs" / "second", args.epochs, backbone,
                                     head_units=128, dropout=0.3, learning_rate=3e-3)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    import tensorflow as tf

    result = {
        "bench": "fast_full", "images": written, "image_size": list(SIZE), "writing_the_set_s": round(write_s, 1),
        "first_run_s": round(first_s, 1), "second_run_with_other_heads_s": round(second_s, 1),
        "goal_s": GOAL_S, "meets_goal": bool(first_s <= GOAL_S),
        "first": first, "second": second,
        "run": f"python -m core train --mode fast --backbone {backbone['backbone']} --weights none --balance class_weights "
               f"--epochs {args.epochs} (index, patient-wise split, features, heads, calibration, test evaluation)",
        "device": "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)",
        "machine": machine(),
    }
    return emit(result, args.out, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
