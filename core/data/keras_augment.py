"""Augmentation as Keras layers: one implementation for every backend, run where the model runs.

The field recipe (core.training.field_fit) feeds whole uint8 fields (FIELD_PX) to a training model
whose first layer is `FieldAugmentation`: a random square crop of 55-100 % of the field's short
side resized to the model's input, a dihedral symmetry, H&E stain jitter in optical-density space,
brightness and contrast, and now and then blur or noise. Written with keras.ops and keras.random
(seeded through a SeedGenerator, which JAX's stateless train step threads through), so the same
layer runs on a GPU under JAX or TensorFlow and on the CPU, and the data side only indexes arrays.

`crop_and_resize` is also how prediction makes its views (core.data.fields.ViewSpec): training
crops and prediction crops are resized by the same op.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from core.data.fields import ViewSpec, per_image
from core.data.stain import HED_FROM_RGB, RGB_FROM_HED

# Strengths of the field recipe (issue 25's measured recipe).
CROP_MIN = 0.55  # crop side as a share of the field's short side: U(CROP_MIN, 1)
STAIN_SCALE = 0.25  # each stain's optical density scaled by N(1, STAIN_SCALE), clipped to [0.3, 1.7]
STAIN_SHIFT = 0.03  # ... and shifted by N(0, STAIN_SHIFT)
BRIGHTNESS = 0.15  # multiplicative, U(1 - b, 1 + b)
CONTRAST = 0.15  # about the image mean, U(1 - c, 1 + c)
BLUR_P, NOISE_P, NOISE_MAX = 0.2, 0.2, 8.0  # probabilities, and the largest noise sd (of 255)
_LN10 = float(np.log(10.0))


def crop_and_resize(images, boxes, size: int):
    """Bilinear crop-and-resize of a batch: images (B, H, W, C) float, boxes (B, 4) as [y0, x0, h, w]
    in pixels, -> (B, size, size, C). Each output pixel samples its box at the pixel's centre (like
    an align-corners=False resize). Gathers on the flattened batch: no per-image Python loop, the
    same op on every backend."""
    shape = ops.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    boxes = ops.cast(boxes, "float32")
    steps = (ops.arange(size, dtype="float32") + 0.5) / size  # (S,) in (0, 1)
    ys = boxes[:, 0:1] + steps[None, :] * boxes[:, 2:3] - 0.5  # (B, S)
    xs = boxes[:, 1:2] + steps[None, :] * boxes[:, 3:4] - 0.5
    ys = ops.clip(ys, 0.0, ops.cast(height - 1, "float32"))
    xs = ops.clip(xs, 0.0, ops.cast(width - 1, "float32"))
    y0, x0 = ops.floor(ys), ops.floor(xs)
    wy, wx = (ys - y0)[:, :, None, None], (xs - x0)[:, None, :, None]
    y0, x0 = ops.cast(y0, "int32"), ops.cast(x0, "int32")
    y1 = ops.minimum(y0 + 1, height - 1)
    x1 = ops.minimum(x0 + 1, width - 1)
    flat = ops.reshape(images, (-1, shape[3]))
    base = (ops.arange(batch, dtype="int32") * height * width)[:, None, None]

    def gather(yy, xx):
        index = base + yy[:, :, None] * width + xx[:, None, :]  # (B, S, S)
        return ops.take(flat, ops.reshape(index, (-1,)), axis=0)

    def rows(yy):
        left, right = gather(yy, x0), gather(yy, x1)
        left = ops.reshape(left, (batch, size, size, -1))
        right = ops.reshape(right, (batch, size, size, -1))
        return left * (1.0 - wx) + right * wx

    return rows(y0) * (1.0 - wy) + rows(y1) * wy


def field_inputs(images: np.ndarray, spec: ViewSpec, crop=None, magnifications=None) -> np.ndarray:
    """Fields (N, H, W, 3) at the field scale -> the crops of every field, (N * crops, S, S, 3)
    float32, crop-major within each field: the prediction views without the symmetries. `crop`:
    a compiled crop_and_resize(images, boxes) at spec.input_size (the Predictor's), else eager ops.
    magnifications: each field's, for physical views (ViewSpec.crop_px_at); None: all as 200X."""
    images = np.asarray(images)
    magnifications = per_image(magnifications, len(images))
    repeated = np.repeat(images.astype(np.float32), spec.crops, axis=0)
    tiled = np.concatenate([spec.boxes(images.shape[1], images.shape[2], m) for m in magnifications]
                           or [np.zeros((0, 4))]).astype(np.float32)
    crops = crop(repeated, tiled) if crop is not None else crop_and_resize(ops.convert_to_tensor(repeated), tiled,
                                                                           spec.input_size)
    return np.asarray(ops.convert_to_numpy(crops), np.float32)


def dihedral_ops(images, transpose, flip_lr, flip_ud):
    """Per-image symmetries of square images (B, S, S, C); the three flags are (B,) booleans."""
    def choose(flag, changed, same):
        return ops.where(flag[:, None, None, None], changed, same)

    images = choose(transpose, ops.transpose(images, (0, 2, 1, 3)), images)
    images = choose(flip_lr, ops.flip(images, axis=2), images)
    return choose(flip_ud, ops.flip(images, axis=1), images)


def stain_jitter(images, scale, shift):
    """Each image's H, E and DAB optical densities (Ruifrok-Johnston, core.data.stain) scaled and
    shifted: images (B, H, W, 3) in 0..255, scale and shift (B, 3)."""
    hed_from_rgb = ops.convert_to_tensor(HED_FROM_RGB.astype(np.float32))
    rgb_from_hed = ops.convert_to_tensor(RGB_FROM_HED.astype(np.float32))
    density = -ops.log((images + 1.0) / 256.0) / _LN10
    hed = ops.tensordot(density, hed_from_rgb, axes=1)
    hed = hed * scale[:, None, None, :] + shift[:, None, None, :]
    density = ops.tensordot(hed, rgb_from_hed, axes=1)
    return ops.clip(256.0 * ops.exp(-density * _LN10) - 1.0, 0.0, 255.0)


def _blur(images):
    """3x3 binomial blur, per channel (depthwise), same size."""
    kernel = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32) / 16.0
    kernel = np.repeat(kernel[:, :, None, None], 3, axis=2)  # (3, 3, C, 1)
    return ops.depthwise_conv(images, ops.convert_to_tensor(kernel), strides=1, padding="same")


