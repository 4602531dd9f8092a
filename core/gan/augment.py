"""What the discriminator sees: real and synthetic patches, augmented alike and differentiably.

DiffAugment (Zhao et al. 2020): colour, translation and cutout applied to real AND generated
patches inside the training step, so a discriminator that sees a few hundred fields cannot
memorise them and the generator still gets gradients through the augmentation. Flips and 90-degree
turns (the dihedral group) come first: tissue has no up or left, so they are free data.
"""

from __future__ import annotations

import tensorflow as tf


def dihedral(images, seed):
    """Each square image flipped left-right, up-down and transposed at random: one of its 8 views."""
    coins = tf.random.stateless_uniform([3, tf.shape(images)[0], 1, 1, 1], seed) < 0.5
    images = tf.where(coins[0], tf.reverse(images, [2]), images)
    images = tf.where(coins[1], tf.reverse(images, [1]), images)
    return tf.where(coins[2], tf.transpose(images, [0, 2, 1, 3]), images)


def diff_augment(images, seed):
    """Dihedral view, colour, translation and cutout, differentiable; images in [-1, 1]."""
    batch, size = tf.shape(images)[0], images.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 6)
    images = dihedral(images, seeds[5])
    rand = [tf.random.stateless_uniform([batch, 1, 1, 1], seeds[i]) for i in range(3)]
    # Mild colour changes only: stain colour is part of what tells subtypes apart.
    images = images + (rand[0] - 0.5) * 0.2  # brightness
    mean = tf.reduce_mean(images, axis=-1, keepdims=True)
    images = (images - mean) * (rand[1] * 0.6 + 0.7) + mean  # saturation
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * (rand[2] * 0.6 + 0.7) + mean  # contrast
    shift = tf.random.stateless_uniform([batch, 2], seeds[3], -size // 8, size // 8 + 1, tf.int32)
    images = tf.map_fn(lambda a: tf.roll(a[0], a[1], axis=[0, 1]), (images, shift),
                       fn_output_signature=images.dtype)  # translation (wrap-around: no padding edge)
    centre = tf.random.stateless_uniform([batch, 1, 1, 2], seeds[4], 0, size, tf.int32)
    grid = tf.stack(tf.meshgrid(tf.range(size), tf.range(size), indexing="ij"), axis=-1)[None]
    inside = tf.reduce_all(tf.abs(grid - centre) < size // 4, axis=-1, keepdims=True)
    return images * (1.0 - tf.cast(inside, images.dtype))  # cutout of a half-size square
