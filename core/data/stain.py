"""The stain model of the project: H&E colour deconvolution (Ruifrok & Johnston, 2001).

Beer-Lambert optical density per channel, and the standard haematoxylin / eosin / DAB vectors.
The H&E out-of-distribution check (core.data.histology), the training pipeline's HED jitter
(core.data.augment) and stain normalisation all use these, so there is one stain model.
"""

from __future__ import annotations

import numpy as np

from core.errors import UserInputError

# Standard Ruifrok-Johnston stain vectors (optical density of haematoxylin, eosin, DAB), unit rows.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Beer-Lambert optical density per channel (log10), 0 for white."""
    return -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)


def summed_optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density summed over the three channels, per pixel (0 for white): how much stain.
    Added channel by channel: NumPy's reduction over a last axis of size 3 takes its slow path."""
    density = optical_density(rgb)
    return density[..., 0] + density[..., 1] + density[..., 2]


def hed_concentrations(rgb: np.ndarray) -> np.ndarray:
    """Colour deconvolution into haematoxylin, eosin and DAB optical densities (H x W x 3)."""
    return optical_density(rgb) @ HED_FROM_RGB.astype(np.float32)


# --- stain normalisation ------------------------------------------------------------------------
# Macenko (2009) and Reinhard (2001) come from torchstain's NumPy backend (MIT licence, ~75 kB, no
# PyTorch needed): a maintained implementation of both, fitted and applied on uint8 RGB. Chosen over
# staintools (needs spams, unmaintained), HistomicsTK and TIAToolbox (hundreds of MB, heavy compiled
# dependencies) for an app that must install in minutes; Vahadane is left out for that reason.
# What is ours: fitting to several reference images at once, the fall-back for blank fields, and
# one class per method with fit/transform behind get_normalizer(name) (TIAToolbox's shape).

_MIN_TISSUE_FOR_NORMALISATION = 0.05  # below this share of stained pixels a field is "nearly white"
_REFERENCE_THUMBNAIL = 128  # reference images are fitted as one mosaic of thumbnails this size


class UnknownStainMethod(UserInputError):
    """A stain normalisation name that is not in NORMALIZERS."""


def tissue_share(rgb: np.ndarray) -> float:
    """Share of pixels that carry stain (summed optical density above background)."""
    return float((summed_optical_density(np.asarray(rgb)) > 0.3).mean())


def _reference_mosaic(images: list[np.ndarray]) -> np.ndarray:
    """Thumbnails of the reference fields with enough tissue, stacked into one image to fit on."""
    from PIL import Image

    tiles = [np.asarray(Image.fromarray(np.asarray(rgb, np.uint8)).resize(
        (_REFERENCE_THUMBNAIL, _REFERENCE_THUMBNAIL), Image.Resampling.BILINEAR))
        for rgb in images if tissue_share(rgb) >= _MIN_TISSUE_FOR_NORMALISATION]
    if not tiles:
        raise UserInputError("No reference image has enough stained tissue to fit a stain normaliser on")
    return np.concatenate(tiles, axis=0)


class StainNormalizer:
    """The identity ("none"), and the base of every fitted normaliser (TIAToolbox's shape):
    `fit(images)` on reference fields, `transform(rgb) -> (uint8 RGB, note or None)`.

    `transform` never raises on an image: a nearly white field, or one whose stains cannot be
    separated, comes back unchanged with a note saying so. `to_dict` / `from_dict` store a fitted
    normaliser in a model card. A subclass says how to build its torchstain object, how to load
    and read back its reference, and how to apply it.
    """

    method = "none"

    def __init__(self, reference: dict | None = None, fitted_on: str = ""):
        self.reference, self.fitted_on = reference or {}, fitted_on
        self._engine = self._build()
        if self.reference:
            self._load(self._engine, self.reference)

    # --- what a method defines ---------------------------------------------------------------
    def _build(self):
        return None

    def _load(self, engine, reference: dict) -> None:
        pass

    def _read(self, engine) -> dict:
        return {}

    def _apply(self, engine, rgb: np.ndarray) -> np.ndarray:
        return rgb

    # --- the same for every method -----------------------------------------------------------
    def fit(self, images: list[np.ndarray], description: str = "") -> "StainNormalizer":
        """Fit to one or several reference fields (as one mosaic of thumbnails; blank ones left out)."""
        if self._engine is None:
            return self
        mosaic = _reference_mosaic(images)
        self._engine.fit(mosaic)
        self.reference = self._read(self._engine)
        self.fitted_on = description or f"{len(mosaic) // _REFERENCE_THUMBNAIL} reference images"
        return self

    def transform(self, rgb: np.ndarray) -> tuple[np.ndarray, str | None]:
        rgb = np.asarray(rgb, np.uint8)
        if self._engine is None:
            return rgb, None
        if tissue_share(rgb) < _MIN_TISSUE_FOR_NORMALISATION:
            return rgb, f"{self.method} stain normalisation skipped: the field is nearly white"
        try:
            with np.errstate(invalid="raise", divide="raise"):  # a flat field divides by a zero spread
                normalised = np.asarray(self._apply(self._engine, rgb))
        except (ValueError, np.linalg.LinAlgError, IndexError, FloatingPointError) as error:
            return rgb, f"{self.method} stain normalisation skipped: stains could not be separated ({error})"
        if not np.isfinite(normalised).all():
            return rgb, f"{self.method} stain normalisation skipped: it gave undefined pixels"
        return np.clip(normalised, 0, 255).astype(np.uint8), None

    __call__ = transform

    def to_dict(self) -> dict:
        return {"method": self.method, "reference": self.reference, "fitted_on": self.fitted_on,
                "implementation": "torchstain (NumPy backend)" if self._engine is not None else None}

    @staticmethod
    def from_dict(values: dict | None) -> "StainNormalizer":
        """The normaliser a model card stores (no block: the identity)."""
        values = values or {}
        return get_normalizer(values.get("method", "none"), values.get("reference"), values.get("fitted_on", ""))


