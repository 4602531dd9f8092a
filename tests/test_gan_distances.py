"""Classifier-free GAN distances: each is about 0 between two draws of the same kind of image and
grows with the defect it is meant to see; up-sampling checkerboards show as spectral peaks."""

import numpy as np
from PIL import Image

from core.data.stain import hed_shift
from core.gan.distances import (
    classifier_free,
    hed_sliced_wasserstein,
    lbp_distance,
    spectrum_distance,
    upsampling_frequencies,
    upsampling_peaks,
)


def _fields(samples_dir, n=16, size=64, seed=0):
    """Random real crops (uint8, size x size) from the bundled samples."""
    rng = np.random.default_rng(seed)
    pictures = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(samples_dir.rglob("*.png"))]
    crops = []
    for i in range(n):
        picture = pictures[i % len(pictures)]
        top, left = rng.integers(0, picture.shape[0] - 2 * size), rng.integers(0, picture.shape[1] - 2 * size)
        crops.append(np.asarray(Image.fromarray(picture[top:top + 2 * size, left:left + 2 * size]).resize((size, size))))
    return np.stack(crops)


def test_each_distance_sees_its_defect(samples_dir):
    real, again = _fields(samples_dir, seed=0), _fields(samples_dir, seed=1)
    restained = np.stack([hed_shift(f, scale=(1.6, 0.6, 1.0)) for f in again])
    assert hed_sliced_wasserstein(real, restained) > 3 * hed_sliced_wasserstein(real, again)
    blurred = np.stack([np.asarray(Image.fromarray(f).resize((16, 16)).resize((64, 64), Image.Resampling.BILINEAR))
                        for f in again])
    assert spectrum_distance(real, blurred) > 3 * spectrum_distance(real, again)
    noise = np.random.default_rng(0).integers(0, 256, again.shape, dtype=np.uint8)
    assert lbp_distance(real, noise) > 3 * lbp_distance(real, again)
    report = classifier_free(real, again, blurred, noise)
    assert set(report) == {"hed_sliced_wasserstein", "power_spectrum", "lbp"}
    assert all(r["real_vs_real"] < r["untrained_generator"] for r in report.values())


def test_a_checkerboard_is_a_peak_at_the_upsampling_frequency(samples_dir):
    real = _fields(samples_dir, n=12, size=64)
    small = np.stack([np.asarray(Image.fromarray(f).resize((32, 32))) for f in real])
    nearest = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)  # 2-px blocks: the blocky generator
    checker = np.clip(nearest.astype(int) + 12 * (np.indices((64, 64)).sum(0) % 2)[None, ..., None], 0, 255)
    smooth = np.stack([np.asarray(Image.fromarray(f).resize((64, 64), Image.Resampling.BILINEAR)) for f in small])
    assert upsampling_frequencies(64) == [0.0625, 0.125, 0.25, 0.5]
    assert upsampling_peaks(real, checker.astype(np.uint8), 64)["0.5000"]["peak"]
    assert not any(p["peak"] for p in upsampling_peaks(real, smooth, 64).values())
