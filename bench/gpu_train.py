"""Training throughput of the fields pipeline, on any Keras backend: images/s of full training steps.

The real classifier (core.model.classifier: hierarchical multi-scale heads on DenseNet121 at 224 px
or ResNet-18 at 160 px, from scratch), the real training model and compile step
(core.training.field_fit.prepare_fit: FieldAugmentation in front, AdamW, the smoothed weighted
losses), fed by the real sampler (FieldBatches) over synthetic uint8 fields of 230x350 px held in
memory, as `python -m core train --pipeline fields` trains (mixed bfloat16 on a GPU). Per model and
batch size: warm-up steps (compilation), then timed steps; and how much of a step the input side
takes: one batch's fetch on the host (FieldBatches.__getitem__) and the augmentation layer alone
on the device. With one loader thread (--workers 1) the fetch is serial with the step loop, so
its share of a step bounds how long the accelerator waits for data (JAX's asynchronous dispatch
can hide part of it).

Goal: >= 2,000 images/s for DenseNet121 at 224 px on one H200. On a CPU it runs too, with small
sizes, and says so: a CPU figure is not comparable with the goal.

    python bench/gpu_train.py [--models densenet121@224 resnet18@160] [--batch-sizes 128 256 512]
    KERAS_BACKEND=jax python bench/gpu_train.py --smoke          # seconds, any backend
    python bench/gpu_train.py --compare-backends                 # same run under each installed backend
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(REPO))  # this checkout's core, also where it is not installed (a GPU machine)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import add_smoke, emit, machine  # noqa: E402 - bench/common.py (the script's own folder)

from core.backends import installed_backends, probe  # noqa: E402
from core.data.fields import FIELD_PX  # noqa: E402
from core.data.labels import SUBTYPES  # noqa: E402
from core.training.config import TrainConfig  # noqa: E402
from core.training.field_fit import precision_for_device, prepare_fit  # noqa: E402

GOAL, GOAL_MODEL = 2000.0, "densenet121@224"
SMOKE = {"models": ["small_cnn@32"], "batch_sizes": [4], "steps": 2, "warmup": 1, "fields": 16}


class StepClock(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def synthetic_fields(count: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """`count` uint8 fields at FIELD_PX (speed does not depend on content), all 8 subtypes."""
    rng = np.random.default_rng(seed)
    fields = rng.integers(60, 230, (count, FIELD_PX[1], FIELD_PX[0], 3), dtype=np.uint8)
    return fields, [SUBTYPES[i % len(SUBTYPES)] for i in range(count)]


def _median_seconds(call, repeats: int) -> float:
    call()  # compile / warm caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def augment_seconds(model: keras.Model, fields: np.ndarray, repeats: int = 3) -> float:
    """One batch through FieldAugmentation alone, on the device (reduced to a scalar per image, so
    no image comes back to the host)."""
    augmented = model.get_layer("augment").output
    reduced = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2, 3)))(augmented)
    alone = keras.Model(model.inputs, reduced)
    return _median_seconds(lambda: alone.predict_on_batch(fields), repeats)


def peak_memory_gib() -> float | None:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return round(stats["peak_bytes_in_use"] / 2**30, 2) if "peak_bytes_in_use" in stats else None
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
            tf.config.experimental.reset_memory_stats("GPU:0")
            return round(peak / 2**30, 2)
    return None


def throughput(backbone: str, size: int, batch: int, args, fields, subtypes) -> dict:
    """images/s over args.steps training steps after args.warmup, and the input side's share of a step."""
    keras.backend.clear_session()
    config = TrainConfig(data="", out="", pipeline="fields", backbone=backbone, input_size=size, batch_size=batch,
                         weights="none", epochs=1)
    _, model, batches, _ = prepare_fit(fields, subtypes, config, steps=args.warmup + args.steps,
                                       workers=args.workers)
    clock = StepClock()
    start = time.perf_counter()
    model.fit(batches, epochs=1, verbose=0, callbacks=[clock])
    done = time.perf_counter()  # fit returns once the epoch's logs are read: every step has run
    warm = clock.ends[args.warmup - 1]
    step_s = (done - warm) / args.steps
    steps = np.diff([*clock.ends[args.warmup - 1:-1], done])
    input_s = _median_seconds(lambda: batches[0], 5)
    augment_s = augment_seconds(model, batches[0][0])
    return {"model": f"{backbone}@{size}", "batch_size": batch, "images_per_s": round(batch / step_s, 1),
            "images_per_s_median_step": round(batch / float(np.median(steps)), 1), "step_s": round(step_s, 4),
            "warmup_s": round(warm - start, 1), "timed_steps": args.steps,
            "input_fetch_s": round(input_s, 4),
            # upper bound with one loader thread: the fetch is serial with the loop (async dispatch may hide it)
            "accelerator_idle_share_estimate": round(min(1.0, input_s / step_s), 3),
            "augment_s": round(augment_s, 4), "augment_share_of_step": round(augment_s / step_s, 3),
            "output_dtypes": {k: str(keras.backend.standardize_dtype(t.dtype)) for k, t in model.output.items()},
            "peak_memory_gib": peak_memory_gib()}


