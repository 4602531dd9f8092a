"""Train the texture GAN the Keras way: a keras.Model with train_step, compile(loss=...) and fit().

    python -m core gan train --data DIR --out runs/gan-NAME --steps 6000 [--resume]

The shape is keras-io's DCGAN example (a Model holding both networks, its own train_step and a
compile that takes two optimisers and the loss); its exponential moving average of the generator
follows keras-io's DDIM example. Everything around a step is a callback: checkpoints (resumable
with --resume), sample grids, the progress stream (core.training.progress), and a stop request
(SIGTERM from the CLI). Real patches come from core.gan.patches, at one physical scale.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.data.pipeline import fit_normalizer
from core.data.selection import select_images
from core.errors import UserInputError
from core.gan.augment import diff_augment
from core.gan.model import UPSCALE, GanConfig, build_discriminator, build_generator
from core.gan.patches import PatchSampler, holdout_split, load_fields
from core.gan.sampling import field_px, noise_map, save_sample_grid
from core.jsonfile import read_json, write_json_atomic
from core.model.folders import GENERATOR, save_model_folder
from core.paths import portable
from core.training.progress import ProgressWriter, keras_callback

MARGIN = 1  # noise cells drawn beyond a training patch on each side; the patch is a random crop of the larger canvas
CHECKPOINT = "checkpoint.weights.h5"


def _hinge(d_real, d_fake):
    return tf.reduce_mean(tf.nn.relu(1.0 - d_real)) + tf.reduce_mean(tf.nn.relu(1.0 + d_fake)), -tf.reduce_mean(d_fake)


def _non_saturating(d_real, d_fake):
    return (tf.reduce_mean(tf.nn.softplus(-d_real)) + tf.reduce_mean(tf.nn.softplus(d_fake)),
            tf.reduce_mean(tf.nn.softplus(-d_fake)))


ADVERSARIAL_LOSSES = {"hinge": _hinge, "non_saturating": _non_saturating}  # -> (discriminator, generator) loss


class TextureGAN(keras.Model):
    """Generator, discriminator and the generator's moving average; one step updates D, then G.

    The generator draws a canvas MARGIN noise cells larger than the patch on every side and the
    discriminator sees a random patch-size crop of it, so patch borders are trained like interiors:
    a field-size canvas from the same network then has no seams or frame.
    """

    def __init__(self, config: GanConfig, generator, discriminator, ema_generator, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.generator, self.discriminator, self.ema_generator = generator, discriminator, ema_generator
        self.ema_generator.trainable = False
        self.ema_generator.set_weights(self.generator.get_weights())
        self.built = True  # its networks are built Functional models
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("d_loss", "g_loss", "d_real", "d_fake")}

    def compile(self, g_optimizer, d_optimizer, loss: str = "hinge", **kwargs):
        # The generator's optimiser is the model's `optimizer`: what Keras callbacks read a learning rate from.
        super().compile(optimizer=g_optimizer, **kwargs)
        if loss not in ADVERSARIAL_LOSSES:
            raise UserInputError(f"Unknown GAN loss {loss!r}; choose one of {list(ADVERSARIAL_LOSSES)}")
        self.g_optimizer, self.d_optimizer, self.adversarial_loss = g_optimizer, d_optimizer, ADVERSARIAL_LOSSES[loss]
        self.g_optimizer.build(self.generator.trainable_variables)
        self.d_optimizer.build(self.discriminator.trainable_variables)

    @property
    def metrics(self):
        return list(self.trackers.values())

    @property
    def steps_done(self) -> int:
        return int(self.g_optimizer.iterations.numpy())

    def call(self, inputs, training=False):
        return self.ema_generator(inputs, training=training)

    def _fakes(self, labels, seed):
        """Generated patches: a canvas with MARGIN extra cells, cropped at a random offset."""
        size, batch = self.config.image_size, tf.shape(labels)[0]
        cells = size // UPSCALE + 2 * MARGIN
        noise = tf.random.stateless_normal([batch, cells, cells, self.config.latent_dim], seed)
        canvas = self.generator([noise, labels], training=True)
        offset = tf.random.stateless_uniform([2], seed + 1, 0, 2 * MARGIN * UPSCALE + 1, tf.int32)
        patch = canvas[:, offset[0]:offset[0] + size, offset[1]:offset[1] + size]
        return tf.ensure_shape(tf.cast(patch, tf.float32), [None, size, size, 3])

    def train_step(self, data):
        real, labels = data
        real = tf.cast(real, tf.float32) / 127.5 - 1.0  # uint8 patches -> [-1, 1]
        step = tf.cast(self.g_optimizer.iterations, tf.int32)
        seeds = tf.random.experimental.stateless_split(tf.stack([step, tf.constant(self.config.seed)]), 5)
        with tf.GradientTape() as tape:
            fake = self._fakes(labels, seeds[0])
            d_real = tf.cast(self.discriminator([diff_augment(real, seeds[1]), labels], training=True), tf.float32)
            d_fake = tf.cast(self.discriminator([diff_augment(fake, seeds[2]), labels], training=True), tf.float32)
            d_loss, _ = self.adversarial_loss(d_real, d_fake)
            scaled = self.d_optimizer.scale_loss(d_loss)
        grads = tape.gradient(scaled, self.discriminator.trainable_variables)
        self.d_optimizer.apply(grads, self.discriminator.trainable_variables)
        with tf.GradientTape() as tape:
            fake = self._fakes(labels, seeds[3])
            d_fake_g = tf.cast(self.discriminator([diff_augment(fake, seeds[4]), labels], training=True), tf.float32)
            _, g_loss = self.adversarial_loss(d_real, d_fake_g)
            scaled = self.g_optimizer.scale_loss(g_loss)
        grads = tape.gradient(scaled, self.generator.trainable_variables)
        self.g_optimizer.apply(grads, self.generator.trainable_variables)
        # Warm-up (as in TF's ExponentialMovingAverage num_updates): early on the average follows fast.
        iterations = tf.cast(self.g_optimizer.iterations, tf.float32)
        decay = tf.minimum(self.config.ema, (1.0 + iterations) / (10.0 + iterations))
        for average, weight in zip(self.ema_generator.weights, self.generator.weights):
            average.assign(decay * average + (1.0 - decay) * tf.cast(weight, average.dtype))
        for name, value in (("d_loss", d_loss), ("g_loss", g_loss), ("d_real", tf.reduce_mean(d_real)),
                            ("d_fake", tf.reduce_mean(d_fake))):
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}


class PatchBatches(keras.utils.PyDataset):
    """Batch i of the run is drawn from rng(seed, i) whatever came before, so a resumed run sees
    the same batches it would have seen uninterrupted. Draws are consumed in order."""

    def __init__(self, sampler: PatchSampler, config: GanConfig, first_step: int):
        super().__init__()
        self.sampler, self.config, self.drawn = sampler, config, first_step

    def __len__(self):
        return self.config.checkpoint_every

    def __getitem__(self, index):
        rng = np.random.default_rng([self.config.seed, self.drawn])
        self.drawn += 1
        return self.sampler.batch(rng, self.config.batch_size)


class RunCallbacks(keras.callbacks.Callback):
    """Checkpoints every checkpoint_every steps and at the end, sample grids, the step limit and
    stop requests (checked after each step; the generator is saved as it stands)."""

    def __init__(self, config: GanConfig, out_dir: Path, stop):
        super().__init__()
        self.config, self.out_dir, self.stop, self.cancelled = config, out_dir, stop, False
        self.fixed_noise = noise_map(config.seed + 12345, 8, config.image_size, config.image_size, config.latent_dim)

    def on_train_batch_end(self, batch, logs=None):
        step = self.model.steps_done
        if step % self.config.checkpoint_every == 0:
            self.model.save_weights(self.out_dir / CHECKPOINT)
        if step % self.config.sample_every == 0 or step == self.config.steps:
            save_sample_grid(self.model.ema_generator, self.config.subtypes, self.fixed_noise,
                             self.out_dir / "samples" / f"step_{step:06d}.png")
        if step >= self.config.steps:
            self.model.stop_training = True
        elif self.stop():
            self.cancelled = self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.model.save_weights(self.out_dir / CHECKPOINT)


def build_gan(config: GanConfig) -> TextureGAN:
    """The compiled GAN (Adam with beta_1 0, as BigGAN; mixed precision on a GPU)."""
    gpu = bool(tf.config.list_physical_devices("GPU"))
    precision = config.precision if config.precision != "auto" else ("mixed_float16" if gpu else "float32")
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


def train_gan(config: GanConfig, data_dir, out_dir, resume: bool = False, stop=lambda: False) -> Path:
    """Train (or resume up to config.steps) a GAN; returns the generator folder out_dir/model.

    Progress goes to out_dir/progress.jsonl in the classifier's format (start, then Keras epochs of
    checkpoint_every steps, end). A failure writes "error" and a failed "end", then raises.
    """
    out_dir, config_path = Path(out_dir), Path(out_dir) / "config.json"
    if config_path.exists() and not resume:
        raise UserInputError(f"{out_dir} already holds a GAN run; pass --resume or choose another --out")
    if resume:
        if not config_path.exists():
            raise UserInputError(f"Nothing to resume in {out_dir} (no config.json)")
        config = dataclasses.replace(GanConfig.from_dict(read_json(config_path)), steps=config.steps)
    write_json_atomic(config_path, dataclasses.asdict(config))
    progress = ProgressWriter(out_dir / "progress.jsonl")
    try:
        return _run(config, data_dir, out_dir, progress, stop)
    except Exception as error:
        progress.emit("error", message=f"{type(error).__name__}: {error}")
        progress.emit("end", status="failed", message=str(error))
        raise


def _run(config: GanConfig, data_dir, out_dir: Path, progress: ProgressWriter, stop) -> Path:
    normalizer = fit_normalizer(config.stain_norm, training_images(data_dir, config)[0], config.seed)
    train, held, fingerprint = training_fields(data_dir, config, normalizer)
    # The same config gives the same networks whatever ran before in the process.
    keras.utils.set_random_seed(config.seed)
    gan = build_gan(config)
    if (out_dir / CHECKPOINT).exists():
        gan.load_weights(out_dir / CHECKPOINT)
    step = start_step = gan.steps_done
    by_subtype = {s: train.count(s) for s in config.subtypes}
    progress.emit("start", step=step, steps=config.steps, epochs=math.ceil(config.steps / config.checkpoint_every),
                  images_by_subtype=by_subtype, message=(
                      f"GAN {config.name}: {len(train.paths)} fields at {config.mpp} um/px ({len(held.paths)} held out, "
                      f"{len(train.skipped)} not usable), {config.image_size}-px patches, {gan.precision}, "
                      f"from step {step}"))
    started, callbacks = time.time(), RunCallbacks(config, out_dir, stop)
    history = None
    if step < config.steps:
        epochs = math.ceil(config.steps / config.checkpoint_every)
        history = gan.fit(PatchBatches(PatchSampler(train, config.image_size, config.subtypes), config, step),
                          initial_epoch=step // config.checkpoint_every, epochs=epochs, shuffle=False, verbose=0,
                          callbacks=[callbacks, keras_callback(progress, epochs, config.checkpoint_every,
                                                               f"GAN {config.name}", min_interval=0.0)])
    step = gan.steps_done
    metrics = {k: float(v[-1]) for k, v in history.history.items()} if history and history.history else {}
    card = {"name": config.name, "image_size": config.image_size, "latent_dim": config.latent_dim,
            "mpp": config.mpp, "upscale": UPSCALE, "field_px": list(field_px(config.mpp)),
            "subtypes": list(config.subtypes), "precision": gan.precision, "config": dataclasses.asdict(config),
            "stain_normalization": normalizer.to_dict(),
            "training": {"data_source": portable(data_dir), "data_fingerprint": fingerprint,
                         "split": config.split_spec().label, "split_spec": config.split_spec().to_dict(),
                         "images_by_subtype": by_subtype, "held_out_images": sorted(Path(p).name for p in held.paths),
                         "not_used": {Path(p).name: why for p, why in train.skipped.items()},
                         "steps": step, "resumed_from_step": start_step,
                         "seconds_this_session": round(time.time() - started, 1)}}
    model_dir = save_model_folder(gan.ema_generator, out_dir / "model", card, kind=GENERATOR)  # float32 weights
    status = "cancelled" if callbacks.cancelled else "completed"
    progress.emit("end", status=status, step=step, steps=config.steps, metrics=metrics, model_dir=str(model_dir))
    return model_dir
