"""Train the conditional GAN on random patches of real images: hinge loss, DiffAugment, EMA.

    python -m core gan train --data DIR --out runs/gan-NAME --subtypes adenosis phyllodes_tumor --steps 5000

Real patches come from the classifier's own image selection (core.data.selection), decoding
(core.data.images) and resize (core.data.preprocess); with crop scale 1.0 a patch is exactly the
classifier's view of the whole field. The saved generator is a model folder (core.model.folders,
kind "gan_generator") whose card records the split and the data fingerprint it learned from.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.data.labels import SUBTYPES
from core.data.pipeline import fit_normalizer
from core.data.preprocess import to_model_input
from core.data.selection import select_images
from core.errors import UserInputError
from core.gan.model import GROUP, GanConfig, build_discriminator, build_generator, diff_augment
from core.gan.sampling import noise_for, save_sample_grid
from core.jsonfile import read_json, write_json_atomic
from core.model.folders import GENERATOR, save_model_folder
from core.paths import portable
from core.training.progress import ProgressWriter


def real_patches(images, config: GanConfig, seed: int = 0, normalizer=None):
    """Random crops of each image -> (uint8 patches [N,S,S,3], subtype indices [N], source paths).

    A crop keeps the field's aspect ratio (side = scale x field) and is resized by the one resize,
    so crop scale 1.0 reproduces exactly what the classifier sees. A stain normaliser
    (core.data.stain, the classifier's own kind) is applied to each whole field before cropping.
    """
    from core.data.images import ImageError, load_image

    rng = np.random.default_rng(seed)
    patches, labels, sources = [], [], []
    for row in images.itertuples(index=False):
        try:
            rgb = load_image(row.path, check_histology=False).rgb  # known dataset images: skip the check
        except ImageError as error:
            print(f"WARNING: skipping {row.path}: {error}", file=sys.stderr)
            continue
        if normalizer is not None:
            rgb = normalizer(rgb)[0]
        height, width = rgb.shape[:2]
        for _ in range(config.patches_per_image):
            scale = rng.uniform(*config.crop_scale)
            h, w = max(8, int(height * scale)), max(8, int(width * scale))
            top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            crop = rgb[top:top + h, left:left + w]
            patches.append(np.round(to_model_input(crop, config.image_size).numpy()).astype(np.uint8))
            labels.append(SUBTYPES.index(row.subtype))
            sources.append(row.path)
    if not patches:
        raise UserInputError("No readable images to make patches from")
    return np.stack(patches), np.array(labels, np.int32), sources


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


class GanTrainer:
    """Models, optimisers, checkpoint and the jitted hinge-loss step."""

    def __init__(self, config: GanConfig, checkpoint_dir: Path):
        self.config = config
        gpu = bool(tf.config.list_physical_devices("GPU"))
        self.precision = config.precision if config.precision != "auto" else (
            "mixed_float16" if gpu else "float32")
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.precision)  # only while building these two models
        try:
            self.generator, self.discriminator = build_generator(config), build_discriminator(config)
        finally:
            keras.config.set_dtype_policy(previous)
        self.g_opt, self.d_opt = (keras.optimizers.Adam(lr, beta_1=0.0, beta_2=0.99)
                                  for lr in (config.lr_g, config.lr_d))
        if self.precision == "mixed_float16":
            self.g_opt = keras.optimizers.LossScaleOptimizer(self.g_opt)
            self.d_opt = keras.optimizers.LossScaleOptimizer(self.d_opt)
        self.g_opt.build(self.generator.trainable_variables)
        self.d_opt.build(self.discriminator.trainable_variables)
        # Exponential moving average of the generator (float32, the one saved and sampled): GAN
        # weights oscillate, and the average is smoother and more faithful than any single step.
        self.average = build_generator(config)
        self.average.set_weights(self.generator.get_weights())
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        checkpoint = tf.train.Checkpoint(generator=self.generator, discriminator=self.discriminator,
                                         average=self.average, g_opt=self.g_opt, d_opt=self.d_opt, step=self.step)
        self.manager = tf.train.CheckpointManager(checkpoint, str(checkpoint_dir), max_to_keep=2)

    def restore(self) -> int:
        if self.manager.latest_checkpoint:
            self.manager.checkpoint.restore(self.manager.latest_checkpoint).expect_partial()
        return int(self.step.numpy())

    @tf.function
    def train_step(self, real, labels):
        """One discriminator and one generator update; real in [-1, 1]."""
        batch = tf.shape(real)[0]
        seed = tf.stack([tf.cast(self.step, tf.int32), tf.constant(self.config.seed)])
        seeds = tf.random.experimental.stateless_split(seed, 5)
        noise = tf.random.stateless_normal([batch, self.config.latent_dim], seeds[0])
        with tf.GradientTape() as tape:
            fake = self.generator([noise, labels], training=True)
            d_real = self.discriminator([diff_augment(real, seeds[1]), labels], training=True)
            d_fake = self.discriminator([diff_augment(fake, seeds[2]), labels], training=True)
            d_loss = tf.reduce_mean(tf.nn.relu(1.0 - d_real)) + tf.reduce_mean(tf.nn.relu(1.0 + d_fake))
            scaled = self.d_opt.scale_loss(d_loss)
        grads = tape.gradient(scaled, self.discriminator.trainable_variables)
        self.d_opt.apply(grads, self.discriminator.trainable_variables)
        noise = tf.random.stateless_normal([batch, self.config.latent_dim], seeds[3])
        other_noise = tf.random.stateless_normal([batch, self.config.latent_dim], seeds[4])
        with tf.GradientTape() as tape:
            fake = self.generator([noise, labels], training=True)
            d_fake_g = self.discriminator([diff_augment(fake, seeds[2]), labels], training=True)
            g_loss = -tf.reduce_mean(d_fake_g)
            if self.config.mode_seeking:
                # Mode seeking (Mao et al. 2019, MSGAN): images of two noises for the same subtypes
                # must differ in proportion to the noises; without it the generator learnt to ignore
                # its noise and drew one image per subtype.
                other = self.generator([other_noise, labels], training=True)
                images_apart = tf.reduce_mean(tf.abs(tf.cast(fake, tf.float32) - tf.cast(other, tf.float32)), [1, 2, 3])
                noise_apart = tf.reduce_mean(tf.abs(noise - other_noise), axis=1)
                g_loss += self.config.mode_seeking * tf.reduce_mean(noise_apart / (images_apart + 1e-5))
            scaled = self.g_opt.scale_loss(g_loss)
        grads = tape.gradient(scaled, self.generator.trainable_variables)
        self.g_opt.apply(grads, self.generator.trainable_variables)
        for average, weight in zip(self.average.weights, self.generator.weights):
            average.assign(self.config.ema * average + (1.0 - self.config.ema) * tf.cast(weight, average.dtype))
        self.step.assign_add(1)
        return {"d_loss": d_loss, "g_loss": g_loss,
                "d_real": tf.reduce_mean(d_real), "d_fake": tf.reduce_mean(d_fake)}


def _balanced_batches(labels: np.ndarray, subtypes, batch_size: int, rng: np.random.Generator):
    """Index batches with subtypes drawn uniformly, so minority subtypes train as often as others,
    in groups of GROUP patches of one subtype: the discriminator's minibatch spread
    (core.gan.model.GroupSpread) then measures variety WITHIN a subtype, where collapse happens."""
    pools = [np.flatnonzero(labels == SUBTYPES.index(s)) for s in subtypes]
    while True:
        picks = np.repeat(rng.integers(0, len(pools), -(-batch_size // GROUP)), GROUP)[:batch_size]
        yield np.array([rng.choice(pools[p]) for p in picks])


def _augment_dihedral(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips and 90-degree turns: histology has no up or left, so these are free real data."""
    out = np.empty_like(batch)
    for i, image in enumerate(batch):
        image = np.rot90(image, rng.integers(4))
        out[i] = image[:, ::-1] if rng.integers(2) else image
    return out


def train_gan(config: GanConfig, data_dir, out_dir, resume: bool = False, stop=lambda: False) -> Path:
    """Train (or resume up to config.steps) a GAN; returns the generator folder out_dir/model.

    Progress goes to out_dir/progress.jsonl in the classifier's format (start / epoch_begin / step /
    end; the whole run is one "epoch"). A failure writes "error" and a failed "end", then raises.
    """
    out_dir, config_path = Path(out_dir), Path(out_dir) / "config.json"
    if config_path.exists() and not resume:
        raise UserInputError(f"{out_dir} already holds a GAN run; pass --resume or choose another --out")
    if resume:
        if not config_path.exists():
            raise FileNotFoundError(f"Nothing to resume in {out_dir} (no config.json)")
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
    images, fingerprint = training_images(data_dir, config)
    # The same config gives the same generator whatever ran before in the process (weight init
    # drew from Keras's global seed, so a test's outcome depended on the tests before it).
    keras.utils.set_random_seed(config.seed)
    trainer = GanTrainer(config, out_dir / "checkpoints")
    step = start_step = trainer.restore()
    normalizer = fit_normalizer(config.stain_norm, images, config.seed)
    patches, labels, _ = real_patches(images, config, seed=config.seed, normalizer=normalizer)
    unreadable = [s for s in config.subtypes if not (labels == SUBTYPES.index(s)).any()]
    if unreadable:
        raise UserInputError(f"No readable training images for subtypes {unreadable} (see the warnings above); "
                         "fix or remove those files, or leave the subtypes out (--subtypes)")
    by_subtype = {s: int((images["subtype"] == s).sum()) for s in config.subtypes}
    progress.emit("start", step=step, steps=config.steps, epochs=1, images_by_subtype=by_subtype, message=(
        f"GAN {config.name}: {len(images)} images -> {len(patches)} patches of {config.image_size}px, "
        f"{trainer.precision}, from step {step}"))
    progress.emit("epoch_begin", epoch=1, epochs=1, steps=config.steps, step=step)
    rng = np.random.default_rng([config.seed, step])
    batches = _balanced_batches(labels, config.subtypes, config.batch_size, rng)
    fixed_noise = noise_for(config.seed + 12345, 8, config.latent_dim)
    started, metrics, status = time.time(), {}, "completed"
    while step < config.steps:
        if stop():
            status = "cancelled"
            break
        index = next(batches)
        real = _augment_dihedral(patches[index], rng).astype(np.float32) / 127.5 - 1.0
        metrics = {k: float(v) for k, v in trainer.train_step(real, labels[index][:, None]).items()}
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            progress.emit("step", epoch=1, epochs=1, step=step, steps=config.steps, metrics=metrics)
        if step % config.sample_every == 0 or step == config.steps:
            grid_path = out_dir / "samples" / f"step_{step:06d}.png"
            save_sample_grid(trainer.average, config.subtypes, fixed_noise, grid_path)
        if step % config.checkpoint_every == 0:
            trainer.manager.save(checkpoint_number=step)
    trainer.manager.save(checkpoint_number=step)
    card = {"name": config.name, "image_size": config.image_size, "latent_dim": config.latent_dim,
            "subtypes": list(config.subtypes), "precision": trainer.precision, "config": dataclasses.asdict(config),
            "stain_normalization": normalizer.to_dict(),
            "training": {"data_source": portable(data_dir), "data_fingerprint": fingerprint,
                         "split": config.split_spec().label, "split_spec": config.split_spec().to_dict(),
                         "images_by_subtype": by_subtype, "patches": int(len(patches)), "steps": step,
                         "resumed_from_step": start_step, "seconds_this_session": round(time.time() - started, 1)}}
    # The average generator is float32: the same on any machine.
    model_dir = save_model_folder(trainer.average, out_dir / "model", card, kind=GENERATOR)
    progress.emit("end", status=status, step=step, steps=config.steps, metrics=metrics, model_dir=str(model_dir))
    return model_dir
