"""tf.data input pipeline: image table -> (pixels, targets, sample weights) batches for Keras.

Per element: read + decode -> core.data.preprocess.to_model_input (the only resize) -> cache.
Then, per epoch: shuffle -> batch -> augment (vectorised over the batch) -> prefetch.
Decoding and resizing happen once (they dominate the cost for 700x460 PNGs); augmentation runs
on model-size batches, so it is cheap enough to keep up with the accelerator.

Hierarchical targets: stage 1 (benign/malignant) and one stage-2 head per class. A stage-2 head
only learns from images of its own class: its sample weight is 0 for the other class.
Synthetic (GAN) rows are ordinary rows with synthetic=True and take the same path.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import tensorflow as tf

from core.data.augment import augment as augment_batch
from core.data.images import load_image
from core.data.labels import (
    CLASS_OF_SUBTYPE,
    CLASSES,
    FLAT,
    FLAT_OUTPUT,
    HIERARCHICAL,
    INPUT_SIZE,
    STAGE1_OUTPUT,
    STAGE2_OUTPUTS,
    SUBTYPES,
    SUBTYPES_BY_CLASS,
    output_sizes,
    subtype_index,
)
from core.data.preprocess import to_model_input

AUTOTUNE = tf.data.AUTOTUNE

# --- targets -------------------------------------------------------------------------------

def targets_and_weights(images: pd.DataFrame, hierarchy: str = HIERARCHICAL,
                        subtype_weights: dict | None = None) -> tuple[dict, dict]:
    """One-hot targets and sample weights (dicts keyed by model output), as float32 arrays.

    subtype_weights (e.g. core.data.balance.class_weights) multiply every head's weight; unknown
    subtypes are an error, missing ones weigh 1.
    """
    output_sizes(hierarchy)  # validates the hierarchy name
    subtypes = images["subtype"].tolist()
    unknown = sorted(set(subtypes) - set(SUBTYPES))
    if unknown:
        raise ValueError(f"Unknown subtype(s) in the image table: {unknown}")
    subtype_weights = subtype_weights or {}
    bad = sorted(set(subtype_weights) - set(SUBTYPES))
    if bad:
        raise ValueError(f"subtype_weights has unknown subtype(s): {bad}")
    base = np.array([subtype_weights.get(s, 1.0) for s in subtypes], np.float32)
    n = len(subtypes)
    if hierarchy == FLAT:
        onehot = np.zeros((n, len(SUBTYPES)), np.float32)
        onehot[np.arange(n), [SUBTYPES.index(s) for s in subtypes]] = 1.0
        return {FLAT_OUTPUT: onehot}, {FLAT_OUTPUT: base}
    classes = np.array([CLASS_OF_SUBTYPE[s] for s in subtypes])
    targets = {STAGE1_OUTPUT: np.zeros((n, len(CLASSES)), np.float32)}
    targets[STAGE1_OUTPUT][np.arange(n), [CLASSES.index(c) for c in classes]] = 1.0
    weights = {STAGE1_OUTPUT: base}
    for label, output in STAGE2_OUTPUTS.items():
        own = classes == label
        onehot = np.zeros((n, len(SUBTYPES_BY_CLASS[label])), np.float32)
        # Other-class rows get a valid (first-subtype) target; their weight 0 removes them.
        onehot[np.arange(n), [subtype_index(s) if c == label else 0 for s, c in zip(subtypes, classes)]] = 1.0
        targets[output] = onehot
        weights[output] = np.where(own, base, 0.0).astype(np.float32)
    return targets, weights


# --- decoding ------------------------------------------------------------------------------

def _decode_with_pillow(path) -> np.ndarray:
    """TIFF (and odd modes) via the app's own loader; tf.io.decode_image has no TIFF decoder."""
    path = np.asarray(path).item()
    # Dataset images: skip the per-image H&E heuristic (~20 ms), its warning is discarded here.
    return load_image(path.decode() if isinstance(path, bytes) else str(path), check_histology=False).rgb


