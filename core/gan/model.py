"""A texture GAN for H&E tissue per subtype, at one physical scale: its settings and its two networks.

Tissue at a fixed microscope scale is a texture (nuclei, stroma fibres, gland lumina repeating
with no up or left), so the generator is a spatial GAN (Jetchev et al. 2016; PSGAN, Bergmann et
al. 2017): fully convolutional from a map of noise, one noise cell per UPSCALE pixels, with no
dense bottleneck (which paints one layout and a frame). A larger noise map draws a larger canvas,
e.g. a whole BreakHis field for the classifier. Each stage up-samples bilinearly and convolves
(3x3, reflect padding), and every normalisation is conditioned on the subtype.

The discriminator is fully convolutional too, with spectral normalisation (Miyato et al. 2018) and a
projection of the subtype (Miyato & Koyama 2018); loss and augmentation are in core.gan.train and
core.gan.augment. FastGAN (Liu et al. 2021) was the other reference: its skip-layer excitation
pools over the whole image, which would make a canvas depend on its size, so it is left out.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers

from core.data.labels import SUBTYPES
from core.data.selection import MAGNIFICATION_CHOICES, NO_SPLIT, SplitSpec
from core.data.splits import PATIENT, SPLIT_CHOICES
from core.data.stain import STAIN_METHODS
from core.errors import UserInputError
from core.gan.layers import Channels, InjectNoise, conditional_norm, conv
from core.options import option

UPSCALE = 8  # output pixels per noise cell: three 2x stages
LOSSES = ("hinge", "non_saturating")
# The GAN's scale: the coarsest scale every 200X field of the real set has, i.e. the 224x224 copies'
# horizontal pixel (0.5 um/px x 700/224). Finer would up-sample those 599 copies (blur the
# majority of the data); coarser would shrink nuclei (8-12 um) below 5-8 px. See core.gan.patches.
GAN_MPP = 1.5625
_SN = layers.SpectralNormalization
# The options `gan train --resume` applies; any other one defines the run and stays as it began.
RESUMABLE = ("steps", "sample_every", "log_every")


@dataclasses.dataclass
class GanConfig:
    """Everything a GAN run is; `python -m core gan train` takes each field as an option."""

    name: str = option("gan", "generator name used in file names (default: the --out folder name)")
    subtypes: tuple[str, ...] = option(SUBTYPES, "subtypes to learn", choices=SUBTYPES, nargs="+")
    mpp: float = option(GAN_MPP, "microns per pixel of every patch (fields are resampled to it, never enlarged)")
    image_size: int = option(64, f"training patch side in pixels (a multiple of {UPSCALE})")
    latent_dim: int = option(32, "noise channels per noise cell (one cell per 8x8 output pixels)")
    # On by default: on the real set it removed the 8-px periodic motif (docs/gan.md, issue 26).
    fine_noise: bool = option(True, "inject noise at every resolution, after each convolution (read from extra "
                              "noise-map channels, so a large canvas is still its patches); off: only the coarse "
                              "noise map")
    reconstruction: float = option(0.0, "weight of the discriminator's self-supervised reconstruction loss (FastGAN, "
                                   "Liu et al. 2021): a small decoder rebuilds each real patch D sees at half size from "
                                   "D's coarsest features, so D must describe the tissue, not memorise it; 0: off")
    r1: float = option(0.0, "R1 penalty weight gamma (Mescheder et al. 2018): gamma/2 x the squared gradient of D's score "
                       "with respect to each real (augmented) patch, added to D's loss every step; 0: off")
    width: int = option(128, "generator channels at the noise resolution, halved per up-sampling stage")
    d_width: int = option(32, "discriminator channels at full resolution, doubled per down-sampling")
    steps: int = option(6000, "training steps (with --resume: the total to reach)")
    batch_size: int = option(32, "patches per step")
    lr_g: float = option(2e-4, "generator learning rate")
    lr_d: float = option(2e-4, "discriminator learning rate")
    loss: str = option("hinge", "adversarial loss", choices=LOSSES)
    ema: float = option(0.999, "the saved generator is this moving average of the trained weights")
    holdout: float = option(0.2, "share of each subtype's training images kept out of GAN training, as the real "
                            "set of the two-sample test (at least one image of a subtype with two or more)")
    # Which real images: the classifier's selection (core.data.selection), so with a split only
    # its train images are used and no val/test patient reaches the GAN.
    magnification: str = option("all", "as the classifier's --magnification", choices=MAGNIFICATION_CHOICES)
    split: str = option(PATIENT, "learn only from this split's train images (the classifier's --split); "
                        '"none": from every image, val/test included, which classifier training refuses '
                        "unless --allow-gan-leak", choices=(*SPLIT_CHOICES, NO_SPLIT))
    split_seed: int = option(0, "the classifier's --seed")
    folds: int = option(0, "the classifier's --folds (k-fold runs)")
    fold: int = option(0, "the classifier's --fold")
    sample_every: int = option(500, "steps between sample grids")
    checkpoint_every: int = option(250, "steps between checkpoints (and Keras epochs)")
    log_every: int = option(10, "steps between progress events")
    seed: int = option(0, "noise, crop and weight seed")
    stain_norm: str = option("none", "stain normalisation of the real fields (fitted to them)", choices=STAIN_METHODS)
    precision: str = option("auto", "auto: mixed precision on a GPU (float16 under TensorFlow, bfloat16 under JAX), "
                            "float32 on the CPU", choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"))

    def __post_init__(self):
        unknown = [s for s in self.subtypes if s not in SUBTYPES]
        if unknown or not self.subtypes:
            raise UserInputError(f"Unknown or no subtypes {unknown}; choose from {list(SUBTYPES)}")
        if self.image_size % UPSCALE or not 16 <= self.image_size <= 256:
            raise UserInputError(f"image_size must be a multiple of {UPSCALE} from 16 to 256, not {self.image_size}")
        if not 0.0 <= self.ema < 1.0:
            raise UserInputError(f"ema must be in [0, 1), got {self.ema}")
        if not 0.0 <= self.holdout < 0.5:
            raise UserInputError(f"holdout must be in [0, 0.5), got {self.holdout}")
        if self.mpp <= 0 or self.steps < 0 or self.batch_size < 2 or self.checkpoint_every < 1:
            raise UserInputError("mpp must be positive, steps >= 0, batch_size >= 2 and checkpoint_every >= 1")
        if not (self.lr_g > 0 and self.lr_d > 0):  # a negative rate trains away from the objective, in silence
            raise UserInputError(f"lr_g and lr_d must be > 0, got {self.lr_g} and {self.lr_d}")
        small = {k: getattr(self, k) for k in ("latent_dim", "width", "d_width", "sample_every", "log_every")
                 if getattr(self, k) < 1}
        if small:  # a zero interval divides by zero at the end of the run; a zero width fails inside Keras
            raise UserInputError(f"{', '.join(small)} must be >= 1, got {', '.join(map(str, small.values()))}")
        if self.seed < 0 or self.split_seed < 0:  # numpy takes no negative seed
            raise UserInputError(f"seed and split_seed must be >= 0, got {self.seed} and {self.split_seed}")
        if self.reconstruction < 0 or self.r1 < 0:
            raise UserInputError(f"reconstruction and r1 must be >= 0, got {self.reconstruction} and {self.r1}")
        if self.loss not in LOSSES:
            raise UserInputError(f"loss must be one of {LOSSES}, not {self.loss!r}")
        self.subtypes = tuple(self.subtypes)
        self.split_spec()  # an impossible split (e.g. bad folds) fails here, before any work

    def split_spec(self) -> SplitSpec:
        """The classifier split whose training images this GAN learns from."""
        return SplitSpec(self.split, self.split_seed, self.magnification, self.folds, self.fold)

    @classmethod
    def from_dict(cls, values: dict) -> "GanConfig":
        """From JSON (a run's config.json or a card's "config"): lists back to tuples."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {"fine_noise": False, "reconstruction": 0.0, "r1": 0.0, **values}  # runs saved before these existed had none
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})


