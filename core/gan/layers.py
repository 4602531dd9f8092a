"""The generator's building blocks that stock Keras lacks: reflect padding, subtype-conditional
normalisation and noise injected at every resolution.

Reflect padding is a layer of its own because Keras has only zero padding: zeros at the border of
every 3x3 convolution teach a generator to paint a frame (the first generators had one), and a
fully convolutional generator must draw the border of a patch like its middle, since a larger
canvas puts that border in the middle. Fine noise (StyleGAN's per-pixel noise, Karras et al. 2019)
gives each resolution its own randomness, so detail need not be painted as one motif per noise cell;
it is read from extra channels of the generator's one noise map (packed per cell, unpacked by
depth-to-space), so a canvas stays a deterministic, local function of its noise map: a field-size
image is still its patches, without seams. The layers are registered, so a saved generator still loads
in Keras safe mode (core.model.folders) once this module is imported (core.gan.sampling imports it).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops


@keras.saving.register_keras_serializable(package="breakhis_gan")
class ReflectPad(layers.Layer):
    """Pad height and width by `pad` pixels, mirroring the image at its edges (no frame)."""

    def __init__(self, pad: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.pad = int(pad)

    def call(self, x):
        p = self.pad
        return ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")

    def compute_output_shape(self, input_shape):
        grow = lambda n: None if n is None else n + 2 * self.pad  # noqa: E731
        return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


def conv(x, filters: int, kernel: int = 3, name: str | None = None, activation=None, dtype=None):
    """A size-preserving convolution with reflect padding (odd kernels)."""
    if kernel > 1:
        x = ReflectPad(kernel // 2)(x)
    return layers.Conv2D(filters, kernel, padding="valid", use_bias=activation is not None, activation=activation,
                         name=name, dtype=dtype)(x)


def conditional_norm(x, embedding, filters: int):
    """Conditional batch norm (BigGAN): normalise, then a per-subtype scale and shift, then LeakyReLU.

    Batch statistics (moving averages at inference) do not depend on the canvas size, unlike
    instance or layer norm, so a field-size canvas is normalised exactly like a training patch.
    """
    x = layers.BatchNormalization(center=False, scale=False)(x)
    small = keras.initializers.RandomNormal(stddev=0.1 / np.sqrt(embedding.shape[-1]))
    scale = layers.Dense(filters, kernel_initializer=small, bias_initializer="ones")(embedding)
    shift = layers.Dense(filters, kernel_initializer=small)(embedding)
    x = layers.Multiply()([x, layers.Reshape((1, 1, filters))(scale)])
    return layers.LeakyReLU(0.2)(layers.Add()([x, layers.Reshape((1, 1, filters))(shift)]))


@keras.saving.register_keras_serializable(package="breakhis_gan")
class InjectNoise(layers.Layer):
    """x (B, H, W, C) at `cells * factor` resolution + a learned per-channel weight (zero at start) x
    one noise plane unpacked from channels [offset, offset + factor**2) of the noise map (B, h, w, K)."""

    def __init__(self, offset: int, factor: int, **kwargs):
        super().__init__(**kwargs)
        self.offset, self.factor = int(offset), int(factor)

    def build(self, input_shape):
        self.weight = self.add_weight(shape=(input_shape[0][-1],), initializer="zeros", name="weight")

    def call(self, inputs):
        x, noise = inputs
        f = self.factor
        packed = noise[..., self.offset:self.offset + f * f]  # (B, h, w, f*f): one value per output pixel
        shape = ops.shape(packed)
        plane = ops.reshape(packed, (shape[0], shape[1], shape[2], f, f))
        plane = ops.reshape(ops.transpose(plane, (0, 1, 3, 2, 4)), (shape[0], shape[1] * f, shape[2] * f, 1))
        return x + ops.cast(plane, x.dtype) * ops.cast(self.weight, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "offset": self.offset, "factor": self.factor}


@keras.saving.register_keras_serializable(package="breakhis_gan")
class Channels(layers.Layer):
    """Channels [start, stop) of a tensor: the latent part of a noise map that also carries fine noise."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, x):
        return x[..., self.start:self.stop]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.stop - self.start)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}
