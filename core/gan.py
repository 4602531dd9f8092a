"""A class-conditional GAN that synthesises histology patches per subtype (for minority filling).

Design (small data, small compute): a DCGAN-style generator conditioned by a subtype embedding
(with the noise, and as conditional batch norm in every block); a projection discriminator
(Miyato & Koyama 2018) with spectral normalisation on its weights; hinge loss; and differentiable
augmentation (DiffAugment, Zhao et al. 2020) of real and fake images alike, because a
discriminator that sees only a few hundred real patches memorises them otherwise.
Real patches come from the same index (core.breakhis), the same decoding (core.images) and the
same resize (core.preprocess) as the classifier; with crop scale 1.0 a patch is exactly the
classifier's view of the whole field. Generator folders (save, verify, load, sample): core.gan_io.

    python -m core.gan train --data DIR --out runs/gan-NAME --subtypes adenosis phyllodes_tumor --steps 5000
    python -m core.gan sample --model runs/gan-NAME/model --subtype adenosis --n 200 --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from core.breakhis import index_folder
from core.gan_io import noise_for, run_cli_command, save_generator, save_sample_grid, write_samples
from core.labels import SUBTYPES
from core.preprocess import to_model_input
from core.progress import ProgressWriter

SIZES = (32, 64, 128, 256)
_SN = layers.SpectralNormalization


@dataclasses.dataclass
class GanConfig:
    name: str = "gan"
    subtypes: tuple[str, ...] = SUBTYPES
    image_size: int = 128
    latent_dim: int = 64
    width: int = 128  # channels at 4x4, halved per doubling of resolution (min 16)
    steps: int = 2000
    batch_size: int = 16
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    crop_scale: tuple[float, float] = (0.5, 1.0)  # crop side as a fraction of the whole field
    patches_per_image: int = 32
    # Which real images: as core.train picks them (magnification filter, then split with its seed);
    # with a split only its train images are used, so no val/test image reaches the classifier.
    magnification: str = "all"
    split: str = "patient-wise"  # "none" learns from every image, the classifier's val/test ones too
    split_seed: int = 0
    sample_every: int = 250
    checkpoint_every: int = 250
    log_every: int = 10
    seed: int = 0
    precision: str = "auto"  # auto -> mixed_float16 on a GPU, float32 on CPU
    ema: float = 0.99  # the saved generator is this moving average of the trained weights

    def __post_init__(self):
        unknown = [s for s in self.subtypes if s not in SUBTYPES]
        if unknown or not self.subtypes:
            raise ValueError(f"Unknown or no subtypes {unknown}; choose from {list(SUBTYPES)}")
        if self.image_size not in SIZES:
            raise ValueError(f"image_size must be one of {SIZES}, not {self.image_size}")
        low, high = self.crop_scale
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if not 0.05 <= low <= high <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0.05 <= low <= high <= 1, got {self.crop_scale}")
        self.subtypes, self.crop_scale = tuple(self.subtypes), (float(low), float(high))

    @classmethod
    def from_dict(cls, values: dict) -> "GanConfig":
        """From JSON (a run's config.json or a card's "config"): lists back to tuples."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})


def _channels(config: GanConfig) -> list[int]:
    """Channels per resolution 4, 8, ..., image_size."""
    levels = int(np.log2(config.image_size)) - 1
    return [max(16, config.width >> i) for i in range(levels)]


def _conditional_norm(x, embedding, filters: int):
    """Conditional batch norm: normalise, then a per-subtype scale and shift (BigGAN-style).

    Built from stock layers so the saved generator loads in Keras safe mode; scale starts near 1.
    """
    x = layers.BatchNormalization(center=False, scale=False)(x)
    small = keras.initializers.RandomNormal(stddev=0.1 / np.sqrt(embedding.shape[-1]))
    scale = layers.Dense(filters, kernel_initializer=small, bias_initializer="ones")(embedding)
    shift = layers.Dense(filters, kernel_initializer=small)(embedding)
    x = layers.Multiply()([x, layers.Reshape((1, 1, filters))(scale)])
    return layers.ReLU()(layers.Add()([x, layers.Reshape((1, 1, filters))(shift)]))


