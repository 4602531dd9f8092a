"""Hand-crafted colour, stain, texture and nucleus features of a field at one physical scale.

On a few hundred training images a small CNN from scratch does not learn what a pathologist (and
a logistic regression on these numbers) sees first: how much haematoxylin, how the nuclei are sized
and packed, how regular the texture is. These features give that signal to the fused model
(core.model.fusion); they are computed on the field at the model's physical scale
(core.model.tiling.scaled_field), so they do not depend on the file's pixel size.

- stain: HED colour deconvolution (core.data.stain): mean, spread and percentiles of H and E, and
  the share of strongly haematoxylin-stained pixels (nuclear area);
- texture: rotation-invariant uniform LBP histograms of the grey and the haematoxylin image at
  three radii (scikit-image, core.data.texture), and grey-level co-occurrence (GLCM / Haralick)
  properties at three distances, averaged over four directions (scikit-image);
- nuclei: connected blobs of strong haematoxylin (scikit-image): count per area, size and shape
  statistics.
"""

from __future__ import annotations

import numpy as np
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import label, regionprops_table
from skimage.morphology import disk, opening

from core.data.stain import hed_concentrations
from core.data.texture import lbp_histogram

LBP_SETTINGS = ((8, 1.0), (16, 2.0), (24, 3.0))
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
GLCM_LEVELS = 32
NUCLEUS_H = 0.35  # haematoxylin optical density above which a pixel counts as nuclear
MAX_SIDE = 320  # a larger field (40X at a coarse scale) is read in its central window this size
FEATURES_VERSION = 1  # bump when the features change: cached features and fitted heads then differ


def _to_levels(values: np.ndarray, low: float, high: float, levels: int) -> np.ndarray:
    return np.clip((values - low) / (high - low) * levels, 0, levels - 1).astype(np.uint8)


def _glcm(levels: np.ndarray) -> np.ndarray:
    matrix = graycomatrix(levels, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True)
    return np.concatenate([graycoprops(matrix, p).mean(axis=1) for p in GLCM_PROPERTIES])


def _nuclei(haematoxylin: np.ndarray) -> np.ndarray:
    mask = opening(haematoxylin > NUCLEUS_H, disk(1))
    labels = label(mask)
    area_px = mask.size
    if labels.max() == 0:
        return np.zeros(7)
    props = regionprops_table(labels, properties=("area", "eccentricity", "solidity"))
    areas = props["area"].astype(np.float64)
    return np.array([labels.max() / area_px * 1e3, mask.mean(), np.log1p(areas.mean()), np.log1p(np.median(areas)),
                     areas.std() / max(areas.mean(), 1e-9), props["eccentricity"].mean(), props["solidity"].mean()])


def field_features(rgb: np.ndarray) -> np.ndarray:
    """One uint8 RGB field (at the model's scale) -> its feature vector (float64, fixed length)."""
    rgb = np.asarray(rgb, np.uint8)
    top, left = max(0, (rgb.shape[0] - MAX_SIDE) // 2), max(0, (rgb.shape[1] - MAX_SIDE) // 2)
    rgb = rgb[top:top + MAX_SIDE, left:left + MAX_SIDE]  # statistics of texture, bounded cost
    hed = hed_concentrations(rgb)
    h, e = hed[..., 0], hed[..., 1]
    stain = np.concatenate([[h.mean(), h.std(), e.mean(), e.std(), (h > NUCLEUS_H).mean(),
                             float(np.corrcoef(h.ravel(), e.ravel())[0, 1]) if h.std() > 0 and e.std() > 0 else 0.0],
                            np.percentile(h, [10, 50, 90]), np.percentile(e, [10, 50, 90])])
    grey = rgb.astype(np.float64).mean(axis=-1)
    h_grey = _to_levels(h, 0.0, 1.2, 256)
    texture = np.concatenate([lbp_histogram(image, p, r) for image in (grey, h_grey) for p, r in LBP_SETTINGS])
    glcm = np.concatenate([_glcm(_to_levels(grey, 0.0, 256.0, GLCM_LEVELS)),
                           _glcm(_to_levels(h, 0.0, 1.2, GLCM_LEVELS))])
    return np.nan_to_num(np.concatenate([stain, texture, glcm, _nuclei(h)]).astype(np.float64))
