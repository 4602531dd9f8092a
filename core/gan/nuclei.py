"""Nuclei per patch: blobs in the hematoxylin channel, with detector settings fixed once for all.

A pathologist's first look at synthetic tissue is for nuclei: are there any, how many, how large.
The count is a Laplacian-of-Gaussian blob detector (scikit-image's blob_log, the standard for
round blobs of a known size range) run on the hematoxylin optical density of H&E colour
deconvolution (core.data.stain, the project's one stain model). Its settings are written here and
never fitted per run, so synthetic and real patches, and two generators, are counted by the same
rule; they are stated in microns and converted with the patches' scale.

Radii: nuclei of breast tissue are 5-12 um across (lymphocytes to carcinoma cells), hence 2.5-6 um.
The threshold (LoG response in hematoxylin optical density) was chosen once and is kept fixed.
Checked by eye on 64-px real patches of the training split at 1.5625 um/px with the detections
drawn (`overlay`): it marks the dark nuclei of epithelium and stroma and leaves eosin-pink
collagen and lumina mostly empty, but it also fires on dark fibre texture in the grey-toned fields
of one lab, and confluent nuclei count as few blobs. So the count compares two sets of patches by
one rule; it is no cell count.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.feature import blob_log

from core.data.stain import hed_concentrations

NUCLEUS_RADIUS_UM = (2.5, 6.0)  # smallest and largest nucleus radius counted
LOG_THRESHOLD = 0.1  # minimum scale-normalised LoG response, hematoxylin optical density units
SIGMAS = 5  # scales tried between the two radii
OVERLAP = 0.5  # blobs sharing more than this share of area are one nucleus


def detect(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """Nuclei of one uint8 RGB patch at mpp um/px: an array of (row, column, radius in px)."""
    hematoxylin = np.clip(hed_concentrations(np.asarray(rgb))[..., 0], 0.0, None)
    low, high = (r / mpp / math.sqrt(2.0) for r in NUCLEUS_RADIUS_UM)  # radius = sigma * sqrt(2) in 2-D
    blobs = blob_log(hematoxylin, min_sigma=low, max_sigma=high, num_sigma=SIGMAS, threshold=LOG_THRESHOLD,
                     overlap=OVERLAP, exclude_border=False)
    if not len(blobs):
        return np.zeros((0, 3))
    return np.column_stack([blobs[:, 0], blobs[:, 1], blobs[:, 2] * math.sqrt(2.0)])


def count(images: np.ndarray, mpp: float) -> np.ndarray:
    """Nuclei per patch of a set of uint8 patches."""
    return np.array([len(detect(image, mpp)) for image in images])


def compare(real: np.ndarray, synthetic: np.ndarray, mpp: float, tolerance: float = 0.3) -> dict:
    """Mean nuclei per patch, real vs synthetic, and whether synthetic is within +-tolerance of real
    (the issue's goal is 30 %); also per square millimetre, so different patch sizes compare, and
    the mean radius of the detected nuclei in microns (their size). What cannot be measured (the
    radius where no nucleus was found, the ratio where real has none) is None, JSON's null: a NaN
    made quality.json unreadable outside Python."""
    out = {"tolerance": tolerance}
    area = real.shape[1] * real.shape[2] * mpp * mpp / 1e6  # patch area in mm^2
    for name, images in (("real", real), ("synthetic", synthetic)):
        found = [detect(image, mpp) for image in images]
        counts = np.array([len(f) for f in found])
        radii = np.concatenate([f[:, 2] for f in found]) * mpp if found else np.zeros(0)
        mean = float(counts.mean()) if len(counts) else None
        out.update({f"{name}_per_patch": mean, f"{name}_std": float(counts.std()) if len(counts) else None,
                    f"{name}_per_mm2": None if mean is None else mean / area, f"n_{name}": int(len(images)),
                    f"{name}_radius_um": float(radii.mean()) if len(radii) else None})
    real_mean, synthetic_mean = out["real_per_patch"], out["synthetic_per_patch"]
    out["ratio"] = synthetic_mean / real_mean if real_mean and synthetic_mean is not None else None
    out["within_tolerance"] = out["ratio"] is not None and bool(abs(out["ratio"] - 1.0) <= tolerance)
    return out


def radius_text(radius_um) -> str:
    """A mean radius as the tables show it: "4.2" um, or "none found"."""
    return "none found" if radius_um is None else f"{radius_um:.1f}"


def overlay(rgb: np.ndarray, mpp: float, colour=(0, 255, 0)) -> np.ndarray:
    """The patch with a circle around every detected nucleus: how the count was made, to check by eye."""
    from skimage.draw import circle_perimeter

    out = np.array(rgb, copy=True)
    for row, column, radius in detect(rgb, mpp):
        rr, cc = circle_perimeter(int(round(row)), int(round(column)), max(1, int(round(radius))), shape=out.shape[:2])
        out[rr, cc] = colour
    return out