def fast_macenko():
    """torchstain's NumPy Macenko with one change, for speed: the per-pixel stain concentrations
    are the pseudo-inverse of the 3x2 stain matrix times the optical densities, the same least-
    squares solution torchstain gets from np.linalg.lstsq with one right-hand side per pixel
    (two thirds of a normalisation: 17 -> 6 ms at 224 px).

    Why a private override: torchstain offers no public hook for the concentration step, only its
    name-mangled private method. torchstain is pinned in requirements.txt, and tests/test_stain.py
    checks that the method still exists under this name and that the results equal the original
    class's, so an upgrade that renames it fails a test instead of silently going slow."""
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    class Macenko(NumpyMacenkoNormalizer):
        def _NumpyMacenkoNormalizer__find_concentration(self, OD, HE):  # noqa: N802, N803 - torchstain's names
            return np.linalg.pinv(HE) @ np.reshape(OD, (-1, 3)).T

    return Macenko()


class MacenkoNormalizer(StainNormalizer):
    """Macenko et al. (2009): the image's own H and E vectors, mapped onto the reference's."""

    method = "macenko"

    def _build(self):
        return fast_macenko()

    def _load(self, engine, reference):
        engine.HERef, engine.maxCRef = np.array(reference["stain_matrix"]), np.array(reference["max_concentrations"])

    def _read(self, engine):
        return {"stain_matrix": engine.HERef.tolist(), "max_concentrations": np.asarray(engine.maxCRef).tolist()}

    def _apply(self, engine, rgb):
        return engine.normalize(rgb, stains=False)[0]


class ReinhardNormalizer(StainNormalizer):
    """Reinhard et al. (2001): the mean and spread of each Lab channel matched to the reference's."""

    method = "reinhard"

    def _build(self):
        from torchstain.numpy.normalizers import NumpyReinhardNormalizer

        return NumpyReinhardNormalizer()

    def _load(self, engine, reference):
        engine.target_means, engine.target_stds = np.array(reference["lab_means"]), np.array(reference["lab_stds"])

    def _read(self, engine):
        return {"lab_means": np.asarray(engine.target_means).tolist(),
                "lab_stds": np.asarray(engine.target_stds).tolist()}

    def _apply(self, engine, rgb):
        return engine.normalize(rgb)


NORMALIZERS = {cls.method: cls for cls in (StainNormalizer, MacenkoNormalizer, ReinhardNormalizer)}
STAIN_METHODS = tuple(NORMALIZERS)  # the choices of every --stain-norm option


def get_normalizer(method: str, reference: dict | None = None, fitted_on: str = "") -> StainNormalizer:
    """The normaliser registered under `method`: unfitted, or with a reference stored in a card."""
    if method not in NORMALIZERS:
        raise UnknownStainMethod(f"Unknown stain normalisation {method!r}; choose one of {STAIN_METHODS}")
    return NORMALIZERS[method](reference, fitted_on)


def hed_shift(rgb: np.ndarray, scale=(1.0, 1.0, 1.0), shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A controlled stain change: each of H, E, D density -> density * scale + shift (log10 OD),
    as another lab's staining would be (the NumPy twin of core.data.augment.hed_jitter)."""
    hed = hed_concentrations(rgb) * np.asarray(scale, np.float32) + np.asarray(shift, np.float32)
    density = hed @ RGB_FROM_HED.astype(np.float32)
    return np.clip(np.round(256.0 * np.power(10.0, -density) - 1.0), 0, 255).astype(np.uint8)
