"""Does a model's call survive another lab's staining? Controlled shifts, counted changes.

Each held-out image is shifted in H&E stain space (haematoxylin and eosin densities scaled and
offset, several strengths, core.data.stain.hed_shift) and in brightness and contrast; for each
shift the report counts how often the stage-1 and the subtype call change from the unshifted
image's, the mean change of p(malignant) and how far the whole 8-subtype distribution moved
(total variation distance; p(malignant) of an easy image saturates near 0 or 1 and then moves by
nothing measurable, the subtype distribution does not). `python bench/stain_shift.py` runs it for a model
with and without stain normalisation.

Another source's copy of the same field is a shift too: most small BreakHis sets are copies squashed
to 224x224 px (SOURCE_SHIFTS), and a model that learnt sharpness as a source's mark changes its call
when a full-size field arrives as such a copy. core.training.field_run.source_shift_cv measures that on
a cross-validation's fold models, each on its own held-out full-size fields.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.data.stain import StainNormalizer, hed_shift

SHIFTS = {
    "haematoxylin x0.8": lambda rgb: hed_shift(rgb, scale=(0.8, 1.0, 1.0)),
    "haematoxylin x1.25": lambda rgb: hed_shift(rgb, scale=(1.25, 1.0, 1.0)),
    "eosin x0.7": lambda rgb: hed_shift(rgb, scale=(1.0, 0.7, 1.0)),
    "eosin x1.4": lambda rgb: hed_shift(rgb, scale=(1.0, 1.4, 1.0)),
    "H&E x1.3, +0.03 OD": lambda rgb: hed_shift(rgb, scale=(1.3, 1.3, 1.0), shift=(0.03, 0.03, 0.0)),
    "H&E x0.7, -0.03 OD": lambda rgb: hed_shift(rgb, scale=(0.7, 0.7, 1.0), shift=(-0.03, -0.03, 0.0)),
    "brightness +25": lambda rgb: np.clip(rgb.astype(np.int16) + 25, 0, 255).astype(np.uint8),
    "brightness -25": lambda rgb: np.clip(rgb.astype(np.int16) - 25, 0, 255).astype(np.uint8),
    "contrast x0.75": lambda rgb: _contrast(rgb, 0.75),
    "contrast x1.3": lambda rgb: _contrast(rgb, 1.3),
}


def _squashed(rgb: np.ndarray, method) -> np.ndarray:
    return rgb if rgb.shape[:2] == (224, 224) else np.asarray(Image.fromarray(rgb).resize((224, 224), method))


SOURCE_SHIFTS = {
    "squashed copy 224x224 (bilinear)": lambda rgb: _squashed(rgb, Image.Resampling.BILINEAR),
    "squashed copy 224x224 (nearest)": lambda rgb: _squashed(rgb, Image.Resampling.NEAREST),
}


def _contrast(rgb: np.ndarray, factor: float) -> np.ndarray:
    mean = rgb.reshape(-1, 3).mean(axis=0)
    return np.clip(np.round((rgb - mean) * factor + mean), 0, 255).astype(np.uint8)


def with_normalizer(predictor, normalizer: StainNormalizer):
    """The same predictor, its inputs stain-normalised by `normalizer` (a shallow copy)."""
    import copy

    normalised = copy.copy(predictor)
    normalised.normalizer = normalizer
    return normalised


def shift_report(predictor, images: list[np.ndarray], shifts: dict | None = None, labels=None) -> dict:
    """Per shift: share of images whose stage-1 / subtype call changed, mean |change of p(malignant)|,
    mean total variation distance between the unshifted and shifted joint subtype distributions.
    With the images' true `labels`, also "stage1_accuracy" of the unshifted and of each shifted set,
    from the same predictions."""
    shifts = shifts or SHIFTS
    base = predictor.predict(images)
    report, predicted = {}, {"unshifted": base}
    for name, shift in shifts.items():
        moved = predicted[name] = predictor.predict([shift(rgb) for rgb in images])
        report[name] = {
            "stage1_changed": float(np.mean([a.label != b.label for a, b in zip(base, moved)])),
            "subtype_changed": float(np.mean([a.subtype != b.subtype for a, b in zip(base, moved)])),
            "mean_abs_change_p_malignant": float(np.mean([abs(a.stage1["malignant"] - b.stage1["malignant"])
                                                          for a, b in zip(base, moved)])),
            "mean_subtype_distribution_shift": float(np.mean([_total_variation(a.subtype_probabilities(),
                                                                               b.subtype_probabilities())
                                                              for a, b in zip(base, moved)])),
        }
    report["all shifts"] = {key: float(np.mean([r[key] for r in report.values()]))
                            for key in next(iter(report.values()))}
    if labels is not None:
        report["stage1_accuracy"] = {name: float(np.mean([r.label == y for r, y in zip(results, labels)]))
                                     for name, results in predicted.items()}
    return report


def _total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    """Half the L1 distance: 0 for the same distribution, 1 for disjoint ones."""
    return 0.5 * sum(abs(p[k] - q[k]) for k in p)
