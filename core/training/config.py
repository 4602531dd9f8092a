"""The one definition of a training run's settings.

`python -m core train` builds its options from these fields, the Retrain page takes its
defaults and choices from them and launches `python -m core train` with `to_argv(config)`, and
recipes (core.training.recipes) override a few of them. Nothing else defines a default.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from core.data.balance import STRATEGIES
from core.data.labels import HIERARCHICAL, HIERARCHIES, INPUT_SIZE, MAGNIFICATIONS, SUBTYPES
from core.data.selection import MAGNIFICATION_CHOICES, SplitSpec, kfold_problem
from core.data.splits import PATIENT, PROTOCOL_NAMES, SPLIT_CHOICES
from core.data.stain import STAIN_METHODS
from core.errors import UserInputError
from core.model.backbones import BACKBONES, DEFAULT_BACKBONE
from core.options import default_of, flag, option

MODES = ("finetune", "fast")
# fields: whole fields in memory at ~1 um/px, random crops and augmentation as Keras layers, any Keras
# backend (core.training.field_fit); tfdata: whole fields squashed to the input, tf.data, TensorFlow only.
PIPELINES = ("tfdata", "fields")
NAMED_WEIGHTS = ("imagenet", "none")  # --weights also takes a local weights file; a form offers these two
STRATEGY_NAMES = ("auto", "mirrored", "default")
# Options only the fields pipeline reads (--steps-per-epoch and --members have rules of their own in validate).
FIELDS_ONLY = ("crop_min", "physical_crops", "band_limit", "refit_subtypes", "label_smoothing", "weight_decay",
               "warmup_steps", "final_model")


@dataclasses.dataclass
class TrainConfig:
    data: str = option(help="BreakHis folder (any layout)")
    out: str = option(help="run folder to create, e.g. runs/NAME")
    backbone: str = option(DEFAULT_BACKBONE, "backbone from the registry", choices=tuple(BACKBONES))
    hierarchy: str = option(HIERARCHICAL, "stage 1 + stage 2 heads, or one flat 8-subtype head", choices=HIERARCHIES)
    mode: str = option("finetune", "finetune: the whole network; fast: frozen backbone, features once, "
                       "heads trained", choices=MODES)
    pipeline: str = option("tfdata", "fields: fields in memory at ~1 um/px, random crops, augmentation as Keras "
                           "layers, runs under KERAS_BACKEND=jax too; tfdata: whole fields squashed to the input "
                           "(TensorFlow only)", choices=PIPELINES)
    epochs: int = option(20, "maximum epochs (early stopping may end sooner)")
    batch_size: int = option(32, "images per step")
    input_size: int = option(INPUT_SIZE, "model input side in pixels")
    weights: str = option("imagenet", "imagenet, none, or a local weights file")  # forms offer NAMED_WEIGHTS
    head_units: int = option(256, "width of each multi-scale branch and head layer")
    dropout: float = option(0.5, "dropout before each head's output layer")
    l2: float = option(1e-4, "L2 weight penalty of the branch layers")
    augment_strength: float = option(1.0, "multiplies the stain and photometric jitter of finetune mode (0: off)")
    zoom: float = option(1.0, "random square crops of zoom..1 of the field, resized back (1: no crops)")
    crop_min: float = option(0.55, "fields pipeline: random square crops of crop_min..1 of the field's short side")
    physical_crops: bool = option(False, "fields pipeline: training crops and the model's views cover the same "
                                         "tissue at every magnification (a fifth of the side at 40X); measured no "
                                         "better on the 757 images (README, 'Physical views')")
    band_limit: bool = option(False, "fields pipeline: every field (and, in prediction, every slide tile) at the "
                                     "detail of the 224x224 px copies most small BreakHis sets are made of, so "
                                     "that sharpness cannot stand for a source (core.data.fields.band_limit)")
    refit_subtypes: bool = option(False, "fields pipeline: after training, refit both subtype heads as class-balanced "
                                         "logistic regressions on the network's features of the training fields' "
                                         "views (core.training.head_refit)")
    label_smoothing: float = option(0.1, "fields pipeline: label smoothing of both losses")
    weight_decay: float = option(0.05, "fields pipeline: AdamW weight decay")
    warmup_steps: int = option(100, "fields pipeline: linear warm-up steps before the cosine decay")
    steps_per_epoch: int | None = option(None, "fields pipeline: optimizer steps per epoch for every fold and the "
                                         "final model (default: one pass over each one's own fields). One number "
                                         "makes them one compiled program, which XLA's cache then compiles once "
                                         "(scripts/gpu_machine.sh), and trains each model for the same steps")
    final_model: bool = option(True, "fields pipeline with --folds: then train one model on every patient, with "
                               "the figures and thresholds of the pooled out-of-fold predictions",
                               off_help="fields pipeline with --folds: stop after the folds and their pooled figures, "
                               "without the model trained on every patient")
    members: int = option(1, "fields pipeline: train this many models with different seeds and predict with their "
                          "mean (a seed ensemble); with --folds, every fold's too, each seed's own figures beside it")
    stain_norm: str = option("none", "stain normalisation, fitted to the training split (the card keeps it; "
                             "prediction applies it)", choices=STAIN_METHODS)
    balance: str = option("none", "class-imbalance strategy for the training split", choices=STRATEGIES)
    synthetic_dir: str | None = option(None, "GAN images for --balance synthetic")
    reviewed_dir: str | None = option(None, "pathologist-reviewed images exported by the app "
                                      "(core.store.reviews), added to the training split only")
    synthetic_subtypes: list[str] | None = option(None, "subtypes GAN fill may top up (default: every subtype "
                                                  "below the largest)", choices=SUBTYPES, nargs="+", metavar="SUBTYPE")
    allow_gan_leak: bool = option(False, "use --synthetic-dir images even if their generator may have seen "
                                  "val/test images")
    split: str = option(PATIENT, "split protocol (image-level is leaky: for comparison only)", choices=SPLIT_CHOICES)
    folds: int = option(0, "patient-wise k-fold cross-validation: number of folds (0: one train/val/test split)")
    fold: int | None = option(None, "with --folds: train only this fold (0-based); without it, every fold")
    magnification: str = option("all", "all, or one of " + ", ".join(MAGNIFICATIONS), choices=MAGNIFICATION_CHOICES)
    seed: int = option(0, "split, shuffling and initialisation seed")
    demo: bool = option(False, "mark the model as a demo model in its card")
    learning_rate: float | None = option(None, "default: 1e-4 when fine-tuning pretrained weights, else 1e-3")
    patience: int = option(5, "early-stopping patience (epochs); half of it for halving the learning rate")
    early_stopping: bool = option(True, "stop when the validation loss stalls and keep the best epoch (off: "
                                  "a fixed number of epochs, for validation sets too small to choose an epoch)",
                                  off_help="train every epoch and keep the last one (the learning rate halves when the "
                                  "training loss stalls), for validation sets too small to choose an epoch")
    strategy: str = option("auto", "tf.distribute strategy (TF_CONFIG set: multi-worker)", choices=STRATEGY_NAMES)
    devices: str | None = option(None, "comma-separated devices for MirroredStrategy, e.g. /gpu:0,/gpu:1")
    cache: str = option("memory", "decoded-image cache: memory, none, or a file path prefix")
    feature_cache: bool = option(True, "fast mode: keep the frozen backbone's features on disk (BREAKHIS_FEATURE_CACHE, "
                                 "default ~/.cache/breakhis/features) and reuse them in later runs",
                                 off_help="fast mode: compute the frozen backbone's features afresh, neither reading "
                                 "nor writing the on-disk feature cache")
    evaluate: bool = option(True, "calibrate on the validation split and evaluate on the test split after training",
                            off_help="save the model uncalibrated and unmeasured (one run only: a cross-validation, "
                            "compare and tune exist to measure)")
    baselines: bool = option(True, "also score the majority and colour/texture baselines in the evaluation",
                             off_help="score the model only, without the majority and colour/texture baselines")
    echo_stdout: bool = option(True, cli=False)  # progress events also on stdout (the CLI and jobs)
    # The command as typed, for the card (core.training.runcard.run_record), set by core.cli from its argv
    # (not "command": the parser's name for the sub-command).
    command_line: str | None = option(None, cli=False)

    def split_spec(self) -> SplitSpec:
        return SplitSpec(self.split, self.seed, self.magnification, self.folds, self.fold or 0)

    @property
    def all_folds(self) -> bool:
        """--folds k without --fold: a cross-validation of every fold (core.training.crossval)."""
        return bool(self.folds) and self.fold is None

    @property
    def weights_or_none(self) -> str | None:
        return None if self.weights in (None, "none", "None") else self.weights


def fields_only_changed(config: TrainConfig) -> list[str]:
    """The fields pipeline's own options (FIELDS_ONLY) that `config` sets away from their defaults, as flags."""
    return [flag(name, default_of(TrainConfig, name)) for name in FIELDS_ONLY
            if getattr(config, name) != default_of(TrainConfig, name)]


