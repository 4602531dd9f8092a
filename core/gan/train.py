"""Train the texture GAN the Keras way: a keras.Model with train_step (core.gan.adversarial), fit().

    python -m core gan train --data DIR --out runs/gan-NAME --steps 6000 [--resume]

The shape is keras-io's DCGAN example (a Model holding both networks, its own train_step and a
compile that takes two optimisers and the loss); its exponential moving average of the generator
follows keras-io's DDIM example. It runs under Keras' TensorFlow or JAX backend. Everything around
a step is a callback: checkpoints (resumable with --resume), sample grids, the progress stream
(core.training.progress), and a stop request (SIGTERM from the CLI). Real patches come from core.gan.patches, at one physical scale.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import keras
import numpy as np

from core.backends import current_backend, probe, set_seed
from core.data.selection import select_images
from core.data.stain_reference import fit_normalizer
from core.errors import UserInputError
from core.gan.adversarial import TextureGAN
from core.gan.model import RESUMABLE, UPSCALE, GanConfig, build_discriminator, build_generator, noise_channels
from core.gan.patches import PatchSampler, holdout_split, load_fields
from core.gan.sampling import field_px, noise_map, save_sample_grid
from core.gan.sessions import SessionLog
from core.jsonfile import read_json, write_json_atomic
from core.model.folders import GENERATOR, save_model_folder
from core.options import flag
from core.paths import holding, portable
from core.training.progress import ProgressWriter, keras_callback, metric_floats

CHECKPOINT = "checkpoint.weights.h5"


class PatchBatches(keras.utils.PyDataset):
    """Batch i of the run is drawn from rng(seed, i) whatever came before, so a resumed run sees
    the same batches it would have seen uninterrupted. Draws are consumed in order. An epoch is
    `length` steps: checkpoint_every, or a resumed run's first epoch up to the next checkpoint."""

    def __init__(self, sampler: PatchSampler, config: GanConfig, first_step: int, length: int):
        super().__init__()
        self.sampler, self.config, self.drawn, self.length = sampler, config, first_step, length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        rng = np.random.default_rng([self.config.seed, self.drawn])
        self.drawn += 1
        return self.sampler.batch(rng, self.config.batch_size)


class RunCallbacks(keras.callbacks.Callback):
    """Checkpoints every checkpoint_every steps and at the end, sample grids, the step limit, stop
    requests (checked after each step; the generator is saved as it stands) and the progress "step"
    events: every log_every steps of the run and at its last step, completed or stopped."""

    def __init__(self, config: GanConfig, out_dir: Path, stop, progress: ProgressWriter, sessions: SessionLog):
        super().__init__()
        self.config, self.out_dir, self.stop, self.cancelled = config, out_dir, stop, False
        self.progress, self.sessions = progress, sessions
        self.fixed_noise = noise_map(config.seed + 12345, 8, config.image_size, config.image_size,
                                     noise_channels(config))

    def on_train_begin(self, logs=None):
        self.step = self.model.steps_done

    def _sync(self):
        # A JAX fit keeps the weights out of the model between epochs; bring them back before reading them.
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()

    def on_train_batch_end(self, batch, logs=None):
        self.step = step = self.step + 1  # counted here: reading the optimiser would sync JAX state every step
        if step % self.config.checkpoint_every == 0:
            self._sync()
            self.model.save_weights(self.out_dir / CHECKPOINT)
            self.sessions.save(step)  # the steps a kill from now on keeps, and their time
        if step % self.config.sample_every == 0 or step == self.config.steps:
            self._sync()
            save_sample_grid(self.model.ema_generator, self.config.subtypes, self.fixed_noise,
                             self.out_dir / "samples" / f"step_{step:06d}.png")
        if step >= self.config.steps:
            self.model.stop_training = True
        elif self.stop():
            self.cancelled = self.model.stop_training = True
        if step % self.config.log_every == 0 or self.model.stop_training:  # reading the logs syncs JAX state
            every = self.config.checkpoint_every  # the step's place in its epoch, the run's steps in checkpoint_every
            self.progress.emit("step", step=(step - 1) % every + 1, steps=every, metrics=metric_floats(logs),
                               message=f"GAN {self.config.name}")

    def on_train_end(self, logs=None):
        self._sync()
        self.model.save_weights(self.out_dir / CHECKPOINT)