def build_generator(config: GanConfig) -> keras.Model:
    """(noise, subtype index into SUBTYPES) -> RGB in [-1, 1] at image_size."""
    noise = keras.Input((config.latent_dim,), name="noise")
    label = keras.Input((1,), dtype="int32", name="subtype")
    # Unit-scale embedding and non-zero projections: a zero or tiny start leaves the subtype
    # path with no gradient, and the generator then ignores the subtype for thousands of steps.
    unit = keras.initializers.RandomNormal(stddev=1.0)
    embedding = layers.Embedding(len(SUBTYPES), 32, embeddings_initializer=unit, name="subtype_embedding")(label)
    embedding = layers.Flatten()(embedding)
    channels = _channels(config)
    x = layers.Concatenate()([noise, embedding])
    x = layers.Dense(4 * 4 * channels[0], use_bias=False)(x)
    x = _conditional_norm(layers.Reshape((4, 4, channels[0]))(x), embedding, channels[0])
    for filters in channels[1:]:
        x = layers.UpSampling2D(2, interpolation="nearest")(x)
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = _conditional_norm(x, embedding, filters)
    image = layers.Conv2D(3, 3, padding="same", activation="tanh", dtype="float32", name="rgb")(x)
    return keras.Model([noise, label], image, name="generator")


def build_discriminator(config: GanConfig) -> keras.Model:
    """(image in [-1, 1], subtype) -> realness score; projection term = <embed(y), features>."""
    image = keras.Input((config.image_size, config.image_size, 3), name="image")
    label = keras.Input((1,), dtype="int32", name="subtype")
    channels = _channels(config)[::-1]
    x = _SN(layers.Conv2D(channels[0], 3, padding="same"))(image)
    x = layers.LeakyReLU(0.2)(x)
    for filters in channels[1:]:
        x = _SN(layers.Conv2D(filters, 4, strides=2, padding="same"))(x)
        x = layers.LeakyReLU(0.2)(x)
    features = layers.GlobalAveragePooling2D(dtype="float32")(x)
    unconditional = _SN(layers.Dense(1, dtype="float32"))(features)
    # No spectral norm on the embedding: Keras' wrapper casts outputs to the (int) input dtype.
    class_vector = layers.Flatten()(layers.Embedding(len(SUBTYPES), channels[-1], dtype="float32")(label))
    projection = layers.Dot(axes=1)([class_vector, features])
    return keras.Model([image, label], layers.Add()([unconditional, projection]), name="discriminator")


