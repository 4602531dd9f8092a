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

from core.data.fields import ViewSpec, per_image, restore_field
from core.data.keras_augment import crop_and_resize, field_inputs
from core.data.labels import (
    CLASSES,
    FLAT_OUTPUT,
    HIERARCHICAL,
    STAGE1_OUTPUT,
    STAGE2_OUTPUTS,
    SUBTYPES,
    SUBTYPES_BY_CLASS,
)
from core.data.preprocess import batch_for_model
from core.data.stain import StainNormalizer
from core.model.calibration import apply_temperature
from core.model.decisions import (  # noqa: F401 - re-exported: the Predictor's result types
    DEFAULT_REFER_THRESHOLD,
    DEMO_REASON,
    CaseDecision,
    Prediction,
    below,
    case_decision,
    figure,
    image_calls,
)
from core.model.folders import card_is_demo, load_model_folder
from core.model.views import VIEWS, dihedral_views, mean_over_crops, mean_over_views, uncertainty_of
from core.paths import DEFAULT_MODEL_DIR

# What disagrees, in plain words, for a refer reason: {uncertainty source: its words with the count}.
DISAGREEING = {"test-time views": "the model's {n} views of this image", "ensemble members": "the ensemble's {n} models"}


def disagreeing(uncertainty: dict) -> str:
    """'the model's 24 views of this image' for core.model.views.uncertainty_of's source and count."""
    words = DISAGREEING.get(uncertainty.get("source"), "{n} " + str(uncertainty.get("source")))
    return words.format(n=uncertainty.get("views", "the"))


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
        self.is_demo = card_is_demo(card) or any(m.is_demo for m in self.members if m is not self)
        thresholds = card.get("thresholds") or {}
        # Case-level p(malignant) threshold chosen on validation cases at evaluation (core.evaluation.evaluate).
        self.case_threshold = float(thresholds.get("case_malignant", 0.5))
        # Per-head temperatures fitted on validation (core.evaluation.calibration); {} = raw softmax.
        self.temperatures = dict((card.get("calibration") or {}).get("temperatures") or {}) if calibrated else {}
        # Above this spread of p(malignant) across views/members a prediction is referred (chosen
        # on validation by core.evaluation.evaluate); None until the model has been evaluated so.
        self.uncertainty_threshold = (thresholds.get("uncertainty") or {}).get("p_malignant_spread")
        self.normalizer = self._normalizer(card)
        # A field model's declared views (core.data.fields.ViewSpec): crops along the restored field x
        # symmetries, always; None for whole-field models (one resized input, TTA on request).
        self.views = ViewSpec.from_card(card)
        # Per-stage referral thresholds chosen on validation (core.evaluation.referral), if any.
        self.referral = (card.get("thresholds") or {}).get("referral") or None
        self.batch_size = batch_size
        # One lock per model: Streamlit sessions share the predictor, and Keras layers and
        # tf.function tracing are not safe to enter from two threads at once.
        self.lock = threading.RLock()
        spec = [tf.TensorSpec([None, self.input_size, self.input_size, 3], tf.float32)]
        self._forward = tf.function(self._heads, input_signature=spec)
        self._forward_tta = tf.function(self._heads_tta, input_signature=spec)
        if self.views is not None:  # the views' crop op, compiled once (eager, its ~30 ops cost ~10 ms an image)
            size = self.views.input_size
            # XLA fuses its index arithmetic and gathers: 0.4 ms instead of 1.9 ms for a field's 3 crops,
            # the same values (bench/diagnose.py); each new batch shape compiles once (~70 ms).
            self._crop = tf.function(lambda images, boxes: crop_and_resize(images, boxes, size), input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.float32), tf.TensorSpec([None, 4], tf.float32)],
                jit_compile=True)

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

    @property
    def uses_magnification(self) -> bool:
        """Whether an image's magnification changes what the model sees (physical field views)."""
        return any(m.views is not None and m.views.physical for m in self.members)

    def uses_tta(self, tta: bool = False) -> bool:
        """Test-time symmetries: on request, and always for a model whose card declares them."""
        return bool(tta or self.tta_fixed())

    def tta_fixed(self) -> bool:
        """The user's test-time-augmentation choice changes nothing: the card's views hold the symmetries."""
        return self.views is not None and self.views.dihedral

    def crops_per_image(self, tiles: bool = False) -> int:
        """Model inputs per image before symmetries: a field model's crops; a tile (already at the
        model's scale, core.slide) or a whole-field model's image is one."""
        return self.views.crops if self.views is not None and not tiles else 1

    def images_per_pass(self, tta: bool = False, tiles: bool = False) -> int:
        """Images per compiled call: batch_size model inputs, which each image's crops and TTA's 8
        views fill several of."""
        per_image = self.crops_per_image(tiles) * (8 if self.uses_tta(tta) else 1)
        return max(1, self.batch_size // per_image)

    def model_input(self, images: list[np.ndarray], tiles: bool = False, magnifications=None) -> np.ndarray:
        """Validated uint8 RGB images -> the model's float batch (the shared preprocessing): a field
        model's crops of each restored field (crops_per_image rows per image, in order; with
        physical views sized by each image's magnification, None: unstated), a tile resized whole
        by the same crop op, or a whole-field model's one resize."""
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                    or image.shape[2] != 3 or min(image.shape[:2]) < 1:
                shape = getattr(image, "shape", None)
                raise ValueError(f"Image {i} must be a uint8 RGB array (H, W, 3), got "
                                 f"{type(image).__name__} {getattr(image, 'dtype', '')} {shape}")
        if self.views is not None:
            batch = self._view_input(images, tiles, magnifications)
        else:
            batch = batch_for_model(images, self.input_size)
        if self.normalizer.method == "none":
            return batch
        return np.stack([self.normalizer(np.round(b).astype(np.uint8))[0] for b in batch]).astype(np.float32)

    def _view_input(self, images: list[np.ndarray], tiles: bool, magnifications=None) -> np.ndarray:
        if tiles:  # each tile is one view: resized whole, by the op that made the training crops
            images = [self.views.detail(image) for image in images]
            groups = [images] if len({image.shape for image in images}) == 1 else [[image] for image in images]
            return np.concatenate([field_inputs(np.stack(group), dataclasses.replace(
                self.views, crops=1, crop_px=max(group[0].shape[:2])), self._crop) for group in groups])
        fields = np.stack([self.views.detail(restore_field(image, self.views.field_px)) for image in images])
        return field_inputs(fields, self.views, self._crop, magnifications)

    def probabilities(self, images: list[np.ndarray], tta: bool = False, tiles: bool = False,
                      magnifications=None) -> dict[str, np.ndarray]:
        """Raw head outputs {output name: (N, k)} for a list of RGB images, in batches (the mean over
        an image's views; every view under name + VIEWS when there are several). magnifications:
        each image's ("200X", or None where unstated), which a field model's physical views use."""
        if len(images) == 0:
            return {}
        tta = self.uses_tta(tta)
        forward = self._forward_tta if tta else self._forward
        per_pass, crops = self.images_per_pass(tta, tiles), self.crops_per_image(tiles)
        chunks = []
        magnifications = per_image(magnifications, len(images))
        for start in range(0, len(images), per_pass):
            part = slice(start, start + per_pass)
            batch = tf.constant(self.model_input(images[part], tiles, magnifications[part]))
            with self.lock:
                chunks.append(mean_over_crops({name: p.numpy() for name, p in forward(batch).items()}, crops))
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}

    def predict(self, images: list[np.ndarray], tta: bool = False, refer_threshold: float | None = None,
                tiles: bool = False, magnifications=None) -> list[Prediction]:
        """One Prediction per uint8 RGB image (a field at any published size, or a slide's tile)."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        return self.interpret(self.probabilities(list(images), tta, tiles, magnifications), refer_threshold, tta)

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

    def stage_thresholds(self, refer_threshold: float | None = None) -> tuple[float, float, str]:
        """(stage-1 threshold, subtype threshold, where they come from): a threshold the user gives
        applies to both stages; else the model's validated per-stage thresholds; else 0.7 for both."""
        if refer_threshold is not None:
            return float(refer_threshold), float(refer_threshold), "set by the user"
        if self.referral:
            return (float(self.referral["stage1"]["threshold"]), float(self.referral["subtype"]["threshold"]),
                    f"chosen on {self.referral.get('selected_on', 'validation')}")
        return DEFAULT_REFER_THRESHOLD, DEFAULT_REFER_THRESHOLD, "default (not validated for this model)"

    def interpret(self, outputs: dict[str, np.ndarray], refer_threshold: float | None = None,
                  tta: bool = False) -> list[Prediction]:
        """Raw head outputs -> calibrated Predictions (shared with Grad-CAM's single-pass diagnosis), each
        saying whether test-time symmetries were averaged (uses_tta: requested or declared)."""
        tta = self.uses_tta(tta)
        if refer_threshold is not None and not 0.0 <= refer_threshold <= 1.0:
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
        """Per-stage referral: stage 1 when p(class) is below its threshold (or the views disagree
        beyond the validated spread); the subtype when p(subtype | class) is below its own, or when
        stage 1 is referred (the subtype depends on it). A demo model refers both."""
        stage1, within = self._class_probabilities(outputs, i)
        label = str(image_calls([stage1[c] for c in CLASSES])[0])
        other = CLASSES[1 - CLASSES.index(label)]
        stage2 = within[label]
        subtype = max(stage2, key=stage2.get)
        confidence = stage1[label] * stage2[subtype]
        t1, t2, source = self.stage_thresholds(threshold)
        first, second = [], []
        if stage1[label] < t1:
            first.append(f"stage 1 uncertain ({below(stage1[label], t1)})")
        views = self._class_views(outputs, i)
        uncertainty = uncertainty_of(views, self.uncertainty_source) if views is not None else None
        if uncertainty and self.uncertainty_threshold is not None \
                and uncertainty["p_malignant_spread"] > self.uncertainty_threshold:
            first.append(f"{disagreeing(uncertainty)} disagree about malignancy (p(malignant) spread "
                         f"{figure(uncertainty['p_malignant_spread'])} > {figure(self.uncertainty_threshold)})")
        if stage2[subtype] < t2:
            second.append(f"subtype uncertain ({below(stage2[subtype], t2)})")
        if self.is_demo:
            first.append(DEMO_REASON)
        referral = {"stage1": {"refer": bool(first), "reasons": first, "threshold": t1},
                    "subtype": {"refer": bool(first or second), "threshold": t2,
                                "reasons": second + (["stage 1 referred"] if first else [])},
                    "thresholds_source": source}
        reasons = first + second
        return Prediction(stage1, label, stage2, within[other], subtype, confidence,
                          bool(reasons), reasons, tta, uncertainty, referral)