def gan_precision(requested: str) -> str:
    """auto: mixed precision where the backend sees a GPU (float16 with loss scaling under
    TensorFlow, bfloat16 under JAX, whose stateless step has no loss scale), else float32."""
    backend = current_backend()
    if requested == "mixed_float16" and backend == "jax":
        raise UserInputError("mixed_float16 needs a loss scale, which the GAN's JAX step does not keep: "
                             "use --precision mixed_bfloat16 (or auto) under JAX")
    if requested != "auto":
        return requested
    if not probe(backend)["gpus"]:
        return "float32"
    return "mixed_bfloat16" if backend == "jax" else "mixed_float16"


def build_gan(config: GanConfig) -> TextureGAN:
    """The compiled GAN (Adam with beta_1 0, as BigGAN; mixed precision on a GPU)."""
    precision = gan_precision(config.precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)  # only while building the trained networks
    try:
        generator, discriminator = build_generator(config), build_discriminator(config)
    finally:
        keras.config.set_dtype_policy(previous)
    # The average is float32: the saved generator is the same on any machine.
    gan = TextureGAN(config, generator, discriminator, build_generator(config))
    optimizers = [keras.optimizers.Adam(lr, beta_1=0.0, beta_2=0.99) for lr in (config.lr_g, config.lr_d)]
    if precision == "mixed_float16":
        optimizers = [keras.optimizers.LossScaleOptimizer(o) for o in optimizers]
    gan.compile(*optimizers, loss=config.loss)
    gan.precision = precision
    return gan


def training_images(data_dir, config: GanConfig):
    """(real images the GAN may learn from, the data's fingerprint): the chosen subtypes of the
    classifier's train split, selected exactly as classifier training selects them."""
    selection = select_images(data_dir, config.split_spec(), report_skipped=False)
    images = selection.part("train")
    images = images[images["subtype"].isin(config.subtypes)]
    missing = sorted(set(config.subtypes) - set(images["subtype"]))
    if missing:
        raise UserInputError(f"No training images for subtypes {missing} in {data_dir}")
    return images.reset_index(drop=True), selection.fingerprint


def training_fields(data_dir, config: GanConfig, normalizer=None):
    """(fields to train on, held-out fields, data fingerprint) at config.mpp."""
    images, fingerprint = training_images(data_dir, config)
    fields = load_fields(images, config.mpp, config.image_size, normalizer)
    unusable = [s for s in config.subtypes if not fields.count(s)]
    if unusable:
        raise UserInputError(f"No usable training images for subtypes {unusable} at {config.mpp} um/px "
                             f"(unreadable, unknown magnification, coarser than the scale, or too small); "
                             "leave them out (--subtypes) or choose another --mpp")
    train, held = holdout_split(fields, config.holdout, config.seed)
    return train, held, fingerprint


def data_record(data_dir, config: GanConfig) -> dict:
    """What a run learns from: the folder as given and its fingerprint (core.data.selection), which
    with the config's split fixes the images. Kept in config.json, so --resume can refuse other data."""
    selection = select_images(data_dir, config.split_spec(), report_skipped=False)
    return {"source": str(data_dir), "fingerprint": selection.fingerprint}


def _data_shown(record: dict) -> str:
    return f"{record.get('source')} (fingerprint {record.get('fingerprint')})"


