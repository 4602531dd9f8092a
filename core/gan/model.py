"""A class-conditional GAN for histology patches per subtype: its settings and its two networks.

Design (small data, small compute): a DCGAN-style generator conditioned by a subtype embedding
(with the noise, and as conditional batch norm in every block); a projection discriminator
(Miyato & Koyama 2018) with spectral normalisation on its weights; hinge loss (core.gan.train);
and differentiable augmentation (DiffAugment, Zhao et al. 2020) of real and fake images alike,
because a discriminator that sees only a few hundred real patches memorises them otherwise.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from core.data.labels import MAGNIFICATIONS, SUBTYPES
from core.data.selection import SplitSpec
from core.data.splits import PATIENT
from core.data.stain import STAIN_METHODS
from core.errors import UserInputError
from core.options import option

SIZES = (32, 64, 128, 256)
_SN = layers.SpectralNormalization


@dataclasses.dataclass
class GanConfig:
    """Everything a GAN run is; `python -m core gan train` takes each field as an option."""

    name: str = option("gan", "generator name used in file names (default: the --out folder name)")
    subtypes: tuple[str, ...] = option(SUBTYPES, "subtypes to learn", choices=SUBTYPES, nargs="+")
    image_size: int = option(128, "patch side in pixels", choices=SIZES)
    latent_dim: int = option(64, "noise dimensions")
    width: int = option(128, "channels at 4x4, halved per doubling of resolution (min 16)")
    upsampling: str = option("bilinear", "how each generator block doubles the resolution before its convolution: "
                             "bilinear (smooth, no checkerboard) or nearest (blocky; the first generators)",
                             choices=("bilinear", "nearest"))
    steps: int = option(2000, "training steps (with --resume: the total to reach)")
    batch_size: int = option(16, "patches per step")
    lr_g: float = option(2e-4, "generator learning rate")
    lr_d: float = option(2e-4, "discriminator learning rate")
    crop_scale: tuple[float, float] = option((0.5, 1.0), "crop side as a fraction of the field (1 1: the "
                                             "classifier's whole-field view)", nargs=2, metavar="FRACTION")
    patches_per_image: int = option(32, "random crops taken from each real image")
    # Which real images: the classifier's selection (core.data.selection), so with a split only
    # its train images are used and no val/test patient reaches the GAN.
    magnification: str = option("all", "as the classifier's --magnification", choices=("all", *MAGNIFICATIONS))
    split: str = option(PATIENT, "learn only from this split's train images (the classifier's --split); "
                        '"none": from every image, val/test included, which classifier training refuses '
                        "unless --allow-gan-leak", choices=("patient-wise", "image-level", "none"))
    split_seed: int = option(0, "the classifier's --seed")
    folds: int = option(0, "the classifier's --folds (k-fold runs)")
    fold: int = option(0, "the classifier's --fold")
    sample_every: int = option(250, "steps between sample grids")
    checkpoint_every: int = option(250, "steps between checkpoints")
    log_every: int = option(10, "steps between progress events")
    seed: int = option(0, "noise and crop seed")
    stain_norm: str = option("none", "stain normalisation of the real images before cropping (fitted to them)",
                             choices=STAIN_METHODS)
    precision: str = option("auto", "auto: mixed_float16 on a GPU, float32 on the CPU",
                            choices=("auto", "float32", "mixed_float16"))
    ema: float = option(0.99, "the saved generator is this moving average of the trained weights")
    mode_seeking: float = option(0.0, "weight of the mode-seeking term (MSGAN) that keeps images of different "
                                 "noises apart (0: off; older generators)")

    def __post_init__(self):
        unknown = [s for s in self.subtypes if s not in SUBTYPES]
        if unknown or not self.subtypes:
            raise UserInputError(f"Unknown or no subtypes {unknown}; choose from {list(SUBTYPES)}")
        if self.image_size not in SIZES:
            raise UserInputError(f"image_size must be one of {SIZES}, not {self.image_size}")
        low, high = self.crop_scale
        if self.batch_size % GROUP:
            raise UserInputError(f"batch_size must be a multiple of {GROUP} (groups of one subtype), got {self.batch_size}")
        if not 0.0 <= self.ema < 1.0:
            raise UserInputError(f"ema must be in [0, 1), got {self.ema}")
        if not 0.05 <= low <= high <= 1.0:
            raise UserInputError(f"crop_scale must satisfy 0.05 <= low <= high <= 1, got {self.crop_scale}")
        self.subtypes, self.crop_scale = tuple(self.subtypes), (float(low), float(high))
        self.split_spec()  # an impossible split (e.g. bad folds) fails here, before any work

    def split_spec(self) -> SplitSpec:
        """The classifier split whose training images this GAN learns from."""
        return SplitSpec(self.split, self.split_seed, self.magnification, self.folds, self.fold)

    @classmethod
    def from_dict(cls, values: dict) -> "GanConfig":
        """From JSON (a run's config.json or a card's "config"): lists back to tuples."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {"upsampling": "nearest", **values}  # saved before the option existed: nearest was the only kind
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
        # Resize, then convolve (Odena et al. 2016): no transposed convolution, whose uneven overlap
        # paints checkerboards. Bilinear rather than nearest resizing also avoids the 2-pixel blocks.
        x = layers.UpSampling2D(2, interpolation=config.upsampling)(x)
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = _conditional_norm(x, embedding, filters)
    image = layers.Conv2D(3, 3, padding="same", activation="tanh", dtype="float32", name="rgb")(x)
    return keras.Model([noise, label], image, name="generator")


GROUP = 4  # patches of one subtype next to each other in a batch (core.gan.train._balanced_batches)


class GroupSpread(layers.Layer):
    """Minibatch standard deviation (Karras et al. 2018, ProGAN) over groups of GROUP images: one
    extra channel holding how much the group's features differ. A generator that ignores its
    noise makes identical images, which this channel exposes to the discriminator; without it
    the first bilinear generators collapsed to one image per subtype within 1,000 steps."""

    def call(self, x):
        shape = tf.shape(x)
        group = GROUP if x.shape[0] is None or x.shape[0] % GROUP == 0 else 1  # batches are whole groups
        grouped = tf.reshape(tf.cast(x, tf.float32), [-1, group, shape[1], shape[2], shape[3]])  # consecutive
        spread = tf.sqrt(tf.math.reduce_variance(grouped, axis=1) + 1e-8)  # [N/group, H, W, C]
        spread = tf.repeat(tf.reduce_mean(spread, axis=[1, 2, 3], keepdims=True), group, axis=0)  # [N, 1, 1, 1]
        spread = tf.tile(spread, [1, shape[1], shape[2], 1])
        return tf.concat([x, tf.cast(spread, x.dtype)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + 1)


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
    x = GroupSpread(name="group_spread")(x)
    features = layers.GlobalAveragePooling2D(dtype="float32")(x)
    unconditional = _SN(layers.Dense(1, dtype="float32"))(features)
    # No spectral norm on the embedding: Keras' wrapper casts outputs to the (int) input dtype.
    class_vector = layers.Flatten()(layers.Embedding(len(SUBTYPES), channels[-1] + 1, dtype="float32")(label))
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