STAGES = UPSCALE.bit_length() - 1  # 2x up-sampling stages after the noise resolution
CONVS_PER_STAGE = 2


def noise_channels(config: GanConfig) -> int:
    """Channels of the generator's noise map: the latent, plus the fine noise's packed planes (one per
    convolution, 4**stage values per noise cell)."""
    fine = CONVS_PER_STAGE * sum(4 ** stage for stage in range(STAGES + 1))
    return config.latent_dim + (fine if config.fine_noise else 0)


def build_generator(config: GanConfig) -> keras.Model:
    """(noise map [N, h, w, noise_channels], subtype index into SUBTYPES [N, 1]) -> RGB in [-1, 1] of
    [N, 8h, 8w, 3]: any h and w, so one network draws a training patch or a whole field."""
    noise = keras.Input((None, None, noise_channels(config)), name="noise")
    label = keras.Input((1,), dtype="int32", name="subtype")
    # Unit-scale embedding: a tiny start leaves the subtype path without gradient for thousands of steps.
    unit = keras.initializers.RandomNormal(stddev=1.0)
    embedding = layers.Flatten()(layers.Embedding(len(SUBTYPES), 32, embeddings_initializer=unit,
                                                  name="subtype_embedding")(label))
    x = Channels(0, config.latent_dim)(noise) if config.fine_noise else noise
    offset = config.latent_dim
    for stage in range(STAGES + 1):
        filters = max(16, config.width >> stage)
        if stage:
            # Resize then convolve (Odena et al. 2016): no transposed convolution, whose uneven
            # overlap paints checkerboards (the first bundled generator had them).
            x = layers.UpSampling2D(2, interpolation="bilinear")(x)
        for _ in range(CONVS_PER_STAGE):
            x = conv(x, filters)
            if config.fine_noise:
                x = InjectNoise(offset, 2 ** stage)([x, noise])
                offset += 4 ** stage
            x = conditional_norm(x, embedding, filters)
    image = conv(x, 3, activation="tanh", name="rgb", dtype="float32")
    return keras.Model([noise, label], image, name="generator")


