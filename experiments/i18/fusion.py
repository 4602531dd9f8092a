"""Late fusion: the CNN's calibrated heads pooled with a linear head on hand-crafted features.

On the 757 real images a small CNN trained from scratch learns stage 1 (benign/malignant) but not
the subtypes, which colour, stain and texture statistics separate better (README, issue 18). A
model card with a "fusion" block therefore adds a `FeatureHead` to the CNN:

    image -> core.evaluation.baselines.image_features (colour histograms, HED stain statistics,
             LBP texture, gradients) -> standardise -> multinomial logistic regression
          -> p(class) and p(subtype | class) of the features

and each stage is the normalised weighted geometric mean (log-linear pooling) of the CNN's and the
features' calibrated probabilities:

    p(class)           ~ p_cnn(class)^w1 * p_feat(class)^(1 - w1)
    p(subtype | class) ~ p_cnn(subtype | class)^w2 * p_feat(subtype | class)^(1 - w2)

w1, w2 and the regression's C are chosen by patient-wise cross-validation on validation patients
(experiments/i18/probe_fusion.py). The regression is stored as plain numbers in the card's folder
(feature_head.json: scaler mean/scale, coefficients, classes), never as a pickle, so loading a
model folder cannot run code. Grad-CAM explains the CNN part only; the card says so.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from core.data.labels import CLASS_OF_SUBTYPE, CLASSES, STAGE1_OUTPUT, STAGE2_OUTPUTS, SUBTYPES, SUBTYPES_BY_CLASS

FEATURES_OUTPUT = "features_subtype"  # the feature head's joint p(subtype) (N, 8) among the head outputs
HEAD_FILE = "feature_head.json"
SMOOTHING = 1e-3  # a subtype absent from the training patients keeps a sliver of probability


def _features(images: list[np.ndarray]) -> np.ndarray:
    # The baseline's own features: one definition for the baseline the model must beat and the
    # fused model that uses them.
    from core.evaluation.baselines import image_features

    return np.stack([image_features(np.asarray(rgb, np.uint8)) for rgb in images])


@dataclasses.dataclass
class FeatureHead:
    """Standardised features -> multinomial logistic regression over the subtypes (joint p)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (classes seen, features)
    intercept: np.ndarray
    classes: list[str]  # subtypes seen in training, in the regression's order
    c: float
    features: str = "colour_texture v1 (core.evaluation.baselines.image_features)"

    @classmethod
    def fit(cls, x: np.ndarray, subtypes, c: float = 0.1, sample_weight=None) -> "FeatureHead":
        """Fit on training images' features; classes balanced unless sample weights are given."""
        scaler = StandardScaler().fit(x)
        model = LogisticRegression(C=c, class_weight=None if sample_weight is not None else "balanced", max_iter=3000)
        model.fit(scaler.transform(x), np.asarray(subtypes), sample_weight=sample_weight)
        return cls(scaler.mean_, scaler.scale_, model.coef_, model.intercept_, [str(s) for s in model.classes_], float(c))

    def joint(self, x: np.ndarray) -> np.ndarray:
        """Features (N, F) -> joint p(subtype) (N, 8) in SUBTYPES order."""
        z = (np.asarray(x, np.float64) - self.mean) / np.where(self.scale > 0, self.scale, 1.0)
        logits = z @ self.coef.T + self.intercept
        if len(self.classes) == 2:  # sklearn's binary case: one coefficient row for the second class
            logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        out = np.zeros((len(p), len(SUBTYPES)))
        out[:, [SUBTYPES.index(s) for s in self.classes]] = p
        return (1 - SMOOTHING) * out + SMOOTHING / len(SUBTYPES)

    def outputs(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        """{FEATURES_OUTPUT: joint p (N, 8)} for uint8 RGB images (merged into the CNN's head outputs)."""
        return {FEATURES_OUTPUT: self.joint(_features(images)).astype(np.float32)}

    def to_dict(self) -> dict:
        return {"features": self.features, "c": self.c, "classes": self.classes, "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureHead":
        return cls(np.asarray(d["mean"], float), np.asarray(d["scale"], float), np.asarray(d["coef"], float),
                   np.asarray(d["intercept"], float), list(d["classes"]), float(d["c"]), d.get("features", ""))


def class_and_within(joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joint p over the 8 subtypes -> (p(class) (N, 2), p(subtype | class) (N, 8))."""
    joint = np.asarray(joint, np.float64)
    p_class = np.stack([joint[:, [SUBTYPES.index(s) for s in SUBTYPES_BY_CLASS[c]]].sum(1) for c in CLASSES], 1)
    of_class = np.array([CLASSES.index(CLASS_OF_SUBTYPE[s]) for s in SUBTYPES])
    return p_class, joint / np.maximum(p_class[:, of_class], 1e-12)


def _pool(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    """Normalised weighted geometric mean of two probability arrays along the last axis."""
    log = w * np.log(np.clip(a, 1e-12, 1.0)) + (1.0 - w) * np.log(np.clip(b, 1e-12, 1.0))
    log -= log.max(axis=-1, keepdims=True)
    p = np.exp(log)
    return p / p.sum(axis=-1, keepdims=True)


def fuse(p_class: np.ndarray, within: np.ndarray, feature_joint: np.ndarray, w_stage1: float,
         w_subtype: float) -> tuple[np.ndarray, np.ndarray]:
    """CNN (p(class) (N, 2), p(subtype | class) (N, 8)) and the feature head's joint p (N, 8) ->
    the fused (p(class), p(subtype | class)). w = 1: the CNN alone; w = 0: the features alone."""
    feat_class, feat_within = class_and_within(feature_joint)
    fused_within = np.array(within, np.float64, copy=True)
    for c in CLASSES:
        own = [SUBTYPES.index(s) for s in SUBTYPES_BY_CLASS[c]]
        fused_within[:, own] = _pool(np.asarray(within)[:, own], feat_within[:, own], w_subtype)
    return _pool(np.asarray(p_class), feat_class, w_stage1), fused_within


def fuse_heads(outputs: dict[str, np.ndarray], w_stage1: float, w_subtype: float) -> dict[str, np.ndarray]:
    """Calibrated hierarchical head outputs with FEATURES_OUTPUT -> the same heads, fused (other
    entries, e.g. per-view outputs, unchanged)."""
    if FEATURES_OUTPUT not in outputs:
        return outputs
    within = np.zeros((len(outputs[STAGE1_OUTPUT]), len(SUBTYPES)))
    for c in CLASSES:
        within[:, [SUBTYPES.index(s) for s in SUBTYPES_BY_CLASS[c]]] = outputs[STAGE2_OUTPUTS[c]]
    p_class, fused_within = fuse(outputs[STAGE1_OUTPUT], within, outputs[FEATURES_OUTPUT], w_stage1, w_subtype)
    fused = {**outputs, STAGE1_OUTPUT: p_class}
    for c in CLASSES:
        fused[STAGE2_OUTPUTS[c]] = fused_within[:, [SUBTYPES.index(s) for s in SUBTYPES_BY_CLASS[c]]]
    return fused