def diff_augment(images, seed):
    """Colour, translation and cutout, differentiable, applied to real and fake alike."""
    batch, size = tf.shape(images)[0], images.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 5)
    rand = [tf.random.stateless_uniform([batch, 1, 1, 1], seeds[i]) for i in range(3)]
    # Mild colour changes only: stain colour is what tells subtypes and labs apart.
    images = images + (rand[0] - 0.5) * 0.2  # brightness
    mean = tf.reduce_mean(images, axis=-1, keepdims=True)
    images = (images - mean) * (rand[1] * 0.6 + 0.7) + mean  # saturation
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * (rand[2] * 0.6 + 0.7) + mean  # contrast
    shift = tf.random.stateless_uniform([batch, 2], seeds[3], -size // 8, size // 8 + 1, tf.int32)
    images = tf.map_fn(lambda a: tf.roll(a[0], a[1], axis=[0, 1]), (images, shift),
                       fn_output_signature=images.dtype)  # translation (wrap-around)
    centre = tf.random.stateless_uniform([batch, 1, 1, 2], seeds[4], 0, size, tf.int32)
    grid = tf.stack(tf.meshgrid(tf.range(size), tf.range(size), indexing="ij"), axis=-1)[None]
    inside = tf.reduce_all(tf.abs(grid - centre) < size // 4, axis=-1, keepdims=True)
    return images * (1.0 - tf.cast(inside, images.dtype))  # cutout of a half-size square


def real_patches(images, config: GanConfig, seed: int = 0):
    """Random crops of each image -> (uint8 patches [N,S,S,3], subtype indices [N], source paths).

    A crop keeps the field's aspect ratio (side = scale x field) and is resized by the one resize,
    so crop scale 1.0 reproduces exactly what the classifier sees.
    """
    from core.images import ImageError, load_image

    rng = np.random.default_rng(seed)
    patches, labels, sources = [], [], []
    for row in images.itertuples(index=False):
        try:
            rgb = load_image(row.path, check_histology=False).rgb  # known dataset images: skip the check
        except ImageError as error:
            print(f"WARNING: skipping {row.path}: {error}", file=sys.stderr)
            continue
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
        raise ValueError("No readable images to make patches from")
    return np.stack(patches), np.array(labels, np.int32), sources


def training_images(data_dir, config: GanConfig):
    """The real images the GAN may learn from: chosen subtypes of the classifier's train split."""
    from core.pipeline import select_magnification

    images = select_magnification(index_folder(data_dir).images, config.magnification)
    if config.split != "none":
        from core.splits import make_split

        split = make_split(images, protocol=config.split, seed=config.split_seed)
        images = split[split["split"] == "train"]
    images = images[images["subtype"].isin(config.subtypes)]
    missing = sorted(set(config.subtypes) - set(images["subtype"]))
    if missing:
        raise ValueError(f"No training images for subtypes {missing} in {data_dir}")
    return images.reset_index(drop=True)


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
        seeds = tf.random.experimental.stateless_split(seed, 4)
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
        with tf.GradientTape() as tape:
            fake = self.generator([noise, labels], training=True)
            d_fake_g = self.discriminator([diff_augment(fake, seeds[2]), labels], training=True)
            g_loss = -tf.reduce_mean(d_fake_g)
            scaled = self.g_opt.scale_loss(g_loss)
        grads = tape.gradient(scaled, self.generator.trainable_variables)
        self.g_opt.apply(grads, self.generator.trainable_variables)
        for average, weight in zip(self.average.weights, self.generator.weights):
            average.assign(self.config.ema * average + (1.0 - self.config.ema) * tf.cast(weight, average.dtype))
        self.step.assign_add(1)
        return {"d_loss": d_loss, "g_loss": g_loss,
                "d_real": tf.reduce_mean(d_real), "d_fake": tf.reduce_mean(d_fake)}


def _balanced_batches(labels: np.ndarray, subtypes, batch_size: int, rng: np.random.Generator):
    """Index batches with subtypes drawn uniformly, so minority subtypes train as often as others."""
    pools = [np.flatnonzero(labels == SUBTYPES.index(s)) for s in subtypes]
    while True:
        picks = rng.integers(0, len(pools), batch_size)
        yield np.array([rng.choice(pools[p]) for p in picks])


def _augment_dihedral(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips and 90-degree turns: histology has no up or left, so these are free real data."""
    out = np.empty_like(batch)
    for i, image in enumerate(batch):
        image = np.rot90(image, rng.integers(4))
        out[i] = image[:, ::-1] if rng.integers(2) else image
    return out


def train(config: GanConfig, data_dir, out_dir, resume: bool = False, stop=lambda: False) -> Path:
    """Train (or resume up to config.steps) a GAN; returns the generator folder out_dir/model.

    Progress goes to out_dir/progress.jsonl in the classifier's format (start / epoch_begin / step /
    end; the whole run is one "epoch"). A failure writes "error" and a failed "end", then raises.
    """
    out_dir, config_path = Path(out_dir), Path(out_dir) / "config.json"
    if config_path.exists() and not resume:
        raise FileExistsError(f"{out_dir} already holds a GAN run; pass --resume or choose another --out")
    if resume:
        if not config_path.exists():
            raise FileNotFoundError(f"Nothing to resume in {out_dir} (no config.json)")
        config = dataclasses.replace(GanConfig.from_dict(json.loads(config_path.read_text())), steps=config.steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(dataclasses.asdict(config), indent=2))
    progress = ProgressWriter(out_dir / "progress.jsonl")
    try:
        return _run(config, data_dir, out_dir, progress, stop)
    except Exception as error:
        progress.emit("error", message=f"{type(error).__name__}: {error}")
        progress.emit("end", status="failed", message=str(error))
        raise


def _run(config: GanConfig, data_dir, out_dir: Path, progress: ProgressWriter, stop) -> Path:
    images = training_images(data_dir, config)
    trainer = GanTrainer(config, out_dir / "checkpoints")
    step = start_step = trainer.restore()
    patches, labels, _ = real_patches(images, config, seed=config.seed)
    unreadable = [s for s in config.subtypes if not (labels == SUBTYPES.index(s)).any()]
    if unreadable:
        raise ValueError(f"No readable training images for subtypes {unreadable} (see the warnings above); "
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
            "training": {"data_source": str(Path(data_dir).resolve()), "split": config.split, "images_by_subtype": by_subtype,
                         "patches": int(len(patches)), "steps": step, "resumed_from_step": start_step,
                         "seconds_this_session": round(time.time() - started, 1)}}
    model_dir = save_generator(trainer.average, out_dir / "model", card)  # float32: same on any machine
    progress.emit("end", status=status, step=step, steps=config.steps, metrics=metrics, model_dir=str(model_dir))
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train or resume a conditional GAN")
    t.add_argument("--data", required=True, help="BreakHis folder (any layout)")
    t.add_argument("--out", required=True, help="run folder, e.g. runs/gan-NAME")
    t.add_argument("--subtypes", nargs="+", default=list(SUBTYPES), choices=SUBTYPES)
    t.add_argument("--resume", action="store_true", help="continue the run in --out up to --steps")
    t.add_argument("--crop-scale", type=float, nargs=2, default=GanConfig.crop_scale, metavar=("LOW", "HIGH"),
                   help="crop side as a fraction of the field (1 = the classifier's whole-field view)")
    t.add_argument("--precision", default="auto", choices=("auto", "float32", "mixed_float16"))
    t.add_argument("--split", default=GanConfig.split, help="patient-wise / image-level: learn only from that "
                   "split's train images (give the classifier's --split, its --seed as --split-seed, and its "
                   '--magnification); "none": all images, val/test included, which core.train refuses '
                   "unless --allow-gan-leak")
    for field in dataclasses.fields(GanConfig):  # the plain numbers and strings, as --kebab-case options
        if field.name not in ("name", "subtypes", "crop_scale", "precision", "split"):
            t.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    t.add_argument("--name", help="generator name used in file names (default: the --out folder name)")
    s = commands.add_parser("sample", help="write synthetic images from a generator folder")
    s.add_argument("--model", required=True)
    s.add_argument("--subtype", required=True, choices=SUBTYPES)
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    return run_cli_command(lambda: _sample(args) if args.command == "sample" else _train(args))


def _sample(args) -> int:
    paths = write_samples(args.model, args.subtype, args.n, args.out, args.seed)
    print(f"wrote {len(paths)} images to {args.out}")
    return 0


def _train(args) -> int:
    """Train from the CLI; SIGTERM (e.g. a cancelled job) stops cleanly after the current step."""
    fields = {f.name for f in dataclasses.fields(GanConfig)}
    options = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    config = GanConfig(**{**options, "name": args.name or Path(args.out).name})
    cancelled = []
    signal.signal(signal.SIGTERM, lambda *_: cancelled.append(True))
    train(config, args.data, args.out, resume=args.resume, stop=lambda: bool(cancelled))
    return 0


if __name__ == "__main__":
    sys.exit(main())