def out_of_memory(error: Exception) -> bool:
    text = f"{type(error).__name__} {error}"
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "ResourceExhausted", "out of memory", "Out of memory"))


def compare_backends(argv: list[str], out: Path | None) -> int:
    """The same command under each installed backend, one child process each (KERAS_BACKEND set)."""
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        for backend in installed_backends():
            path = Path(folder) / f"{backend}.json"
            done = subprocess.run([sys.executable, __file__, *argv, "--out", str(path)], capture_output=True,
                                  text=True, env={**os.environ, "KERAS_BACKEND": backend})
            runs[backend] = (json.loads(path.read_text()) if done.returncode == 0 and path.is_file() else
                             {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]})
    rates = {b: r["best_images_per_s"] for b, r in runs.items() if r.get("best_images_per_s")}
    fastest = max(rates, key=rates.get, default=None)
    others = {b: round(rates[fastest] / v, 2) for b, v in rates.items() if b != fastest} if fastest else {}
    result = {"bench": "gpu_train --compare-backends", "device": next((r["device"] for r in runs.values()
                                                                       if "device" in r), None),
              "images_per_s": rates, "fastest_backend": fastest, "fastest_over_others": others,
              "recommendation": (f"train with KERAS_BACKEND={fastest} here (" + ", ".join(
                  f"{x}x {b}'s images/s" for b, x in others.items()) + ")") if fastest else "no backend ran",
              "runs": runs, "machine": machine()}
    return emit(result, out)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", help="BACKBONE@SIZE (default: densenet121@224 resnet18@160 "
                        "resnet18_half@160 on a GPU, resnet18_half@160 on a CPU)")
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--steps", type=int, help="timed steps after the warm-up (GPU 30, CPU 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first, compilation included (GPU 5, CPU 1)")
    parser.add_argument("--fields", type=int, help="distinct synthetic fields in memory (GPU 2048, CPU 64)")
    parser.add_argument("--workers", type=int, default=1, help="FieldBatches loader threads (1: in the loop)")
    parser.add_argument("--precision", choices=("auto", "float32", "mixed_bfloat16"), default="auto",
                        help="auto: as fit_fields trains, mixed_bfloat16 on a GPU, float32 on a CPU")
    add_smoke(parser)  # tiny: the small CNN at 32 px, batch 4, 2 steps
    parser.add_argument("--compare-backends", action="store_true",
                        help="run the same settings under each installed Keras backend (child processes)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_train.json")
    args = parser.parse_args(argv)
    if args.compare_backends:
        return compare_backends([a for a in argv if a != "--compare-backends"], args.out)
    seen = probe(keras.backend.backend())
    gpu = bool(seen["gpus"])
    defaults = SMOKE if args.smoke else {
        "models": ["densenet121@224", "resnet18@160", "resnet18_half@160"] if gpu else ["resnet18_half@160"],
        "batch_sizes": [128, 256, 512] if gpu else [8], "steps": 30 if gpu else 3, "warmup": 5 if gpu else 1,
        "fields": 2048 if gpu else 64}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    precision = args.precision if args.precision != "auto" else precision_for_device()  # as training chooses
    keras.mixed_precision.set_global_policy(precision)
    fields, subtypes = synthetic_fields(args.fields)
    sweep = []
    for entry in args.models:
        backbone, size = entry.split("@")
        for batch in args.batch_sizes:
            try:
                sweep.append(throughput(backbone, int(size), batch, args, fields, subtypes))
            except Exception as error:  # a batch too large for the device ends this size, not the sweep
                if not out_of_memory(error):
                    raise
                sweep.append({"model": entry, "batch_size": batch, "error": "out of device memory"})
    measured = [s for s in sweep if "images_per_s" in s]
    best = max(measured, key=lambda s: s["images_per_s"], default=None)
    goal_runs = [s for s in measured if s["model"] == GOAL_MODEL]
    goal_best = max((s["images_per_s"] for s in goal_runs), default=None)
    device = (f"GPU: {', '.join(seen['gpus'])}" if gpu else
              f"CPU only ({os.cpu_count()} cores): NOT the goal's device, figures not comparable")
    result = {
        "bench": "gpu_train", "backend": keras.backend.backend(),
        "device": device, "precision": precision, "workers": args.workers,
        "model": "hierarchical multi-scale classifier from scratch, all layers trainable, FieldAugmentation in "
                 "front (core.training.field_fit)", "input": f"FieldBatches over {args.fields} synthetic uint8 "
                 f"fields {FIELD_PX[1]}x{FIELD_PX[0]} in memory",
        "heads_float32": all(d == "float32" for s in measured for d in s["output_dtypes"].values()),
        "sweep": sweep, "best_images_per_s": best and best["images_per_s"], "best": best and
        {"model": best["model"], "batch_size": best["batch_size"]},
        "goal": f">= {GOAL:.0f} images/s for {GOAL_MODEL} on one H200", "goal_model_images_per_s": goal_best,
        "meets_goal": bool(gpu and goal_best and goal_best >= GOAL), "machine": machine(),
    }
    return emit(result, args.out, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
