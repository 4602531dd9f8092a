"""Texture statistics of image fields, computed the same way wherever they are needed.

Local binary pattern histograms (scikit-image) describe micro-texture; the radially averaged power
spectrum describes how much structure there is at each spatial frequency, and exposes periodic
artefacts (the checkerboard of an up-sampling generator is a peak at its up-sampling frequency).
Used by the colour/texture baseline (core.evaluation.baselines) and the GAN quality report.
"""

from __future__ import annotations

import numpy as np
from skimage.feature import local_binary_pattern


def gray(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, np.float64).mean(axis=-1)


def lbp_histogram(gray_image: np.ndarray, neighbours: int = 8, radius: float = 1.0) -> np.ndarray:
    """Normalised histogram of rotation-invariant uniform local binary patterns (P + 2 bins)."""
    codes = local_binary_pattern(np.asarray(gray_image).astype(np.uint8), neighbours, radius, method="uniform")
    return np.bincount(codes.astype(np.int64).ravel(), minlength=neighbours + 2)[: neighbours + 2] / codes.size


def radial_power_spectrum(gray_image: np.ndarray, bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(frequency in cycles/pixel at each bin centre, mean power) of a square image's 2-D spectrum,
    averaged over rings; the mean is removed and a Hann window limits edge leakage."""
    image = np.asarray(gray_image, np.float64)
    size = image.shape[0]
    window = np.outer(np.hanning(size), np.hanning(image.shape[1]))
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2((image - image.mean()) * window))) ** 2
    fy, fx = np.meshgrid(np.fft.fftshift(np.fft.fftfreq(size)), np.fft.fftshift(np.fft.fftfreq(image.shape[1])),
                         indexing="ij")
    radius = np.hypot(fy, fx)
    bins = bins or size // 2
    edges = np.linspace(0.0, 0.5, bins + 1)
    which = np.clip(np.digitize(radius, edges) - 1, 0, bins - 1)
    inside = radius <= 0.5
    power = np.bincount(which[inside], weights=spectrum[inside], minlength=bins) / \
        np.maximum(np.bincount(which[inside], minlength=bins), 1)
    return (edges[:-1] + edges[1:]) / 2.0, power
