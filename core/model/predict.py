"""Images -> hierarchical predictions with a refer-to-pathologist flag.

A `Predictor` wraps one loaded classifier folder. It preprocesses with `core.data.preprocess` (the one
transform used in training), runs a compiled forward pass, and turns the heads into a
`Prediction`: stage 1 (benign/malignant), stage 2 (subtype within the chosen class) and a
`refer` flag whenever the joint confidence is low or the model is a demo. Flat 8-subtype models
are read the same way, so the rest of the app never needs to know which kind it has. An
ensemble (core.model.ensemble) is a Predictor too, whose `members` are classifiers; a single
model's `members` are `[itself]`, so Grad-CAM and evaluation treat both alike. Load either with
core.model.loading.load_predictor, which picks the class from the card's kind.

    python -m core predict IMG... [--model DIR] [--json] [--tta] [--threshold T]
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf

from core.data.labels import (
    CLASSES,
    FLAT_OUTPUT,
    HIERARCHICAL,
    STAGE1_OUTPUT,
    STAGE2_OUTPUTS,
    SUBTYPES,
    SUBTYPES_BY_CLASS,
    pretty,
)
from core.data.preprocess import batch_for_model
from core.data.stain import StainNormalizer
from core.model.calibration import apply_temperature
from core.model.folders import load_model_folder
from core.model.views import VIEWS, dihedral_views, mean_over_views, uncertainty_of
from core.paths import DEFAULT_MODEL_DIR

DEFAULT_REFER_THRESHOLD = 0.7
DEMO_REASON = "demo model: not validated"


@dataclasses.dataclass
class Prediction:
    """One image's result. `confidence` = p(label) * p(subtype | label)."""

    stage1: dict[str, float]
    label: str
    stage2: dict[str, float]  # subtypes of `label`, from the head stage 1 chose
    other_stage2: dict[str, float]  # subtypes of the other class, for context
    subtype: str
    confidence: float
    refer: bool
    refer_reasons: list[str]
    tta: bool = False
    # How much the ensemble members or the 8 test-time views disagree (see `uncertainty_of`); None
    # for a single model without test-time augmentation.
    uncertainty: dict | None = None

    @property
    def p_label(self) -> float:
        return self.stage1[self.label]

    @property
    def p_subtype(self) -> float:
        return self.stage2[self.subtype]

    def subtype_probabilities(self) -> dict[str, float]:
        """Joint p(subtype) = p(class) * p(subtype | class) over all 8 subtypes (sums to 1)."""
        within = {**self.stage2, **self.other_stage2}
        return {s: self.stage1[c] * within[s] for c in CLASSES for s in SUBTYPES_BY_CLASS[c]}

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "p_label": self.p_label, "p_subtype": self.p_subtype}

    def summary(self, subtype_reliable: bool = True) -> str:
        """One line for the CLI; an unreliable subtype head (core.app.registry.subtype_reliability)
        prints its subtype as such rather than as a finding."""
        flag = "REFER: " + "; ".join(self.refer_reasons) if self.refer else "no referral flag"
        subtype = f"{pretty(self.subtype)} ({self.p_subtype:.2f})"
        if not subtype_reliable:
            subtype = f"subtype not reliable for this model (most probable: {subtype})"
        return f"{self.label} ({self.p_label:.2f}) | {subtype} | confidence {self.confidence:.2f} | {flag}"


@dataclasses.dataclass
class CaseDecision:
    """One case's call from several images (see `case_decision`)."""

    label: str
    subtype: str
    p_class: dict[str, float]  # mean p(class) over the images
    p_subtype: dict[str, float]  # mean p(subtype | label) over the images, subtypes of `label`

    @property
    def confidence(self) -> float:
        return self.p_class[self.label] * self.p_subtype[self.subtype]


def case_decision(members, malignant_threshold: float = 0.5) -> CaseDecision:
    """THE case-level rule (app case table and patient-level evaluation both use it).

    Mean stage-1 probability over the images -> malignant when it reaches `malignant_threshold`
    (the validated case threshold of the model card; 0.5 without one); then subtype = argmax of
    the mean p(subtype | class) within that class, i.e. the same stage 1 -> stage 2 hierarchy as
    one image. members: Predictions, or (p(class) in CLASSES order, p(subtype | its class) in
    SUBTYPES order) pairs of arrays.
    """
    members = list(members)
    if not members:
        raise ValueError("case_decision needs at least one image")
    stage1, within = [], []
    for member in members:
        if isinstance(member, Prediction):
            both = {**member.stage2, **member.other_stage2}
            stage1.append([member.stage1[c] for c in CLASSES])
            within.append([both[s] for s in SUBTYPES])
        else:
            class_p, subtype_p = member
            stage1.append(np.asarray(class_p, float).reshape(len(CLASSES)))
            within.append(np.asarray(subtype_p, float).reshape(len(SUBTYPES)))
    mean_class = dict(zip(CLASSES, map(float, np.mean(stage1, axis=0))))
    mean_within = dict(zip(SUBTYPES, map(float, np.mean(within, axis=0))))
    label = "malignant" if mean_class["malignant"] >= malignant_threshold else "benign"
    p_subtype = {s: mean_within[s] for s in SUBTYPES_BY_CLASS[label]}
    return CaseDecision(label, max(p_subtype, key=p_subtype.get), mean_class, p_subtype)


