"""Can a classifier tell synthetic patches from real ones? The classifier two-sample test.

A small CNN is trained on half of the real and synthetic patches to tell them apart and scored
on the other half (Lopez-Paz & Oquab, ICLR 2017, "Revisiting classifier two-sample tests"). An
accuracy of 0.5 means it cannot (the sets are indistinguishable to it); 1.0 means every synthetic
patch gives itself away. Unlike a feature distance it needs no pretrained network, it reads as a
probability, and its binomial interval says how sure the number is. Real patches are split into
halves by source image where there are two or more images, so the classifier must learn what
real tissue looks like, not which fields were in its training half; the images are dealt so that
each half holds about half the patches (alternate images left a scoring half of 2 patches when one
image had most of them). A scoring half that still holds fewer than MIN_PATCHES is flagged.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from scipy.stats import binomtest

EPOCHS, BATCH = 12, 32  # fixed training budget: the same test for every generator
MIN_PATCHES = 8  # per set, and scored: fewer leave an interval of nearly [0, 1]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (good at small n and near 0 or 1)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def build_critic(size: int) -> keras.Model:
    """Three stride-2 convolutions and a logistic output: small, so it learns in seconds on a CPU,
    and deep enough to see nuclei, edges and stain (it tells noise or a smooth blob from tissue)."""
    layers = keras.layers
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x), name="two_sample_critic")


def _halves(n: int, groups, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """Indices of the training and the scoring half; by group (source image) when there are two or
    more, each group whole, largest first into the half with fewer patches (equal sizes in random order)."""
    if groups is not None and len(set(groups)) >= 2:
        groups = np.asarray(groups)
        names, counts = np.unique(groups, return_counts=True)
        order = rng.permutation(len(names))
        sizes, halves = [0, 0], ([], [])
        for i in order[np.argsort(-counts[order], kind="stable")]:
            side = int(sizes[1] < sizes[0])
            sizes[side] += counts[i]
            halves[side].append(names[i])
        first = np.isin(groups, halves[0])
        return np.flatnonzero(first), np.flatnonzero(~first), "by source image"
    order = rng.permutation(n)
    return order[: n // 2], order[n // 2:], "by patch"


def two_sample_test(real: np.ndarray, synthetic: np.ndarray, real_groups=None, seed: int = 0) -> dict:
    """Accuracy of a classifier trained on half the patches, on the other half (balanced classes).

    real, synthetic: uint8 [N, S, S, 3]; real_groups: source image of each real patch.
    """
    n = min(len(real), len(synthetic))
    if n < MIN_PATCHES:
        raise ValueError(f"The two-sample test needs at least {MIN_PATCHES} patches per set, got {len(real)} and "
                         f"{len(synthetic)}")
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(real))[:n]
    real, groups = real[keep], None if real_groups is None else [real_groups[i] for i in keep]
    real_fit, real_score, split = _halves(n, groups, rng)
    fake = rng.permutation(len(synthetic))[:n]
    fake_fit, fake_score = fake[:len(real_fit)], fake[len(real_fit):len(real_fit) + len(real_score)]
    fit_x = np.concatenate([real[real_fit], synthetic[fake_fit]])
    fit_y = np.concatenate([np.ones(len(real_fit)), np.zeros(len(fake_fit))]).astype(np.float32)
    score_x = np.concatenate([real[real_score], synthetic[fake_score]])
    score_y = np.concatenate([np.ones(len(real_score)), np.zeros(len(fake_score))])
    # Flips and turns of the training half: the critic must not win on orientation, which tissue lacks.
    fit_x = np.concatenate([fit_x, fit_x[:, ::-1], np.rot90(fit_x, 1, (1, 2)), np.rot90(fit_x, 2, (1, 2))])
    fit_y = np.tile(fit_y, 4)
    keras.utils.set_random_seed(seed)
    critic = build_critic(real.shape[1])
    critic.compile(keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    critic.fit(fit_x.astype(np.float32), fit_y, batch_size=BATCH, epochs=EPOCHS, shuffle=True, verbose=0)
    predicted = np.asarray(critic.predict(score_x.astype(np.float32), batch_size=128, verbose=0))[:, 0] > 0.5
    correct = int((predicted == score_y.astype(bool)).sum())
    low, high = wilson_interval(correct, len(score_y))
    return {"accuracy": correct / len(score_y), "ci95": [low, high], "n_scored": int(len(score_y)),
            # Images are kept whole, so one image with most of the patches leaves few to score: said, not hidden.
            "too_few_scored": bool(len(score_y) < MIN_PATCHES),
            "n_fitted": int(len(real_fit) + len(fake_fit)), "real_images": None if groups is None else len(set(groups)),
            "split": split, "p_value": float(binomtest(correct, len(score_y), 0.5, alternative="greater").pvalue),
            "critic": f"3-stage CNN, {EPOCHS} epochs, flips and turns of its training half"}
