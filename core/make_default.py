"""Reproduce the bundled default model: the recipe lives here, in one place.

Real users (full BreakHis, ImageNet weights, a GPU):
    python -m core.make_default --data /path/to/BreaKHis_v1
Bundled demo (what ships in models/default, trained on the 22 real samples in assets/samples):
    python -m core.make_default --demo

Both run the ordinary training job (core.train) and then copy its model folder, training
history and metrics into models/default. The demo recipe differs only in data, epochs and
batch size, and is marked `demo` in the card, so the app labels it DEMO wherever it predicts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from core.model_io import DEFAULT_MODEL_DIR, load_model_folder
from core.train import CANCELLED_EXIT, Cancelled, TrainConfig, train

REPO = Path(__file__).resolve().parent.parent
BUNDLED_SAMPLES = REPO / "assets" / "samples"

RECIPE = dict(backbone="densenet121", hierarchy="hierarchical", mode="finetune", epochs=40,
              batch_size=32, weights="imagenet", balance="class_weights", split="patient-wise",
              patience=6, seed=0)
DEMO_RECIPE = dict(RECIPE, epochs=12, batch_size=8, patience=12, demo=True)


def make_default(data: str | None, demo: bool, out: Path = DEFAULT_MODEL_DIR, force: bool = False) -> Path:
    """Train with the recipe and install the result as the default model folder."""
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    recipe = DEMO_RECIPE if demo else RECIPE
    run_dir = REPO / "runs" / f"default-{'demo' if demo else 'full'}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(TrainConfig(data=str(data or BUNDLED_SAMPLES), out=str(run_dir), **recipe))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="full BreakHis folder (any layout core.breakhis indexes)")
    source.add_argument("--demo", action="store_true", help="train the bundled demo on assets/samples")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--force", action="store_true", help="replace an existing model folder")
    args = parser.parse_args(argv)
    try:
        print(f"Installed {make_default(args.data, args.demo, args.out, args.force)}")
    except Cancelled:
        return CANCELLED_EXIT  # the existing default model is untouched
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