def resumed_config(saved: GanConfig, config: GanConfig, given, out_dir, data=None) -> GanConfig:
    """The saved run's config with the given RESUMABLE options of `config` applied. Any other given
    option that differs from the run's is refused, all of them named: it was silently dropped. `data`:
    (the run's data_record, the given one); another data set is refused too (a resumed run trained on
    it, then its card claimed a split whose val/test patients it had learned from)."""
    differ = [(_option_name(name), _shown(getattr(saved, name)), _shown(getattr(config, name)))
              for name in given if name not in RESUMABLE and getattr(config, name) != getattr(saved, name)]
    if data and data[0] and data[0].get("fingerprint") != data[1]["fingerprint"]:
        differ.append(("--data", _data_shown(data[0]), _data_shown(data[1])))
    if differ:
        raise UserInputError(
            f"Cannot resume {out_dir} with other settings than it began with: "
            + "; ".join(f"{name}: saved {saved_value}, given {given_value}" for name, saved_value, given_value in differ)
            + ". Leave them out (give --data the run's own data set) to continue the run, or choose a new --out "
            f"to train with them (a resumed run may change only {', '.join(_option_name(name) for name in RESUMABLE)})")
    return dataclasses.replace(saved, **{name: getattr(config, name) for name in given if name in RESUMABLE})


def _option_name(name: str) -> str:
    default = getattr(GanConfig, name, None)
    return f"{flag(name, default)} ({name})" if isinstance(default, bool) else flag(name)


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def train_gan(config: GanConfig, data_dir, out_dir, resume: bool = False, stop=lambda: False,
              given=("steps",), command: str | None = None) -> Path:
    """Train (or resume) a GAN; returns the generator folder out_dir/model.

    `given`: the fields of `config` its caller chose (the CLI: the options on its command line). A
    resumed run keeps its saved config but for the given RESUMABLE ones, and refuses other given ones
    that differ (resumed_config). `command`: what was typed, kept with this session's seconds and
    machine in out_dir/sessions.json and the card (core.gan.sessions). Progress goes to
    out_dir/progress.jsonl in the classifier's format (start, then Keras epochs of checkpoint_every
    steps, end). A failure writes "error" and a failed "end", then raises.
    """
    with holding(out_dir, hint="wait for it to end, or choose another --out"):  # one writer; the Retrain page sees it
        return _train_gan(config, data_dir, Path(out_dir), resume, stop, given, command)


def _train_gan(config: GanConfig, data_dir, out_dir: Path, resume, stop, given, command) -> Path:
    config_path = out_dir / "config.json"
    if config_path.exists() and not resume:
        raise UserInputError(f"{out_dir} already holds a GAN run; pass --resume or choose another --out")
    if resume:
        if not config_path.exists():
            raise UserInputError(f"Nothing to resume in {out_dir} (no config.json)")
        try:
            values = read_json(config_path)
            saved = GanConfig.from_dict(values)
        except (OSError, UnicodeDecodeError, TypeError, ValueError, AttributeError) as error:  # damaged or edited
            raise UserInputError(f"Cannot resume: {config_path} is not a GAN run's config ({error})") from None
        data = data_record(data_dir, saved)
        config = resumed_config(saved, config, given, out_dir, (_saved_data(values, out_dir), data))
        total = saved.steps
    else:
        data, total = None, config.steps
    gan_precision(config.precision)  # a precision this backend cannot train in fails before any work
    data = data or data_record(data_dir, config)  # a new run's data are read after that check
    # A lower total is recorded only once this session trains to it (_run): --steps at or below the
    # steps done only writes the generator, and a later plain --resume still goes on to the run's total.
    write_json_atomic(config_path, {**dataclasses.asdict(dataclasses.replace(config, steps=max(config.steps, total))),
                                    "data": data})
    progress = ProgressWriter(out_dir / "progress.jsonl")
    try:
        return _run(config, data_dir, out_dir, progress, stop, total, command)
    except Exception as error:
        progress.emit("error", message=f"{type(error).__name__}: {error}")
        progress.emit("end", status="failed", message=str(error))
        raise


def _saved_data(values: dict, out_dir: Path) -> dict | None:
    """The run's data_record; a run saved before config.json kept it has it only in its card."""
    if isinstance(values.get("data"), dict):
        return values["data"]
    try:
        training = read_json(out_dir / "model" / "card.json")["training"]
        return {"source": training["data_source"], "fingerprint": training["data_fingerprint"]}
    except (OSError, ValueError, TypeError, KeyError):  # no generator written yet: nothing to compare
        return None