def build_discriminator(config: GanConfig) -> keras.Model:
    """(image in [-1, 1] of any size, subtype) -> realness score per image; with config.reconstruction,
    also the image rebuilt at half size from the coarsest features (FastGAN's self-supervised decoder:
    two resize-and-convolve stages from 1/8 to 1/2 of the input, an L1 target in core.gan.adversarial).

    Three stride-2 stages (a receptive field of about 50 px, several nuclei and a gland's edge),
    global average pooling, then an unconditional score plus the projection <embed(y), features>.
    """
    image = keras.Input((None, None, 3), name="image")
    label = keras.Input((1,), dtype="int32", name="subtype")
    width = config.d_width
    x = layers.LeakyReLU(0.2)(_SN(layers.Conv2D(width, 3, padding="same"))(image))
    for stage in range(1, 4):
        x = layers.LeakyReLU(0.2)(_SN(layers.Conv2D(width << stage, 4, strides=2, padding="same"))(x))
    x = layers.LeakyReLU(0.2)(_SN(layers.Conv2D(width << 3, 3, padding="same"))(x))
    features = layers.GlobalAveragePooling2D(dtype="float32")(x)
    unconditional = _SN(layers.Dense(1, dtype="float32"))(features)
    # No spectral norm on the embedding: Keras' wrapper casts outputs to the (int) input dtype.
    class_vector = layers.Flatten()(layers.Embedding(len(SUBTYPES), width << 3, dtype="float32")(label))
    projection = layers.Dot(axes=1)([class_vector, features])
    score = layers.Add()([unconditional, projection])
    if not config.reconstruction:
        return keras.Model([image, label], score, name="discriminator")
    rebuilt = x
    for stage in (2, 1):
        rebuilt = layers.UpSampling2D(2, interpolation="bilinear")(rebuilt)
        rebuilt = layers.LeakyReLU(0.2)(layers.Conv2D(width << stage, 3, padding="same")(rebuilt))
    rebuilt = layers.Conv2D(3, 3, padding="same", activation="tanh", dtype="float32", name="rebuilt")(rebuilt)
    return keras.Model([image, label], [score, rebuilt], name="discriminator")
