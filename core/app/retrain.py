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

from core.app.registry import split_protocol
from core.backends import backend_problem, detect, installed_backends
from core.data.selection import select_images
from core.data.synthetic import check_synthetic_folder
from core.errors import UserInputError
from core.evaluation.metrics import split_name
from core.options import choices_of
from core.training.config import NAMED_WEIGHTS, TrainConfig, validate
from core.training.progress import latest_state, phase_history, read_progress

DEFAULTS = TrainConfig(data="", out="")
SPLIT_LABELS = {"patient-wise": "Patient-wise (no patient in two splits; honest)",
                "image-level": "Image-level (leaky: the same patient in train and test; for comparison only)"}
MODE_LABELS = {"finetune": "Fine-tune (whole network)", "fast": "Fast (frozen backbone, heads only; tf.data pipeline)"}
# What the job's caption shows of its run (the job file keeps them; the run's config.json has all).
SHOWN = ("data", "backbone", "pipeline", "mode", "epochs", "balance", "split", "input_size", "batch_size",
         "stain_norm")
FOLDS_HELP = ("0: one patient-wise train/validation/test split. k (2-10): k models, each tested on the patients the "
              "others learn from, so that every patient is tested once; the figures, the calibration and the referral "
              "thresholds come from those pooled predictions, and a final model then learns from every patient (as "
              "the bundled model was made: `python -m core make-default`). k + 1 trainings: about k + 1 times as long.")
PIPELINE_LABELS = {"tfdata": "tf.data: whole fields squashed to the input (TensorFlow only)",
                   "fields": "Fields: crops at ~1 um/px, augmentation on the accelerator (TensorFlow or JAX)"}


def backends_seen() -> dict[str, dict]:
    """{backend: what it sees} for every installed Keras backend (core.backends.detect, in child
    processes: the app's server holds no GPU)."""
    return detect()


def device_lines(seen: dict[str, dict]) -> tuple[bool, list[str]]:
    """(any GPU seen, one sentence per backend) for the Retrain page."""
    lines, any_gpu = [], False
    for backend, info in seen.items():
        if info.get("error"):
            lines.append(f"{backend}: cannot be used here ({info['error']}).")
        elif info["gpus"]:
            any_gpu = True
            lines.append(f"{backend} {info['version']} sees {len(info['gpus'])} GPU(s): {', '.join(info['gpus'])}.")
        else:
            lines.append(f"{backend} {info['version']} sees no GPU: it trains on the CPU.")
    return any_gpu, lines or ["No Keras backend (TensorFlow or JAX) is installed: training cannot run here."]


def backend_choices(seen: dict[str, dict] | None = None) -> list[str]:
    """The backends a run can be launched with: installed, and (when probed) usable."""
    if seen is None:
        return installed_backends()
    return [backend for backend, info in seen.items() if not info.get("error")]


# The form's choices a pipeline may refuse (core.training.config.validate): offered per pipeline.
PIPELINE_DEPENDENT = ("mode", "balance", "stain_norm")


def accepted(name: str, pipeline: str) -> list:
    """The choices of TrainConfig field `name` that `pipeline` takes, as core.training.config.validate, the one
    rule, decides (the fields pipeline trains the whole network, balances subtypes itself and jitters the stains
    instead of normalising them): each asked of a
    run that differs from TrainConfig's defaults in nothing else, with folders that exist."""
    here = str(Path.cwd())

    def takes(value) -> bool:
        try:
            validate(TrainConfig(data=here, out="", pipeline=pipeline, synthetic_dir=here, **{name: value}))
        except UserInputError:
            return False
        return True

    return [value for value in choices_of(TrainConfig, name) if takes(value)]


def accepted_balances(pipeline: str) -> list[str]:
    """The --balance strategies `pipeline` takes (none or synthetic for the fields pipeline)."""
    return accepted("balance", pipeline)


