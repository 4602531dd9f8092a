"""Is the tf.data input pipeline fast enough to keep training busy? Prints one JSON object.

(The tf.data pipeline, `--pipeline tfdata`, TensorFlow only. The fields pipeline's input side,
FieldBatches and the FieldAugmentation layer, is measured by bench/gpu_train.py as shares of a
training step, under any Keras backend.)

    python bench/train_input.py [--backbone densenet121] [--batch-size 16] [--steps 2] [--images 96] [--smoke]

Measures, on this machine:
- the input pipeline (core.data.pipeline.make_dataset with augmentation) in images/s, on the real
  BreakHis samples (700x460 PNGs) repeated, or synthetic PNGs of that size when they are absent:
  the first epoch (read + decode + resize + augment) and a cached epoch (augment only);
- the training step (train_on_batch of the real model at the real input size) in images/s,
  timed over a few steps after a warm-up step (mixed float16 on GPU, as core.training.fit does).
The goal is pipeline >= 5x the training step, so the accelerator never waits for data. The
headline ratio uses the first (uncached) epoch, the worst case. The two are timed one after
the other; during real CPU training they share the cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from common import add_smoke, emit  # noqa: E402 - bench/common.py (the script's own folder)

from core.data.breakhis import index_folder
from core.data.labels import INPUT_SIZE, SUBTYPES
from core.data.pipeline import make_dataset
from core.data.stain import STAIN_METHODS
from core.data.stain_reference import fit_normalizer
from core.model.classifier import build_classifier
from core.paths import REPO
from core.training.fit import compile_model

GOAL = 5.0
SAMPLES = (REPO.parent / "shared" / "breakhis" / "samples", REPO / "assets" / "samples")


def image_table(n: int, workdir: Path) -> tuple[pd.DataFrame, str]:
    """n rows: the real samples repeated, or synthetic 700x460 PNGs when there are none."""
    for folder in SAMPLES:
        if folder.is_dir():
            real = index_folder(folder).images
            if len(real):
                rows = real.iloc[np.arange(n) % len(real)].reset_index(drop=True)
                return rows, f"{len(real)} real BreakHis samples from {folder}, repeated to {n}"
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(16):
        path = workdir / f"synthetic_{i}.png"
        Image.fromarray(rng.integers(0, 256, (460, 700, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    rows = pd.DataFrame({"path": [paths[i % 16] for i in range(n)], "subtype": [SUBTYPES[i % 8] for i in range(n)]})
    return rows, f"16 synthetic 700x460 PNGs (no real samples found), repeated to {n}"


def pipeline_rates(table: pd.DataFrame, batch_size: int, input_size: int, normalizer=None) -> dict:
    """images/s of an augmented training dataset: first epoch (decoding) and a cached epoch."""
    dataset = make_dataset(table, "hierarchical", batch_size, training=True, augment=True,
                           input_size=input_size, cache=True, normalizer=normalizer)
    rates = {}
    for epoch in ("first_epoch", "cached_epoch"):
        start, count = time.perf_counter(), 0
        for images, _, _ in dataset:
            count += int(images.shape[0])
        rates[f"{epoch}_images_per_s"] = count / (time.perf_counter() - start)
    return rates


def train_step_rate(backbone: str, batch, steps: int, input_size: int) -> dict:
    """images/s of train_on_batch after one warm-up step (which traces the graph)."""
    on_gpu = bool(tf.config.list_logical_devices("GPU"))
    if on_gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")
    model, _ = build_classifier(backbone, "hierarchical", None, input_size)
    compile_model(model, "hierarchical", 1e-4)
    images, targets, weights = batch
    start = time.perf_counter()
    model.train_on_batch(images, targets, sample_weight=weights)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, targets, sample_weight=weights)
    seconds = time.perf_counter() - start
    return {"train_step_images_per_s": steps * int(images.shape[0]) / seconds,
            "seconds_per_step": seconds / steps, "warmup_step_s": warmup, "mixed_precision": on_gpu}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps after the warm-up")
    parser.add_argument("--images", type=int, default=96, help="images per pipeline epoch")
    parser.add_argument("--input-size", type=int, default=INPUT_SIZE)
    parser.add_argument("--stain-norm", choices=STAIN_METHODS, default="none",
                        help="stain normalisation in the pipeline, fitted to the images (as training does)")
    add_smoke(parser)
    args = parser.parse_args(argv)
    if args.smoke:  # the small CNN at 64 px, batch 4, one step
        args.backbone, args.batch_size, args.steps, args.images, args.input_size = "small_cnn", 4, 1, 8, 64
    if args.batch_size < 1 or args.steps < 1 or args.images < args.batch_size:
        parser.error("need batch size >= 1, steps >= 1 and images >= batch size")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        table, source = image_table(args.images, Path(workdir))
        normalizer = fit_normalizer(args.stain_norm, table.drop_duplicates("path"))
        pipeline = pipeline_rates(table, args.batch_size, args.input_size, normalizer)
        batch = next(iter(make_dataset(table, "hierarchical", args.batch_size, augment=True,
                                       input_size=args.input_size, cache=False)))
    training = train_step_rate(args.backbone, batch, args.steps, args.input_size)
    ratio = pipeline["first_epoch_images_per_s"] / training["train_step_images_per_s"]
    ratio_cached = pipeline["cached_epoch_images_per_s"] / training["train_step_images_per_s"]
    gpus = tf.config.list_logical_devices("GPU")
    result = {
        "device": f"{len(gpus)} GPU(s), {os.cpu_count()} CPU cores" if gpus else f"CPU only, {os.cpu_count()} cores",
        "backbone": args.backbone, "input_size": args.input_size, "batch_size": args.batch_size,
        "stain_normalization": args.stain_norm,
        "images_source": source,
        "pipeline": {k: round(v, 1) for k, v in pipeline.items()},
        "training": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in training.items()},
        "ratio": round(ratio, 2), "ratio_cached": round(ratio_cached, 2), "goal": GOAL,
        "meets_goal": bool(ratio >= GOAL), "meets_goal_cached": bool(ratio_cached >= GOAL),
        "total_seconds": round(time.perf_counter() - began, 1),
    }
    emit(result, smoke=args.smoke)
    return result


if __name__ == "__main__":
    main()