def _run(config: GanConfig, data_dir, out_dir: Path, progress: ProgressWriter, stop, total: int,
         command: str | None = None) -> Path:
    """One session of the run; `total`: the run's own steps to reach, which config.steps (this
    session's) replaces only if the session trains (config.steps above the steps done)."""
    normalizer = fit_normalizer(config.stain_norm, training_images(data_dir, config)[0], config.seed)
    train, held, fingerprint = training_fields(data_dir, config, normalizer)
    # The same config gives the same networks whatever ran before in the process.
    set_seed(config.seed)
    gan = build_gan(config)
    if (out_dir / CHECKPOINT).exists():
        gan.load_weights(out_dir / CHECKPOINT)
        gan.resume_randomness(gan.steps_done)
    step = start_step = gan.steps_done
    trains = step < config.steps
    if trains and config.steps < total:
        config_path = out_dir / "config.json"
        write_json_atomic(config_path, {**read_json(config_path), "steps": config.steps})
    by_subtype = {s: train.count(s) for s in config.subtypes}
    progress.emit("start", step=step, steps=config.steps, epochs=math.ceil(config.steps / config.checkpoint_every),
                  images_by_subtype=by_subtype, message=(
                      f"GAN {config.name}: {len(train.paths)} fields at {config.mpp} um/px ({len(held.paths)} held out, "
                      f"{len(train.skipped)} not usable), {config.image_size}-px patches, {gan.precision}, "
                      f"from step {step}"))
    sessions = SessionLog(out_dir, step, command)
    callbacks = RunCallbacks(config, out_dir, stop, progress, sessions)
    history = None
    if trains:
        every, sampler = config.checkpoint_every, PatchSampler(train, config.image_size, config.subtypes)
        epochs = math.ceil(config.steps / every)
        # A run stopped between checkpoints (a cancel, or --steps off the grid) resumes with a short first epoch up
        # to the next checkpoint, so that epoch k is always the run's steps (k-1)*every+1 .. k*every.
        parts = [(step // every, step // every + 1, every - step % every)] if step % every else []
        parts.append((math.ceil(step / every), epochs, every))
        for first, last, length in parts:
            if first < last and not callbacks.cancelled and gan.steps_done < config.steps:
                history = gan.fit(PatchBatches(sampler, config, gan.steps_done, length), initial_epoch=first,
                                  epochs=last, shuffle=False, verbose=0,
                                  # The epoch events; the step events come from RunCallbacks, on the run's log_every.
                                  callbacks=[callbacks, keras_callback(progress, epochs, length, f"GAN {config.name}",
                                                                       min_interval=math.inf)])
    step = gan.steps_done
    sessions.save(step)
    metrics = {k: float(v[-1]) for k, v in history.history.items()} if history and history.history else {}
    run_config = config if trains else dataclasses.replace(config, steps=max(total, step))  # the run's own total
    card = {"name": config.name, "image_size": config.image_size, "latent_dim": config.latent_dim,
            "mpp": config.mpp, "upscale": UPSCALE, "field_px": list(field_px(config.mpp)),
            "subtypes": list(config.subtypes), "precision": gan.precision, "config": dataclasses.asdict(run_config),
            "stain_normalization": normalizer.to_dict(),
            "training": {"data_source": portable(data_dir), "data_fingerprint": fingerprint,
                         "split": config.split_spec().label, "split_spec": config.split_spec().to_dict(),
                         "images_by_subtype": by_subtype, "held_out_images": sorted(Path(p).name for p in held.paths),
                         "not_used": {Path(p).name: why for p, why in train.skipped.items()},
                         "steps": step, "resumed_from_step": start_step, **sessions.card_block()}}
    model_dir = save_model_folder(gan.ema_generator, out_dir / "model", card, kind=GENERATOR)  # float32 weights
    status = "cancelled" if callbacks.cancelled else "completed"
    progress.emit("end", status=status, step=step, steps=config.steps, metrics=metrics, model_dir=str(model_dir))
    return model_dir
