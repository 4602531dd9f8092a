"""The one image -> model-input transform, shared by training, prediction, Grad-CAM and the GAN.

The whole field of view is resized (bilinear, antialiased) to a square of `INPUT_SIZE`; pixel
values stay 0-255 float32 because normalisation lives inside the model (core.model.backbones).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from core.data.labels import INPUT_SIZE

DESCRIPTION = (
    "RGB, whole image resized (bilinear, antialiased) to {size}x{size}, float32 in [0, 255]; "
    "per-backbone normalisation is a layer inside the model"
)


def to_model_input(rgb, size: int = INPUT_SIZE):
    """uint8 RGB image(s) (H, W, 3) or (N, H, W, 3), array or tensor -> float32 tensor at size."""
    image = tf.convert_to_tensor(rgb)
    resized = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)


def batch_for_model(images: list[np.ndarray], size: int = INPUT_SIZE) -> np.ndarray:
    """A list of uint8 RGB arrays of any sizes -> one (N, size, size, 3) float32 batch."""
    return np.stack([to_model_input(image, size).numpy() for image in images])