def choices(name: str, synthetic_dir: str | None = None, pipeline: str | None = None) -> list:
    """The form's options for a TrainConfig field: its choices (balancing by GAN images only when
    there are GAN images, and with a `pipeline` only the modes, balancing and stain normalisation it takes);
    the named weights for --weights, which also takes a file on the CLI."""
    if name == "weights":
        return list(NAMED_WEIGHTS)
    options = list(choices_of(TrainConfig, name))
    if name not in PIPELINE_DEPENDENT:
        return options
    taken = accepted(name, pipeline) if pipeline else options
    return [o for o in options if o in taken and (name != "balance" or o != "synthetic" or synthetic_dir)]


def default_index(name: str, synthetic_dir: str | None = None, defaults: TrainConfig = DEFAULTS,
                  pipeline: str | None = None) -> int:
    """Where `defaults` (TrainConfig's, or core.training.recipes.launch_defaults') sits in the choices."""
    return choices(name, synthetic_dir, pipeline).index(getattr(defaults, name))


def training_config(values: dict, runs_root, synthetic_dir: str | None = None, name: str = "",
                    now: datetime.datetime | None = None, defaults: TrainConfig = DEFAULTS,
                    backend: str | None = None) -> TrainConfig:
    """The form's values (TrainConfig field -> value) on top of `defaults` as a checked run in
    RUNS_ROOT/NAME (a UserInputError lists every problem); an empty name becomes time-backbone-mode, and a
    name that starts with a dot is refused (".best" would be hidden, ".." would leave RUNS_ROOT).
    What the form does not set comes from `defaults` only for a run of their pipeline: `defaults` are
    a recipe of one pipeline (launch_defaults: the field recipe on a CPU), and its hidden settings (the
    field recipe's dropout 0.3, learning rate 2e-3, band-limited views...) are not the other pipeline's,
    which gets TrainConfig's own (the CLI's). With `backend` (the Keras backend the job will train
    with), a pipeline it cannot run is refused."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TypeError(f"not TrainConfig fields: {unknown}")
    pipeline = values.get("pipeline", defaults.pipeline)
    base = defaults if pipeline == defaults.pipeline else DEFAULTS
    config = dataclasses.replace(base, **{k: int(v) if isinstance(getattr(defaults, k), int)
                                          and not isinstance(v, bool) else v for k, v in values.items()})
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    typed = name.strip()
    name = re.sub(r"[^\w.-]", "_", typed) or f"{stamp}-{config.backbone}-{config.mode}"
    if name.startswith("."):  # the model list skips hidden folders (core.model.folders.find_model_folders)
        made = "" if name == typed else (f" (its folder would be {name!r}: characters other than letters, digits, "
                                         "'.', '-' and '_', such as '/', become '_')")
        raise UserInputError(f"Cannot launch this run: the run name {typed!r} starts with a dot{made}, so its model "
                             "would be hidden from the model list and could never be made the active model. Choose a "
                             "name that does not start with a dot.")
    config = dataclasses.replace(config, data=server_path(config.data), out=str(Path(runs_root) / name),
                                 reviewed_dir=server_path(config.reviewed_dir) or None,
                                 synthetic_dir=synthetic_dir if config.balance == "synthetic" else None)
    problem = backend and backend_problem(backend, config.pipeline)
    if problem:
        raise UserInputError(f"Cannot launch this run: {problem}.")
    validate(config)
    problem = synthetic_problem(config)
    if problem:
        raise UserInputError(problem)
    return config


def synthetic_problem(config: TrainConfig) -> str | None:
    """Why the job would refuse its GAN images (core.data.synthetic.check_synthetic_folder, the check the
    run makes, on the data fingerprint the run compares), in words the form's user can act on; None
    when it would not, or with no GAN fill. A job that would fail so is never started."""
    if config.balance != "synthetic" or not config.synthetic_dir or config.allow_gan_leak:
        return None
    if config.pipeline == "fields":  # core.training.additions.gan_fill: every real image, all magnifications
        from core.training.field_run import data_fingerprint  # the fields pipeline, loaded for it only
        data = data_fingerprint(config.data)
    else:  # core.training.fit.prepare_data: every image of the folder
        data = select_images(config.data, config.split_spec(), report_skipped=False).fingerprint
    try:
        problems = check_synthetic_folder(config.synthetic_dir, data, config.split_spec())
    except UserInputError as unreadable:  # a damaged provenance.json
        problems = [str(unreadable)]
    if not problems:
        return None
    return (f"Cannot launch this run with balancing 'synthetic': the GAN images in {config.synthetic_dir} may have "
            f"been made from this run's validation or test patients ({'; '.join(problems)}). Set Seed, Magnification "
            "and Split protocol to the split their generator learned from, or choose another balancing; or make GAN "
            f"images for this split: `python -m core gan train --data {config.data} --split {config.split} "
            f"--split-seed {config.seed} --magnification {config.magnification} --out GAN_RUN`, then "
            f"`python -m core gan sample --model GAN_RUN/model --subtype SUBTYPE --n N --out FOLDER` per subtype, into "
            "a fresh folder that then replaces this one (BREAKHIS_SYNTHETIC_DIR).")


def images(count, kind: str = "") -> str:
    """'1 image', '457 real images': a count of images in words."""
    return f"{count} {kind}image{'' if count == 1 else 's'}"


def trained_on(card: dict) -> str | None:
    """'457 real + 90 synthetic (GAN) images': what a model's weights learnt from, GAN images apart (None
    when the card does not say). The real ones are its evidence's (distinct real images, either pipeline);
    the GAN ones its 'synthetic' count where it keeps one, else the sum of synthetic_by_subtype."""
    training, real = card.get("training") or {}, (card.get("evidence") or {}).get("images")
    if real is None:
        return None
    synthetic = (training.get("counts") or {}).get("synthetic")
    if synthetic is None:
        synthetic = sum(int(n) for n in (training.get("synthetic_by_subtype") or {}).values())
    return real_and_synthetic(real, synthetic)


def real_and_synthetic(real, synthetic) -> str:
    """'457 real + 90 synthetic (GAN) images', or '457 real images' without GAN images."""
    return f"{real} real + {images(synthetic, 'synthetic (GAN) ')}" if synthetic else images(real, "real ")


def split_sizes(run: dict | None, card: dict | None = None) -> str:
    """What a job's training and 'val_' metrics are computed on, and under which protocol: from the run's
    settings and counts while it trains (its config.json, its start event, the job's settings), and from its
    model card once there is one (GAN images never counted as real ones)."""
    run, card = run or {}, card or {}
    counts = (card.get("training") or {}).get("counts") or run.get("counts") or {}
    train = trained_on(card)
    if train is None and "train" in counts:
        if "synthetic" in counts:  # the run counted its GAN images apart: counts['train'] are real
            train = real_and_synthetic(counts["train"], counts["synthetic"])
        else:
            train = images(counts["train"]) + (", with GAN fill" if run.get("balance") == "synthetic" else "")
    train = f" ({train})" if train else ""
    val = f" ({images(counts['val'])})" if "val" in counts else ""
    protocol = split_protocol(card, run)
    if run.get("folds") or "cross-validation" in str(protocol):  # a cross-validation: its k + 1 trainings
        if "cross-validation" not in str(protocol):  # while it trains, its settings say the protocol and the folds
            protocol = f"{protocol or 'patient-wise'} {run['folds']}-fold cross-validation, pooled out-of-fold"
        return (f"Training metrics: each fold model's on its own training patients, then the final model's on every "
                f"patient{train}; the evaluation is the pooled out-of-fold predictions; {protocol} protocol.")
    return (f"Training metrics on the training split{train}, 'val_' metrics on the validation split{val}"
            + (f"; {protocol} protocol." if protocol else "."))


def progress_text(state: dict) -> str:
    """The live bar's words (core.training.progress.latest_state): the epoch and step of the training
    running now, and in a run of several (a cross-validation's folds, then its final model) which one."""
    if not state["epochs"]:
        return "Training: starting"
    step = f", step {state['step']} of {state['steps']}" if state["steps"] else ""
    text = f"epoch {state['epoch']} of {state['epochs']}{step}"
    total = state.get("total_epochs") or 0
    if total > state["epochs"] and state.get("phase"):
        text = f"{state['phase']}, {text} ({total} epochs in all)"
    return f"Training: {text}"


STOP_OUTSIDE_HELP = ("Sends the training's process SIGTERM, as Cancel does for a job started here: it stops after its "
                     "current step and its progress stream ends \"cancelled\". Someone else may have started it: "
                     "the audit trail records who stopped it.")


def outside_run_progress(folder) -> dict | None:
    """How far a training started from the command line is (core.training.progress.latest_state of its run
    folder's progress stream), None before its first event: the page follows it there (and may stop it,
    core.app.jobs.stop_outside_run)."""
    state = latest_state(read_progress(Path(folder) / "progress.jsonl"))
    return None if state["status"] == "not started" else state


def curve_rows(history: list[dict]) -> tuple[str | None, list[dict]]:
    """(a caption or None, the epochs to plot): the training running now, or the run's last (a
    cross-validation's final model); each training of a run starts again at epoch 1."""
    phase, rows = phase_history(history)
    several = len({row.get("phase") for row in history}) > 1
    return (f"Learning curves of {phase} (each training of this run starts again at epoch 1)." if several
            else None), rows


def evaluation_heading(metrics: dict) -> str:
    """The finished run's evaluation heading: its held-out test split, or a cross-validation's pooled
    out-of-fold predictions (what its figures, calibration and referral thresholds come from)."""
    if split_name(metrics.get("data")) == "out-of-fold":
        return ("Evaluation on the pooled out-of-fold predictions (every patient tested once, by a fold model that "
                "never saw it)")
    return "Evaluation on the held-out test split"


def session_only(run_dir: str) -> str:
    """What "Make this the active model" changes, and the audited way to the server's default (README,
    "Promoting a trained model"): make-default installs a fields cross-validation with its final model (a
    run with cv.json); a single run is first cross-validated with its settings."""
    if (Path(run_dir) / "cv.json").is_file():
        way = (f"`python -m core make-default --from-run {run_dir} --force` on the server installs this "
               "cross-validation's final model (audited; the replaced default is kept).")
    else:
        way = ("cross-validate this run's settings first (this form's cross-validation folds, or `python -m core train "
               "--pipeline fields --folds 5 --data DATA --out runs/NAME-cv` plus its options), then `python -m core "
               "make-default --from-run runs/NAME-cv --force` (audited; the replaced default is kept).")
    return ("For your session only: other users, and every session that starts later, keep the server's default "
            f"model. To make it the default: {way} README: \"Promoting a trained model\".")


def server_path(text: str | None) -> str:
    """A folder typed into the form as the run will use it: stripped, and `~` expanded here, once, as
    core.data.breakhis.folder_problem reads it (the job's `python -m core train` gets no shell to do it)."""
    text = str(text or "").strip()
    return str(Path(text).expanduser()) if text else ""


def job_caption(job) -> str:
    """A job's (core.app.jobs.Job) line above its view: its run, who started it and when (UTC), its settings;
    a second admin sees whose training Cancel would stop. Plain text: the page escapes it (an account name, a
    folder are not Markdown)."""
    when = datetime.datetime.fromtimestamp(job.started, datetime.UTC).strftime("%Y-%m-%d %H:%M")
    who = f" by {job.launched_by}" if job.launched_by else ""
    return (f"Job {Path(job.run_dir).name}, started{who} at {when} UTC: "
            + ", ".join(f"{k} {v}" for k, v in job.settings.items()))


def shown_settings(config: TrainConfig) -> dict:
    """The settings a job's caption lists, taken from the run itself (the folds of a cross-validation)."""
    return {name: getattr(config, name) for name in SHOWN} | ({"folds": config.folds} if config.folds else {})
