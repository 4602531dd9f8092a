"""How long does one diagnosis take, compared with one bare DenseNet121 forward pass?

A diagnosis is what the app does per image: load the file -> stage 1 + stage 2 prediction ->
Grad-CAM for both stages, resized onto the original image. The goal is <= 1.5x one bare
DenseNet121 forward (keras.applications.DenseNet121(weights=None), 224 px, batch 1). Both are
timed in the same process, interleaved, after warm-up; medians are reported. For reference it
also times the straightforward route (predict, then tf-keras-vis Gradcam per stage).

    python bench/diagnose.py [--model DIR] [--image PNG] [--repeats 20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from core.data.images import load_image
from core.data.labels import INPUT_SIZE
from core.model.cam import _explainer, explain
from core.model.classifier import build_classifier
from core.model.predict import Predictor
from core.paths import DEFAULT_MODEL_DIR, REPO

GOAL = 1.5


def default_image() -> Path:
    for root in (REPO.parent / "shared" / "breakhis" / "samples", REPO / "assets" / "samples"):
        found = sorted(root.rglob("*.png")) if root.is_dir() else []
        if found:
            return found[0]
    raise SystemExit("No sample image found; pass --image")


def load_predictor(folder: str | None) -> tuple[Predictor, str]:
    folder = Path(folder) if folder else DEFAULT_MODEL_DIR
    if (folder / "card.json").is_file():
        return Predictor.load(folder), str(folder)
    model, _ = build_classifier("densenet121", "hierarchical", weights=None, input_size=INPUT_SIZE)
    card = {"name": "bench", "backbone": "densenet121", "hierarchy": "hierarchical", "input_size": INPUT_SIZE}
    return Predictor(model, card), "densenet121 hierarchical, weights=None (no model folder found)"


def tf_keras_vis_diagnosis(predictor: Predictor, path: Path) -> None:
    """The straightforward route, for comparison: predict, then tf-keras-vis Gradcam per stage."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.scores import CategoricalScore

    from core.data.labels import SUBTYPES_BY_CLASS
    from core.model.cam import to_heatmap

    rgb = load_image(path).rgb
    prediction = predictor.predict([rgb])[0]
    explainer = _explainer(predictor)
    seed = predictor.model_input([rgb])
    for output, index in (("stage1", ("benign", "malignant").index(prediction.label)),
                          (f"{prediction.label}_subtype", SUBTYPES_BY_CLASS[prediction.label].index(prediction.subtype))):
        cam = Gradcam(explainer.logit_models[output])(CategoricalScore([index]), seed, penultimate_layer=explainer.cam_layer,
                                                     seek_penultimate_conv_layer=False, expand_cam=False)
        to_heatmap(np.asarray(cam)[0], rgb.shape[:2])


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"model folder (default {DEFAULT_MODEL_DIR} when present)")
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reference-repeats", type=int, default=5, help="tf-keras-vis route (0 to skip)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    image = args.image or default_image()

    predictor, model_description = load_predictor(args.model)
    densenet = keras.applications.DenseNet121(weights=None)
    bare = tf.function(lambda x: densenet(x, training=False))
    batch = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype("float32"))

    def one_diagnosis():
        rgb = load_image(image).rgb
        diagnosis = explain(predictor, rgb)
        assert diagnosis.explanations["stage2"].heatmap.shape == rgb.shape[:2]

    def one_forward():
        bare(batch).numpy()

    for _ in range(args.warmup):
        one_diagnosis(), one_forward()
    diagnosis_times, forward_times, load_times = [], [], []
    for _ in range(args.repeats):  # Interleaved, so both see the same machine load.
        diagnosis_times.append(timed(one_diagnosis))
        forward_times.append(timed(one_forward))
        load_times.append(timed(lambda: load_image(image)))
    reference = []
    if args.reference_repeats:
        tf_keras_vis_diagnosis(predictor, image)  # warm-up
        reference = [timed(lambda: tf_keras_vis_diagnosis(predictor, image)) for _ in range(args.reference_repeats)]

    diagnosis_median = statistics.median(diagnosis_times)
    forward_median = statistics.median(forward_times)
    ratio = diagnosis_median / forward_median
    gpus = tf.config.list_physical_devices("GPU")
    result = {
        "diagnosis_s": round(diagnosis_median, 4),
        "densenet121_forward_s": round(forward_median, 4),
        "ratio": round(ratio, 3), "goal": GOAL, "meets_goal": bool(ratio <= GOAL),
        "load_image_s": round(statistics.median(load_times), 4),
        "tf_keras_vis_route_s": round(statistics.median(reference), 4) if reference else None,
        "tf_keras_vis_route_ratio": round(statistics.median(reference) / forward_median, 3) if reference else None,
        "repeats": args.repeats, "warmup": args.warmup, "image": image.name,
        "image_size": list(load_image(image).rgb.shape[:2]), "model": model_description,
        "diagnosis": "load_image -> core.model.cam.explain (the app's heat-map path): one "
                     "compiled pass, stage 1 + stage 2 probabilities and both Grad-CAMs (one forward, one "
                     "tape) -> heatmaps resized to the original image",
        "device": f"GPU: {gpus[0].name}" if gpus else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
