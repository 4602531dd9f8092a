"""The stain model of the project: H&E colour deconvolution (Ruifrok & Johnston, 2001).

Beer-Lambert optical density per channel, and the standard haematoxylin / eosin / DAB vectors.
The H&E out-of-distribution check (core.data.histology), the training pipeline's HED jitter
(core.data.augment) and stain normalisation all use these, so there is one stain model.
"""

from __future__ import annotations

import numpy as np

# Standard Ruifrok-Johnston stain vectors (optical density of haematoxylin, eosin, DAB), unit rows.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Beer-Lambert optical density per channel (log10), 0 for white."""
    return -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)


def hed_concentrations(rgb: np.ndarray) -> np.ndarray:
    """Colour deconvolution into haematoxylin, eosin and DAB optical densities (H x W x 3)."""
    return optical_density(rgb) @ HED_FROM_RGB.astype(np.float32)