@keras.saving.register_keras_serializable(package="core")
class FieldAugmentation(keras.layers.Layer):
    """uint8 fields (B, H, W, 3) -> augmented float32 model inputs (B, size, size, 3) in 0..255.

    Active only in the training model (core.training.field_fit builds it in front of the
    classifier, which is saved without it); `strength` scales every jitter (0: crops and
    symmetries only). Called on (fields, scales), each field's crop side is also multiplied by its
    scale (ViewSpec.crop_px_at / crop_px: 0.2 at 40X, 2 at 400X, at most the short side), so that
    training crops cover the same tissue at every magnification, as physical views predict."""

    def __init__(self, size: int, crop_min: float = CROP_MIN, strength: float = 1.0, seed: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.size, self.crop_min, self.strength, self.seed = int(size), float(crop_min), float(strength), seed
        self.generator = keras.random.SeedGenerator(seed)

    def _uniform(self, shape, low=0.0, high=1.0):
        return keras.random.uniform(shape, low, high, seed=self.generator)

    def call(self, fields):
        fields, scales = fields if isinstance(fields, (list, tuple)) else (fields, None)
        images = ops.cast(fields, "float32")
        shape = ops.shape(images)
        batch = shape[0]
        height, width = ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")
        short = ops.minimum(height, width)
        side = self._uniform((batch,), self.crop_min, 1.0) * short
        if scales is not None:
            side = ops.minimum(side * ops.reshape(ops.cast(scales, "float32"), (-1,)), short)
        y0 = self._uniform((batch,)) * (height - side)
        x0 = self._uniform((batch,)) * (width - side)
        images = crop_and_resize(images, ops.stack([y0, x0, side, side], axis=1), self.size)
        flags = self._uniform((3, batch)) < 0.5
        images = dihedral_ops(images, flags[0], flags[1], flags[2])
        if self.strength <= 0:
            return images
        s = self.strength
        scale = ops.clip(1.0 + s * STAIN_SCALE * keras.random.normal((batch, 3), seed=self.generator), 0.3, 1.7)
        shift = s * STAIN_SHIFT * keras.random.normal((batch, 3), seed=self.generator)
        images = stain_jitter(images, scale, shift)
        mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
        contrast = self._uniform((batch, 1, 1, 1), 1.0 - s * CONTRAST, 1.0 + s * CONTRAST)
        brightness = self._uniform((batch, 1, 1, 1), 1.0 - s * BRIGHTNESS, 1.0 + s * BRIGHTNESS)
        images = ((images - mean) * contrast + mean) * brightness
        blur = self._uniform((batch, 1, 1, 1)) < BLUR_P
        images = ops.where(blur, _blur(images), images)
        noisy = ops.cast(self._uniform((batch, 1, 1, 1)) < NOISE_P, "float32")
        sd = noisy * self._uniform((batch, 1, 1, 1), 0.0, s * NOISE_MAX)
        images = images + sd * keras.random.normal(ops.shape(images), seed=self.generator)
        return ops.clip(images, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        fields = input_shape[0] if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)) \
            else input_shape
        return (fields[0], self.size, self.size, 3)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "crop_min": self.crop_min, "strength": self.strength,
                "seed": self.seed}
