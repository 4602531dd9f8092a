"""The Retrain form's logic: its choices, the run it launches and what the job shows of it.

Every default and choice comes from core.training.config.TrainConfig (the one definition of a
run's options); the form only collects values, and `training_config` turns them into the same
TrainConfig `python -m core train` parses, which core.app.jobs launches with `to_argv`.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from pathlib import Path

from core.options import choices_of
from core.training.config import NAMED_WEIGHTS, TrainConfig, validate

DEFAULTS = TrainConfig(data="", out="")
SPLIT_LABELS = {"patient-wise": "Patient-wise (no patient in two splits; honest)",
                "image-level": "Image-level (leaky: the same patient in train and test; for comparison only)"}
MODE_LABELS = {"finetune": "Fine-tune (whole network)", "fast": "Fast (frozen backbone, heads only)"}
# What the job's caption shows of its run (the job file keeps them; the run's config.json has all).
SHOWN = ("data", "backbone", "mode", "epochs", "balance", "split", "input_size", "batch_size", "stain_norm")


def choices(name: str, synthetic_dir: str | None = None) -> list:
    """The form's options for a TrainConfig field: its choices (balancing by GAN images only when
    there are GAN images); the named weights for --weights, which also takes a file on the CLI."""
    if name == "weights":
        return list(NAMED_WEIGHTS)
    options = list(choices_of(TrainConfig, name))
    return [o for o in options if o != "synthetic" or synthetic_dir] if name == "balance" else options


def default_index(name: str, synthetic_dir: str | None = None, defaults: TrainConfig = DEFAULTS) -> int:
    """Where `defaults` (TrainConfig's, or core.training.recipes.launch_defaults') sits in the choices."""
    return choices(name, synthetic_dir).index(getattr(defaults, name))


def training_config(values: dict, runs_root, synthetic_dir: str | None = None, name: str = "",
                    now: datetime.datetime | None = None, defaults: TrainConfig = DEFAULTS) -> TrainConfig:
    """The form's values (TrainConfig field -> value) on top of `defaults` as a checked run in
    RUNS_ROOT/NAME (a UserInputError lists every problem); an empty name becomes time-backbone-mode."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TypeError(f"not TrainConfig fields: {unknown}")
    config = dataclasses.replace(defaults, **{k: int(v) if isinstance(getattr(defaults, k), int)
                                              and not isinstance(v, bool) else v for k, v in values.items()})
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^\w.-]", "_", name.strip()) or f"{stamp}-{config.backbone}-{config.mode}"
    config = dataclasses.replace(config, data=str(config.data).strip(), out=str(Path(runs_root) / name),
                                 synthetic_dir=synthetic_dir if config.balance == "synthetic" else None)
    validate(config)
    return config


def shown_settings(config: TrainConfig) -> dict:
    """The settings a job's caption lists, taken from the run itself."""
    return {name: getattr(config, name) for name in SHOWN}
