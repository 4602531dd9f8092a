"""What the discriminator sees: real and synthetic patches, augmented alike and differentiably.

DiffAugment (Zhao et al. 2020): colour, translation and cutout applied to real AND generated
patches inside the training step, so a discriminator that sees a few hundred fields cannot
memorise them and the generator still gets gradients through the augmentation. Flips and 90-degree
turns (the dihedral group) come first: tissue has no up or left, so they are free data. Written in
keras.ops with the classifier's symmetries (core.data.keras_augment), so it runs under either
backend; randomness comes from a SeedGenerator (JAX's stateless step threads its state).
"""

from __future__ import annotations

import keras
from keras import ops

from core.data.keras_augment import dihedral_ops


def dihedral(images, seed):
    """Each square image flipped left-right, up-down and transposed at random: one of its 8 views."""
    flags = keras.random.uniform((3, ops.shape(images)[0]), seed=seed) < 0.5
    return dihedral_ops(images, flags[0], flags[1], flags[2])


def _roll(images, shift):
    """Each image rolled by its own (dy, dx) with wrap-around (no padding edge): a product with two
    one-hot permutation matrices, exact and differentiable on every backend."""
    size = images.shape[1]
    index = ops.arange(size, dtype="int32")[None, :]
    rows = ops.one_hot((index - shift[:, 0:1]) % size, size, dtype=images.dtype)  # (B, S, S)
    cols = ops.one_hot((index - shift[:, 1:2]) % size, size, dtype=images.dtype)
    images = ops.einsum("bij,bjwc->biwc", rows, images)
    return ops.einsum("bij,bhjc->bhic", cols, images)


def diff_augment(images, seed):
    """Dihedral view, colour, translation and cutout, differentiable; square images in [-1, 1]."""
    batch, size = ops.shape(images)[0], images.shape[1]
    images = dihedral(images, seed)
    rand = [keras.random.uniform((batch, 1, 1, 1), seed=seed, dtype=images.dtype) for _ in range(3)]
    # Mild colour changes only: stain colour is part of what tells subtypes apart.
    images = images + (rand[0] - 0.5) * 0.2  # brightness
    mean = ops.mean(images, axis=-1, keepdims=True)
    images = (images - mean) * (rand[1] * 0.6 + 0.7) + mean  # saturation
    mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
    images = (images - mean) * (rand[2] * 0.6 + 0.7) + mean  # contrast
    shift = keras.random.randint((batch, 2), -(size // 8), size // 8 + 1, seed=seed, dtype="int32")
    images = _roll(images, shift)  # translation
    centre = keras.random.randint((batch, 1, 1, 2), 0, size, seed=seed, dtype="int32")
    grid = ops.stack(ops.meshgrid(ops.arange(size, dtype="int32"), ops.arange(size, dtype="int32"), indexing="ij"),
                     axis=-1)[None]
    inside = ops.all(ops.abs(grid - centre) < size // 4, axis=-1, keepdims=True)
    return images * (1.0 - ops.cast(inside, images.dtype))  # cutout of a half-size square