def checked(config: TrainConfig | dict) -> TrainConfig:
    """A copy of the settings with the run-time defaults filled in, validated (UserInputError)."""
    config = TrainConfig(**config) if isinstance(config, dict) else dataclasses.replace(config)
    config.input_size = config.input_size or INPUT_SIZE
    config.weights = config.weights_or_none
    validate(config)
    return config


def refuse_unmeasured(config: TrainConfig, command: str, each: str) -> None:
    """compare and tune train core.training.fit (tf.data) runs and choose by each one's evaluation
    (metrics.json): the fields pipeline and --no-evaluate are refused in words, before anything is written."""
    if config.pipeline != "tfdata":
        raise UserInputError(f"{command} trains tf.data runs only, not --pipeline {config.pipeline}; measure each "
                             "fields setting with `python -m core train --pipeline fields --folds 5 ...` and compare "
                             "their cv.json")
    if not config.evaluate:
        raise UserInputError(f"{command} exists to measure every {each} (its metrics.json): drop --no-evaluate (train "
                             "one run unmeasured with `python -m core train --no-evaluate`)")


def validate(config: TrainConfig) -> None:
    """All setting problems at once, in words, before anything is written."""
    problems = []
    if config.backbone not in BACKBONES:
        problems.append(f"unknown backbone {config.backbone!r} (choose from {sorted(BACKBONES)})")
    elif config.weights not in (None, "none", "None", "imagenet") and not BACKBONES[config.backbone].pretrained:
        problems.append(f"--weights {config.weights}: {config.backbone} has no pretrained weights here, so a weights "
                        "file cannot be loaded into it; train it from scratch (--weights none)")
    for name, value, allowed in (("hierarchy", config.hierarchy, HIERARCHIES), ("mode", config.mode, MODES),
                                 ("split", config.split, PROTOCOL_NAMES), ("balance", config.balance, STRATEGIES),
                                 ("strategy", config.strategy, STRATEGY_NAMES),
                                 ("pipeline", config.pipeline, PIPELINES)):
        if value not in allowed:
            problems.append(f"{name} must be one of {list(allowed)}, not {value!r}")
    if config.members < 1 or (config.members > 1 and (config.pipeline != "fields" or not config.all_folds)):
        problems.append("--members (a seed ensemble) takes a count >= 1, and more than one only with --pipeline "
                        "fields and --folds (cross-validation is what measures the ensemble)")
    if config.epochs < 1 or config.batch_size < 1 or config.input_size < 32:
        problems.append("epochs and batch size must be >= 1 and input size >= 32")
    if config.steps_per_epoch is not None and (config.steps_per_epoch < 1 or config.pipeline != "fields"):
        problems.append("--steps-per-epoch takes a count >= 1, with --pipeline fields")
    if not (0.1 <= config.zoom <= 1.0 and config.augment_strength >= 0):
        problems.append("zoom must be in [0.1, 1] and augment strength >= 0")
    # Out of range, Keras fails mid-run (dropout 1.5) or trains on nonsense (crops larger than the field).
    for switch, fine, allowed, value in (
            ("--dropout", 0 <= config.dropout < 1, "in [0, 1)", config.dropout),
            ("--crop-min", 0 < config.crop_min <= 1, "in (0, 1]", config.crop_min),
            ("--label-smoothing", 0 <= config.label_smoothing < 1, "in [0, 1)", config.label_smoothing),
            ("--weight-decay", config.weight_decay >= 0, ">= 0", config.weight_decay),
            ("--learning-rate", config.learning_rate is None or config.learning_rate > 0, "> 0", config.learning_rate),
            ("--patience", config.patience >= 0, ">= 0", config.patience)):
        if not fine:
            problems.append(f"{switch} must be {allowed}, not {value:g}")
    if not Path(config.data).is_dir():
        problems.append(f"data folder not found: {config.data}")
    if config.weights and config.weights not in NAMED_WEIGHTS and not Path(config.weights).is_file():  # else inside the run
        problems.append(f"--weights: neither {' nor '.join(NAMED_WEIGHTS)} nor a file: {config.weights}")
    if config.reviewed_dir and not Path(config.reviewed_dir).is_dir():  # else the job fails later, as "Dataset"
        problems.append("folder of reviewed images to add to the training split (--reviewed-dir) not found: "
                        f"{config.reviewed_dir} (export one from the reviews with `python -m core reviews export OUT`)")
    kfold = kfold_problem(config.folds, config.fold, config.split)
    if kfold:
        problems.append(kfold)
    if config.pipeline == "tfdata" and fields_only_changed(config):  # the reverse of the fields pipeline's list
        problems.append("the tf.data pipeline does not take " + ", ".join(fields_only_changed(config))
                        + " (options of --pipeline fields; it would record them and ignore them)")
    if config.pipeline == "tfdata" and config.all_folds and not config.evaluate:
        problems.append("a cross-validation exists to measure every fold (cv.json pools their evaluations): drop "
                        "--no-evaluate, or train one fold without evaluating it (--fold I)")
    if config.pipeline == "fields" and config.all_folds and config.balance == "synthetic":
        problems.append("GAN fill in a cross-validation would need a generator per fold, trained without that fold's "
                        "held-out patients; run it on one split (without --folds)")
    if config.pipeline == "fields" and config.balance not in ("none", "synthetic"):
        problems.append("the fields pipeline balances subtypes itself (1/sqrt sampling, class-weighted losses); "
                        "--balance takes none or synthetic there")
    if config.pipeline == "fields":  # what the fields recipe would otherwise ignore without a word
        ignored = [what for unused, what in (
            (config.mode != "finetune", "--mode fast (it trains the whole network)"),
            (config.hierarchy != HIERARCHICAL, "--hierarchy flat (it learns both stages and the 8 subtypes together)"),
            (config.stain_norm != "none", "--stain-norm (it jitters the stains instead; every field normalised "
                                          "measured worse: models/default/candidates.md)"),
            (config.zoom != 1.0, "--zoom (its crops are set by --crop-min)"),
            (config.fold is not None, "--fold (with --folds it runs every fold)"),
            (not config.evaluate, "--no-evaluate (its figures and referral thresholds come from its own predictions "
                                  "on held-out patients)"),
            (not config.baselines, "--no-baselines (its figures stand next to the baselines')")) if unused]
        if ignored:
            problems.append("the fields pipeline does not take " + "; ".join(ignored))
    if config.balance == "synthetic" and not config.synthetic_dir:
        problems.append("--balance synthetic needs --synthetic-dir")
    elif config.balance == "synthetic" and not Path(config.synthetic_dir).is_dir():  # else it fails inside the run
        problems.append(f"GAN images folder (--synthetic-dir) not found: {config.synthetic_dir} (make one with "
                        "`python -m core gan sample`)")
    if problems:
        raise UserInputError("Invalid training settings: " + "; ".join(problems))
