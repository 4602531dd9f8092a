"""DenseNet121 fine-tuning throughput: images/s of full training steps, over a batch-size sweep.

The real classifier (core.model.classifier: hierarchical multi-scale DenseNet121 at 224 px), the
real loss and optimizer (core.training.fit.compile_model), mixed float16 on a GPU as training
uses, fed by the real input pipeline (core.data.pipeline.make_dataset: PNGs read from disk,
decoded, resized, augmented, cached in memory after the first pass). The images are synthetic
700x460 PNGs written to a temporary folder (speed does not depend on their content). Per batch
size: a warm-up (tracing, autotuning, filling the cache), then timed steps.

Goal: >= 1,500 images/s on one H100/H200-class GPU. On a CPU it runs too, with small batches and
few steps, and says so: a CPU figure is not comparable with the goal.

    python bench/gpu_train.py [--batch-sizes 64 128 256] [--steps 30] [--images 2048] [--out FILE.json] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import add_smoke, emit, machine  # noqa: E402 - bench/common.py (the script's own folder)
from PIL import Image  # noqa: E402

from core.data.labels import INPUT_SIZE, SUBTYPES  # noqa: E402
from core.data.pipeline import make_dataset  # noqa: E402
from core.model.classifier import build_classifier  # noqa: E402
from core.paths import REPO  # noqa: E402
from core.training.fit import compile_model  # noqa: E402

GOAL = 1500.0


def write_images(folder: Path, count: int, distinct: int = 256) -> pd.DataFrame:
    """`distinct` synthetic 700x460 PNGs, listed `count` times (all 8 subtypes)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(min(distinct, count)):
        path = folder / f"field_{i:04d}.png"
        Image.fromarray(rng.integers(60, 230, (460, 700, 3), dtype=np.uint8)).save(path, compress_level=1)
        paths.append(str(path))
    return pd.DataFrame({"path": [paths[i % len(paths)] for i in range(count)],
                         "subtype": [SUBTYPES[i % len(SUBTYPES)] for i in range(count)]})


class StepTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def throughput(table: pd.DataFrame, batch_size: int, steps: int, warmup: int, backbone: str = "densenet121",
               input_size: int = INPUT_SIZE) -> dict:
    """images/s over `steps` training steps after `warmup` steps, at this batch size."""
    keras.backend.clear_session()
    model, _ = build_classifier(backbone, "hierarchical", weights=None, input_size=input_size)
    compile_model(model, "hierarchical", 1e-4)
    dataset = make_dataset(table, "hierarchical", batch_size, training=True, augment=True, cache=True,
                           input_size=input_size).repeat()
    timer = StepTimes()
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
    timed = np.diff(timer.ends[warmup - 1:])  # the steps after the warm-up
    result = {"batch_size": batch_size, "images_per_s": round(batch_size / float(np.median(timed)), 1),
              "images_per_s_mean": round(batch_size * len(timed) / float(np.sum(timed)), 1),
              "warmup_s": round(timer.ends[warmup - 1] - start, 1), "timed_steps": len(timed)}
    if tf.config.list_physical_devices("GPU"):
        result["peak_gpu_memory_gib"] = round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30, 2)
        tf.config.experimental.reset_memory_stats("GPU:0")
    return result


def main(argv=None) -> int:
    gpus = tf.config.list_physical_devices("GPU")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256] if gpus else [8, 16])
    parser.add_argument("--steps", type=int, default=30 if gpus else 3)
    parser.add_argument("--warmup", type=int, default=10 if gpus else 2)
    parser.add_argument("--images", type=int, default=4096 if gpus else 64, help="images listed per pass")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_train.json")
    add_smoke(parser)
    args = parser.parse_args(argv)
    smoke = {"backbone": "small_cnn", "input_size": 64} if args.smoke else {}
    if args.smoke:  # the small CNN at 64 px, batch 2, one step after one warm-up step
        args.batch_sizes, args.steps, args.warmup, args.images = [2], 1, 1, 4
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    sweep = []
    with tempfile.TemporaryDirectory() as folder:
        table = write_images(Path(folder), args.images)
        for batch_size in args.batch_sizes:
            try:
                sweep.append(throughput(table, batch_size, args.steps, args.warmup, **smoke))
            except tf.errors.ResourceExhaustedError:
                sweep.append({"batch_size": batch_size, "error": "out of GPU memory"})
    best = max((s for s in sweep if "images_per_s" in s), key=lambda s: s["images_per_s"], default=None)
    device = (f"GPU: {tf.config.experimental.get_device_details(gpus[0]).get('device_name', gpus[0].name)}"
              if gpus else f"CPU only ({os.cpu_count()} cores): NOT the goal's device, figures not comparable")
    result = {
        "bench": "gpu_train", "device": device, "mixed_precision": bool(gpus), "model": "hierarchical multi-scale "
        + ("small CNN, 64 px (smoke)" if args.smoke else "DenseNet121, 224 px") + ", all layers trainable", "input": "make_dataset from disk: decode + resize + augment, "
        "cached after the first pass", "sweep": sweep, "best_images_per_s": best and best["images_per_s"],
        "best_batch_size": best and best["batch_size"], "goal_images_per_s": GOAL,
        "meets_goal": bool(gpus) and bool(best) and best["images_per_s"] >= GOAL,
        "machine": machine(),
    }
    return emit(result, args.out, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
