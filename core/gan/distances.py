"""Distances between real and synthetic patches that need no trained classifier.

A classifier's feature space (KID) says little when the classifier itself learnt little, so each
subtype's real and synthetic patches are also compared on what a pathologist's eye checks first:

- stain: sliced Wasserstein distance between the two sets' per-pixel H&E optical densities
  (core.data.stain), over random 1-D projections of the 3-D stain space;
- structure: the mean absolute difference of the log radially averaged power spectra
  (core.data.texture): too little fine detail, blur, or periodic artefacts all show here;
- micro-texture: the Jensen-Shannon distance between the sets' mean local binary pattern histograms.

`upsampling_peaks` looks for the checkerboard of an up-sampling generator: power at the 2-D
frequencies its 2x up-sampling stages leave behind, relative to the neighbouring frequencies and
to the real patches. Every distance is reported next to two references: two disjoint real sets (the
floor) and an untrained generator (the ceiling).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon

from core.data.stain import hed_concentrations
from core.data.texture import gray, lbp_histogram, radial_power_spectrum

PROJECTIONS, PIXELS = 64, 20_000


def hed_sliced_wasserstein(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between the sets' pixel H&E densities (log10 OD units)."""
    rng = np.random.default_rng(seed)

    def pixels(images):
        hed = hed_concentrations(np.asarray(images)).reshape(-1, 3)
        return hed[rng.choice(len(hed), min(PIXELS, len(hed)), replace=False)]

    a, b = pixels(real), pixels(fake)
    directions = rng.normal(size=(PROJECTIONS, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    quantiles = np.linspace(0.0, 1.0, 200)
    return float(np.mean([np.abs(np.quantile(a @ d, quantiles) - np.quantile(b @ d, quantiles)).mean()
                          for d in directions]))


def mean_spectrum(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    spectra = [radial_power_spectrum(gray(image)) for image in images]
    return spectra[0][0], np.mean([power for _, power in spectra], axis=0)


def spectrum_distance(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> float:
    """Mean |log10 P_real - log10 P_fake| over the frequencies (above the DC bin)."""
    _, p_real = mean_spectrum(real)
    _, p_fake = mean_spectrum(fake)
    return float(np.mean(np.abs(np.log10(p_real[1:] + 1e-12) - np.log10(p_fake[1:] + 1e-12))))


def lbp_distance(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> float:
    """Jensen-Shannon distance (base 2, 0..1) between the sets' mean uniform LBP histograms."""
    def histogram(images):
        return np.mean([lbp_histogram(gray(image)) for image in images], axis=0)

    return float(jensenshannon(histogram(real), histogram(fake), base=2))


DISTANCES = {"hed_sliced_wasserstein": hed_sliced_wasserstein, "power_spectrum": spectrum_distance,
             "lbp": lbp_distance}


def upsampling_frequencies(image_size: int, start: int = 4) -> list[float]:
    """Cycles/pixel of the periods left by each 2x up-sampling stage (start -> image_size)."""
    frequencies, resolution = [], start * 2
    while resolution <= image_size:
        frequencies.append(resolution / (2.0 * image_size))  # a 2-px period at that stage's resolution
        resolution *= 2
    return frequencies


def _mean_power_2d(images: np.ndarray) -> np.ndarray:
    """Mean 2-D power spectrum (fftshift-ed, DC in the middle) of the images' grey levels."""
    spectra = [np.abs(np.fft.fftshift(np.fft.fft2(g - g.mean()))) ** 2 for g in (gray(image) for image in images)]
    return np.mean(spectra, axis=0)


def upsampling_peaks(real: np.ndarray, fake: np.ndarray, image_size: int) -> dict:
    """At each up-sampling frequency f, the 2-D spectrum at (f, 0), (0, f) and (f, f), where the
    periodic traces of 2x up-sampling sit: the synthetic set's power there relative to the 8
    surrounding frequencies, divided by the same for the real set (prominence). A checkerboard
    makes those points stand out, prominence well above 1; `peak` marks prominence > 2."""
    p_real, p_fake = _mean_power_2d(real), _mean_power_2d(fake)
    size = p_real.shape[0]
    centre = size // 2

    def contrast(power, y, x):
        around = [power[(y + dy) % size, (x + dx) % size] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
        return power[y % size, x % size] / (np.mean(around) + 1e-12)

    found = {}
    for f in upsampling_frequencies(image_size):
        k = int(round(f * size))
        points = [(centre, centre + k), (centre + k, centre), (centre + k, centre + k)]
        prominence = float(np.mean([contrast(p_fake, y, x) / max(contrast(p_real, y, x), 1e-12) for y, x in points]))
        found[f"{f:.4f}"] = {"prominence": prominence, "peak": prominence > 2.0}
    return found


def classifier_free(real: np.ndarray, real_again: np.ndarray, fake: np.ndarray, untrained: np.ndarray,
                    seed: int = 0) -> dict:
    """Each distance for the synthetic set, the real-vs-real floor and the untrained ceiling."""
    return {name: {"synthetic": distance(real, fake, seed), "real_vs_real": distance(real, real_again, seed),
                   "untrained_generator": distance(real, untrained, seed)}
            for name, distance in DISTANCES.items()}
