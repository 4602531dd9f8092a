"""The generator's two building blocks that stock Keras lacks: reflect padding and subtype-conditional
normalisation.

Reflect padding is a layer of its own because Keras has only zero padding: zeros at the border of
every 3x3 convolution teach a generator to paint a frame (the first generators had one), and a
fully convolutional generator must draw the border of a patch like its middle, since a larger
canvas puts that border in the middle. The layer is registered, so a saved generator still loads
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
