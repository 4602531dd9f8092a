"""Reproduce the bundled default model: the recipe lives here, in one place.

Real users (full BreakHis, ImageNet weights, a GPU):
    python -m core make-default --data /path/to/BreaKHis_v1
Bundled demo (what ships in models/default, trained on the 22 real samples in assets/samples):
    python -m core make-default --demo

Both run the ordinary training job (core.training.fit) and then copy its model folder, training
history and metrics into models/default. The demo recipe differs only in data, epochs and
batch size, and is marked `demo` in the card, so the app labels it DEMO wherever it predicts.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from core.model.backbones import DEFAULT_BACKBONE
from core.model.folders import load_model_folder
from core.paths import DEFAULT_MODEL_DIR, SAMPLES_DIR, runs_dir
from core.training.config import TrainConfig
from core.training.fit import train

# A recipe names every setting that decides the model, so a later change of a TrainConfig default
# does not silently change how the bundled model is made.
RECIPE = dict(backbone=DEFAULT_BACKBONE, hierarchy="hierarchical", mode="finetune", epochs=40,
              batch_size=32, weights="imagenet", balance="class_weights", split="patient-wise",
              patience=6, seed=0)
DEMO_RECIPE = dict(RECIPE, epochs=12, batch_size=8, patience=12, demo=True)


def make_default(data: str | None, demo: bool, out: Path = DEFAULT_MODEL_DIR, force: bool = False) -> Path:
    """Train with the recipe and install the result as the default model folder."""
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    recipe = DEMO_RECIPE if demo else RECIPE
    run_dir = runs_dir() / f"default-{'demo' if demo else 'full'}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(TrainConfig(data=str(data or SAMPLES_DIR), out=str(run_dir), **recipe))
    load_model_folder(result["model_dir"])  # checksum and safe loading, before replacing anything
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(result["model_dir"], staging)
    for extra in ("history.csv", "metrics.json"):
        if (run_dir / extra).exists():
            shutil.copy2(run_dir / extra, staging / extra)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