def decode_image(path, tiff: bool = True) -> tf.Tensor:
    """File path (string tensor) -> uint8 RGB (H, W, 3). PNG/JPEG/BMP/GIF in TF, TIFF via Pillow.

    tiff=False leaves the Python (Pillow) branch out of the graph: pure-TF graphs are what
    tf.distribute can rewrite and parallelise freely, so tables without TIFFs use that.
    """
    def other():
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.ensure_shape(image, [None, None, 3])

    if not tiff:
        return other()

    def pillow():
        image = tf.numpy_function(_decode_with_pillow, [path], tf.uint8, stateful=False)
        return tf.ensure_shape(image, [None, None, 3])

    is_tiff = tf.strings.regex_full_match(tf.strings.lower(path), r".*\.tiff?")
    return tf.cond(is_tiff, pillow, other)


# --- the dataset ---------------------------------------------------------------------------

def make_dataset(images: pd.DataFrame, hierarchy: str = HIERARCHICAL, batch_size: int = 32,
                 training: bool = False, augment: bool = False, input_size: int = INPUT_SIZE,
                 cache=True, subtype_weights: dict | None = None, shuffle_seed: int = 0,
                 augment_strength: float = 1.0, zoom: float = 1.0, normalizer=None) -> tf.data.Dataset:
    """Batches of (images float32 [B, S, S, 3] in 0..255, targets dict, sample-weights dict).

    training: shuffle every epoch. augment: random augmentation (after the cache, so it differs
    every epoch; augment_strength and zoom as core.data.augment.augment). normalizer: a fitted
    core.data.stain.StainNormalizer applied to each image at model size, before the cache (so once). cache: True (memory), False, or a file path prefix (for data larger than RAM).
    With augmentation the cache holds uint8 pixels (4x less memory; the +-0.5 rounding is far
    below the augmentation noise); without it, the exact float32 model input.
    """
    if images is None or len(images) == 0:
        raise ValueError("No images to build a dataset from (empty table; check the folder or filters)")
    missing = {"path", "subtype"} - set(images.columns)
    if missing:
        raise ValueError(f"Image table lacks column(s) {sorted(missing)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    table = images.reset_index(drop=True)
    if training:  # A full random order up front, so a bounded shuffle buffer is enough later.
        table = table.sample(frac=1.0, random_state=shuffle_seed).reset_index(drop=True)
    targets, weights = targets_and_weights(table, hierarchy, subtype_weights)
    augment_images = bool(augment)
    paths = table["path"].astype(str).tolist()
    has_tiff = any(p.lower().endswith((".tif", ".tiff")) for p in paths)

    normalise = normalizer is not None and normalizer.method != "none"

    def load(path, target, weight):
        pixels = to_model_input(decode_image(path, tiff=has_tiff), input_size)
        if normalise:  # the prediction path's normaliser, on the same uint8 model-size image
            pixels = tf.numpy_function(lambda rgb: normalizer(rgb)[0], [tf.cast(tf.round(pixels), tf.uint8)], tf.uint8)
            pixels = tf.cast(tf.ensure_shape(pixels, [input_size, input_size, 3]), tf.float32)
        pixels = tf.cast(tf.round(pixels), tf.uint8) if augment_images else pixels
        return pixels, target, weight

    dataset = tf.data.Dataset.from_tensor_slices((paths, targets, weights))
    dataset = dataset.map(load, num_parallel_calls=AUTOTUNE, deterministic=not training)
    if isinstance(cache, (str, os.PathLike)) and os.fspath(cache):
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        dataset = dataset.cache(os.fspath(cache))
    elif cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(min(len(table), 2048), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if augment_images:
        seeds = tf.data.Dataset.random(seed=shuffle_seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda batch, seed: (augment_batch(tf.cast(batch[0], tf.float32), seed, augment_strength, zoom),
                                 batch[1], batch[2]),
            num_parallel_calls=AUTOTUNE, deterministic=not training)
    return dataset.prefetch(AUTOTUNE)