def figure(value: float) -> str:
    """A spread or threshold at 3 significant digits: spreads are often below 0.01, where a fixed
    2 decimals shows "0.00 > 0.00" and hides which of the two is larger."""
    return f"{value:.3g}"


class Predictor:
    """A loaded classifier, ready to predict. Create once (core.model.loading.load_predictor) and
    share between threads."""

    uncertainty_source = "test-time views"

    def __init__(self, model, card: dict, folder: str | os.PathLike | None = None, batch_size: int = 32,
                 calibrated: bool = True):
        self.model, self.card = model, card
        self.folder = Path(folder) if folder else None
        self.hierarchy = card["hierarchy"]
        self.backbone = card.get("backbone", "?")
        self.input_size = self._input_size(card)
        self.is_demo = bool(card.get("demo", False)) or any(m.is_demo for m in self.members if m is not self)
        thresholds = card.get("thresholds") or {}
        # Case-level p(malignant) threshold chosen on validation cases at evaluation (core.evaluation.evaluate).
        self.case_threshold = float(thresholds.get("case_malignant", 0.5))
        # Per-head temperatures fitted on validation (core.evaluation.calibration); {} = raw softmax.
        self.temperatures = dict((card.get("calibration") or {}).get("temperatures") or {}) if calibrated else {}
        # Above this spread of p(malignant) across views/members a prediction is referred (chosen
        # on validation by core.evaluation.evaluate); None until the model has been evaluated so.
        self.uncertainty_threshold = (thresholds.get("uncertainty") or {}).get("p_malignant_spread")
        self.normalizer = self._normalizer(card)
        self.batch_size = batch_size
        # One lock per model: Streamlit sessions share the predictor, and Keras layers and
        # tf.function tracing are not safe to enter from two threads at once.
        self.lock = threading.RLock()
        spec = [tf.TensorSpec([None, self.input_size, self.input_size, 3], tf.float32)]
        self._forward = tf.function(self._heads, input_signature=spec)
        self._forward_tta = tf.function(self._heads_tta, input_signature=spec)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike = DEFAULT_MODEL_DIR, **options) -> "Predictor":
        """Load and verify a classifier folder (raises ModelFolderError with a clear message)."""
        model, card = load_model_folder(folder)
        return cls(model, card, folder, **options)

    @property
    def members(self) -> list["Predictor"]:
        """The classifiers whose outputs this predictor combines: a single model is its own one member."""
        return [self]

    @staticmethod
    def _input_size(card: dict) -> int:
        return int(card["input_size"])

    @staticmethod
    def _normalizer(card: dict) -> StainNormalizer:
        """Stain normalisation fitted at training (core.data.stain), applied after the one resize."""
        return StainNormalizer.from_dict(card.get("stain_normalization"))

    @property
    def name(self) -> str:
        return self.card.get("name") or (self.folder.name if self.folder else "model")

    def _heads(self, images):
        return self.model(images, training=False)

    def _heads_tta(self, images):
        """Mean of the 8 views per head, and every view (N, 8, k) for the uncertainty."""
        return mean_over_views(self.model(dihedral_views(images), training=False))

    def images_per_pass(self, tta: bool = False) -> int:
        """Images per compiled call: batch_size model inputs, which TTA's 8 views each fill 8 of."""
        return max(1, self.batch_size // 8) if tta else self.batch_size

    def model_input(self, images: list[np.ndarray]) -> np.ndarray:
        """Validated uint8 RGB images -> the model's float batch (the shared preprocessing)."""
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                    or image.shape[2] != 3 or min(image.shape[:2]) < 1:
                shape = getattr(image, "shape", None)
                raise ValueError(f"Image {i} must be a uint8 RGB array (H, W, 3), got "
                                 f"{type(image).__name__} {getattr(image, 'dtype', '')} {shape}")
        batch = batch_for_model(images, self.input_size)
        if self.normalizer.method == "none":
            return batch
        return np.stack([self.normalizer(np.round(b).astype(np.uint8))[0] for b in batch]).astype(np.float32)

    def probabilities(self, images: list[np.ndarray], tta: bool = False) -> dict[str, np.ndarray]:
        """Raw head outputs {output name: (N, k)} for a list of RGB images, in batches."""
        if len(images) == 0:
            return {}
        forward = self._forward_tta if tta else self._forward
        per_pass = self.images_per_pass(tta)
        chunks = []
        for start in range(0, len(images), per_pass):
            batch = tf.constant(self.model_input(images[start:start + per_pass]))
            with self.lock:
                chunks.append({name: p.numpy() for name, p in forward(batch).items()})
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}

    def predict(self, images: list[np.ndarray], tta: bool = False,
                refer_threshold: float = DEFAULT_REFER_THRESHOLD) -> list[Prediction]:
        """One Prediction per uint8 RGB image (any size: the whole field is resized)."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        return self.interpret(self.probabilities(list(images), tta), refer_threshold, tta)

    def merge(self, member_outputs: list[dict]) -> dict[str, np.ndarray]:
        """The members' raw head outputs (in `members` order) -> this predictor's raw outputs. One
        model: its own. (An ensemble averages its calibrated members, core.model.ensemble.)"""
        return member_outputs[0]

    def calibrate(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw head outputs -> calibrated probabilities (temperature scaling per head, from the card;
        per-view outputs with their head's temperature)."""
        def scaled(name, p):
            temperature = self.temperatures.get(name.removesuffix(VIEWS))
            return apply_temperature(p, temperature) if temperature else np.asarray(p)

        return {name: scaled(name, p) for name, p in outputs.items()}

    def interpret(self, outputs: dict[str, np.ndarray], refer_threshold: float = DEFAULT_REFER_THRESHOLD,
                  tta: bool = False) -> list[Prediction]:
        """Raw head outputs -> calibrated Predictions (shared with Grad-CAM's single-pass diagnosis)."""
        if not 0.0 <= refer_threshold <= 1.0:
            raise ValueError(f"refer_threshold must be between 0 and 1, not {refer_threshold}")
        if not outputs:
            return []
        outputs = self.calibrate(outputs)
        count = len(next(iter(outputs.values())))
        return [self._prediction(outputs, i, refer_threshold, tta) for i in range(count)]

    def _class_views(self, outputs, i) -> np.ndarray | None:
        """p(class) of every view of image i (views, 2), or None without views."""
        views = outputs.get((STAGE1_OUTPUT if self.hierarchy == HIERARCHICAL else FLAT_OUTPUT) + VIEWS)
        if views is None or self.hierarchy == HIERARCHICAL:
            return None if views is None else views[i]
        return np.stack([views[i][:, [SUBTYPES.index(s) for s in SUBTYPES_BY_CLASS[c]]].sum(1) for c in CLASSES], 1)

    def _class_probabilities(self, outputs, i) -> tuple[dict, dict]:
        """(p(class), {class: p(subtype | class)}) for image i, hierarchical or flat."""
        if self.hierarchy == HIERARCHICAL:
            stage1 = dict(zip(CLASSES, map(float, outputs[STAGE1_OUTPUT][i])))
            within = {c: dict(zip(SUBTYPES_BY_CLASS[c], map(float, outputs[STAGE2_OUTPUTS[c]][i])))
                      for c in CLASSES}
            return stage1, within
        joint = dict(zip(SUBTYPES, map(float, outputs[FLAT_OUTPUT][i])))
        stage1 = {c: sum(joint[s] for s in SUBTYPES_BY_CLASS[c]) for c in CLASSES}
        within = {c: {s: joint[s] / stage1[c] if stage1[c] > 0 else 1.0 / len(SUBTYPES_BY_CLASS[c])
                      for s in SUBTYPES_BY_CLASS[c]} for c in CLASSES}
        return stage1, within

    def _prediction(self, outputs, i, threshold, tta) -> Prediction:
        stage1, within = self._class_probabilities(outputs, i)
        label = max(CLASSES, key=stage1.get)
        other = CLASSES[1 - CLASSES.index(label)]
        stage2 = within[label]
        subtype = max(stage2, key=stage2.get)
        confidence = stage1[label] * stage2[subtype]
        reasons = []
        if stage1[label] < threshold:
            reasons.append(f"stage 1 uncertain ({stage1[label]:.2f})")
        if stage2[subtype] < threshold:
            reasons.append(f"subtype uncertain ({stage2[subtype]:.2f})")
        if confidence < threshold and not reasons:
            reasons.append(f"combined confidence {confidence:.2f} below {threshold:.2f}")
        views = self._class_views(outputs, i)
        uncertainty = uncertainty_of(views, self.uncertainty_source) if views is not None else None
        if uncertainty and self.uncertainty_threshold is not None \
                and uncertainty["p_malignant_spread"] > self.uncertainty_threshold:
            reasons.append(f"{uncertainty['source']} disagree (p(malignant) spread "
                           f"{figure(uncertainty['p_malignant_spread'])} > {figure(self.uncertainty_threshold)})")
        if self.is_demo:
            reasons.append(DEMO_REASON)
        return Prediction(stage1, label, stage2, within[other], subtype, confidence,
                          bool(reasons), reasons, tta, uncertainty)
