"""Training-time augmentation, vectorised over a batch of model-size images.

Histology has no up or left, so the 8 symmetries of the square are free data; stain colour
varies between labs and scanners, so stains are jittered in HED space (the project's one stain
model, core.data.stain) rather than in RGB; brightness, contrast and saturation vary per scan.
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf

from core.data.stain import HED_FROM_RGB, RGB_FROM_HED

# Augmentation strengths. HED values follow Tellez et al. 2018 ("HED-light": +-5 %).
BRIGHTNESS = 0.08  # max additive shift, fraction of 255
CONTRAST = 0.15  # contrast factor in [1 - c, 1 + c]
SATURATION = 0.15  # saturation factor in [1 - s, 1 + s]
HED_SCALE = 0.05  # per-stain multiplicative jitter
HED_SHIFT = 0.02  # per-stain additive jitter (log10 optical-density units, as core.data.stain)

# The stain model is core.data.images' (Ruifrok & Johnston vectors, log10 optical density).
_RGB_FROM_HED = RGB_FROM_HED.astype(np.float32)
_HED_FROM_RGB = HED_FROM_RGB.astype(np.float32)
_LN10 = float(np.log(10.0))


# --- augmentation --------------------------------------------------------------------------

def rgb_to_hed(rgb):
    """RGB 0..255 -> stain concentrations (H, E, D) via optical density. Any leading shape."""
    density = -tf.math.log((tf.cast(rgb, tf.float32) + 1.0) / 256.0) / _LN10
    return tf.tensordot(density, _HED_FROM_RGB, axes=1)


def hed_to_rgb(hed):
    """Inverse of rgb_to_hed (exact up to float error), clipped to 0..255."""
    density = tf.tensordot(hed, _RGB_FROM_HED, axes=1)
    return tf.clip_by_value(256.0 * tf.exp(-density * _LN10) - 1.0, 0.0, 255.0)


def hed_jitter(images, scale, shift):
    """Per-image stain jitter: each HED channel -> channel * scale + shift.

    images: (B, H, W, 3) float 0..255; scale, shift: (B, 3). scale 1, shift 0 is the identity.
    """
    hed = rgb_to_hed(images)
    return hed_to_rgb(hed * scale[:, None, None, :] + shift[:, None, None, :])


# (transpose, left-right mirror, up-down flip): the 8 symmetries of the square, the identity first.
SYMMETRIES = tuple(itertools.product((False, True), repeat=3))


def _maybe(when, transform, batch):
    """transform(batch) where `when` holds: a Python bool for the whole batch, or a (B,) bool tensor
    choosing per image."""
    if isinstance(when, bool):
        return transform(batch) if when else batch
    return tf.where(when[:, None, None, None], transform(batch), batch)


def dihedral(batch, transpose, mirror, flip):
    """One of the 8 symmetries of the square for each image of a square batch (B, S, S, C):
    optional transpose, then left-right mirror, then up-down flip. Each choice is a Python bool (the
    same symmetry for the batch: the test-time views, core.model.views) or a (B,) bool tensor (one
    per image: training augmentation), so training and test time use the same 8 symmetries."""
    batch = _maybe(transpose, lambda b: tf.transpose(b, [0, 2, 1, 3]), batch)
    batch = _maybe(mirror, lambda b: tf.reverse(b, axis=[2]), batch)
    return _maybe(flip, lambda b: tf.reverse(b, axis=[1]), batch)


def augment(images, seed, strength: float = 1.0, zoom: float = 1.0):
    """Random flips, 90-degree rotations, zoom crops, brightness/contrast/saturation and HED stain jitter.

    images: one (S, S, 3) image or a batch (B, S, S, 3), float 0..255, square (model input).
    seed: int tensor of shape (2,); each image in a batch gets its own random draw.
    strength: multiplies every photometric and stain jitter (0: geometry only; 1: the defaults above).
    zoom: each image is cropped to a random square of side zoom..1 of the field, anywhere in it, and
    resized back (1: no crops); this varies the scale, as other magnifications and scanners do.
    Returns float32 in [0, 255] with the input's shape.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    single = images.shape.rank == 3
    batch = images[None] if single else images
    n = tf.shape(batch)[0]
    u = tf.random.stateless_uniform([n, 15], seed=seed)  # one row of draws per image
    batch = dihedral(batch, u[:, 0] < 0.5, u[:, 1] < 0.5, u[:, 2] < 0.5)  # one of the 8 per image
    if zoom < 1.0:
        side = zoom + (1.0 - zoom) * u[:, 12]
        top, left = (1.0 - side) * u[:, 13], (1.0 - side) * u[:, 14]
        boxes = tf.stack([top, left, top + side, left + side], axis=1)
        batch = tf.image.crop_and_resize(batch, boxes, tf.range(n), tf.shape(batch)[1:3], method="bilinear")
    # Stain variation between labs/scanners, in stain space rather than RGB.
    scale = 1.0 + strength * HED_SCALE * (2.0 * u[:, 3:6] - 1.0)
    shift = strength * HED_SHIFT * (2.0 * u[:, 6:9] - 1.0)
    batch = hed_jitter(batch, scale, shift)
    # Photometric jitter (per image).
    brightness = 255.0 * strength * BRIGHTNESS * (2.0 * u[:, 9] - 1.0)
    batch = batch + brightness[:, None, None, None]
    contrast = 1.0 + strength * CONTRAST * (2.0 * u[:, 10] - 1.0)
    mean = tf.reduce_mean(batch, axis=[1, 2], keepdims=True)
    batch = (batch - mean) * contrast[:, None, None, None] + mean
    saturation = 1.0 + strength * SATURATION * (2.0 * u[:, 11] - 1.0)
    grey = tf.reduce_sum(batch * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
    batch = grey + (batch - grey) * saturation[:, None, None, None]
    batch = tf.clip_by_value(batch, 0.0, 255.0)
    return batch[0] if single else batch


def describe(strength: float = 1.0, zoom: float = 1.0) -> str:
    """What a run's augmentation did, for its model card."""
    parts = ["random flips and 90-degree rotations"]
    if zoom < 1.0:
        parts.append(f"random square crops of {zoom:.0%}-100% of the field, resized back")
    if strength > 0:
        parts.append(f"brightness/contrast/saturation and HED stain jitter at {strength:g}x the default strength")
    return ", ".join(parts)
