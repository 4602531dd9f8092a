"""Class activation maps per stage: where the model looked for benign/malignant and for the subtype.

Maps are computed on the model's input views (a field model's crops, stitched back into one map of
the field; a whole-field model's one input) and resized onto the ORIGINAL image by
core.model.heatmap, so they line up with what the user uploaded.
All methods explain pre-softmax scores (logits): a saturated softmax has near-zero gradients.

- "gradcam": our own compiled single pass (one forward, one tape, the maps of every class and
  subtype at once, so an ensemble or TTA picks its targets without a second pass). It is
  the same computation as tf-keras-vis' Gradcam (tests check they agree) without its per-call
  model rebuilding and eager execution, which made a diagnosis several times a forward pass.
- "gradcam++", "scorecam": tf-keras-vis. Score-CAM uses the `SCORECAM_MAX_N` most varied
  channels (Faster Score-CAM) to stay affordable on a CPU.
Nothing is cloned: the logit models share the predictor's weights and are built once per predictor.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import weakref

import keras
import numpy as np
import tensorflow as tf
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.scorecam import Scorecam
from tf_keras_vis.utils.scores import CategoricalScore

from core.data.fields import per_image, view_boxes
from core.data.labels import (
    CLASS_OF_SUBTYPE,
    CLASSES,
    FLAT_OUTPUT,
    HIERARCHICAL,
    STAGE1_OUTPUT,
    STAGE2_OUTPUTS,
    SUBTYPES,
    SUBTYPES_BY_CLASS,
    output_sizes,
)
from core.model.classifier import cam_layer, head_logits
from core.model.heatmap import resize_maps, to_heatmap
from core.model.predict import Prediction, Predictor
from core.model.views import dihedral_views, mean_over_crops, mean_over_views

METHODS = ("gradcam", "gradcam++", "scorecam")
STAGES = ("stage1", "stage2")
SCORECAM_MAX_N = 32
# Flat model: indices of each class's subtypes in the 8-way output (benign first, as in SUBTYPES).
_FLAT_CLASS_INDICES = [[SUBTYPES.index(s) for s in SUBTYPES_BY_CLASS[c]] for c in CLASSES]
# What a Grad-CAM can explain, in the order of the compiled pass's maps: each class (stage 1),
# then each class's subtypes (stage 2, searched in that class's head).
CAM_TARGETS = [(c, None) for c in CLASSES] + [(c, s) for c in CLASSES for s in SUBTYPES_BY_CLASS[c]]
_CAM_INDEX = {target: i for i, target in enumerate(CAM_TARGETS)}


@dataclasses.dataclass
class Explanation:
    heatmap: np.ndarray  # float32 (H, W) in [0, 1], original image size
    target: str  # class (stage 1) or subtype (stage 2) explained
    stage: str
    method: str
    note: str = ""  # e.g. when the map is empty


@dataclasses.dataclass
class Diagnosis:
    """A prediction and the heat maps that explain its two stages."""

    prediction: Prediction
    explanations: dict[str, Explanation]  # "stage1", "stage2"


class _Explainer:
    """Per-predictor graph pieces, built once: logit models, the compiled Grad-CAM pass, and
    tf-keras-vis visualizers."""

    def __init__(self, predictor: Predictor):
        model = predictor.model  # No reference to the predictor itself: it is the cache's weak key.
        self.hierarchical = predictor.hierarchy == HIERARCHICAL
        self.output_names = list(output_sizes(predictor.hierarchy))
        self.cam_layer = cam_layer(predictor.backbone)
        logits = head_logits(model, self.output_names)
        self.logit_models = {name: keras.Model(model.inputs, tensor) for name, tensor in logits.items()}
        features = model.get_layer(self.cam_layer).output
        self._features_and_logits = keras.Model(model.inputs, [features, logits])
        try:  # the heads as a model of the CAM layer alone: then only they are recorded for the gradients
            self._backbone, self._heads = keras.Model(model.inputs, features), keras.Model(features, logits)
        except ValueError:  # a head reads layers before the CAM layer (the small CNN): record the whole pass
            self._backbone = self._heads = None
        self.channels = int(features.shape[-1])
        self._visualizers: dict = {}
        spec = tf.TensorSpec([None, predictor.input_size, predictor.input_size, 3], tf.float32)
        self._pass = tf.function(self._gradcam_pass, input_signature=[spec])
        self._pass_tta = tf.function(self._gradcam_pass_tta, input_signature=[spec])

    def gradcam_pass(self, images, tta: bool = False):
        """The one compiled pass of a batch -> (probabilities, Grad-CAMs of every target (N, 10, h, w));
        tta: over each image's 8 dihedral views in the same call -> (the views' mean and every view's
        probabilities, the maps of the images themselves)."""
        return (self._pass_tta if tta else self._pass)(images)

    def _class_and_head_logits(self, logits):
        """(class logits (N, 2), per-class subtype logits (N, 2, 4)) for either hierarchy."""
        if self.hierarchical:
            heads = tf.stack([logits[STAGE2_OUTPUTS[c]] for c in CLASSES], axis=1)
            return logits[STAGE1_OUTPUT], heads
        heads = tf.gather(logits[FLAT_OUTPUT], _FLAT_CLASS_INDICES, axis=-1)
        # log sum exp of a class's subtype logits: its softmax is p(class) = sum of p(subtype).
        return tf.reduce_logsumexp(heads, axis=-1), heads

    def _gradcam_pass(self, images):
        """One forward pass of a batch -> (probabilities, Grad-CAMs of every target (N, 10, h, w)).

        Maps of all CAM_TARGETS, not only of the predicted ones: each extra map is one backward pass
        through the head alone (from the logits to the CAM layer), a few per cent of the forward, so
        the targets can be picked afterwards (after an ensemble's vote, test-time augmentation or
        calibration) without a second forward. Images of a batch do not interact (inference mode),
        so the gradient of a score summed over the batch is each image's own gradient. Where the heads
        read the CAM layer alone, the backbone runs outside the tape: the pass then costs a bare forward
        plus the heads' backward.
        """
        split = self._heads is not None
        features = self._backbone([images], training=False) if split else None  # a bare forward, not recorded
        with tf.GradientTape(persistent=True) as tape:
            if split:
                tape.watch(features)
                logits = self._heads(features, training=False)
            else:
                tape.watch(images)
                features, logits = self._features_and_logits([images], training=False)
            class_logits, head_logits = self._class_and_head_logits(logits)
            scores = tf.concat([class_logits, tf.reshape(head_logits, [tf.shape(head_logits)[0], -1])], axis=1)
            totals = tf.unstack(tf.reduce_sum(scores, axis=0), num=len(CAM_TARGETS))
        cams = tf.stack([_gradcam(features, tape.gradient(total, features)) for total in totals], axis=1)
        del tape
        return {name: tf.nn.softmax(value) for name, value in logits.items()}, cams

    def _gradcam_pass_tta(self, images):
        """_gradcam_pass over the 8 dihedral views of each image, compiled with it (as
        Predictor._forward_tta): run eagerly, the views' flips and means cost ~2.5 ms a diagnosis of
        a field model, a tenth of its forward (bench/diagnose.py)."""
        probabilities, cams = self._gradcam_pass(dihedral_views(images))
        return mean_over_views(probabilities), cams[:tf.shape(images)[0]]

    def visualizer(self, output_name: str, method: str):
        key = (output_name, method)
        if key not in self._visualizers:
            model = self.logit_models[output_name]
            if method == "scorecam":  # Score-CAM calls model.predict, which would print progress bars.
                model = keras.Model(model.inputs, model.outputs)
                model.predict = functools.partial(model.predict, verbose=0)
            kind = GradcamPlusPlus if method == "gradcam++" else Scorecam
            self._visualizers[key] = kind(model)  # No model_modifier, so tf-keras-vis clones nothing.
        return self._visualizers[key]


def _gradcam(features, gradients):
    """Grad-CAM: channel weights = spatial mean of the gradients; ReLU of the weighted sum."""
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))


_EXPLAINERS: "weakref.WeakKeyDictionary[Predictor, _Explainer]" = weakref.WeakKeyDictionary()
_EXPLAINERS_LOCK = threading.Lock()


def explainer_for(predictor: Predictor) -> _Explainer:
    """The one compiled Grad-CAM pass of a predictor (built once, shared by every thread)."""
    with _EXPLAINERS_LOCK:
        if predictor not in _EXPLAINERS:
            _EXPLAINERS[predictor] = _Explainer(predictor)
        return _EXPLAINERS[predictor]


def _tf_keras_vis_cam(explainer: _Explainer, model_input, stage: str, method: str, label: str, subtype: str,
                      views=None, magnification=None):
    """Grad-CAM++ / Score-CAM of one stage's target through tf-keras-vis -> (h, w) CAM."""
    if explainer.hierarchical:
        output = STAGE1_OUTPUT if stage == "stage1" else STAGE2_OUTPUTS[label]
        index = CLASSES.index(label) if stage == "stage1" else SUBTYPES_BY_CLASS[label].index(subtype)
        score = CategoricalScore(index)  # one index for every input (a field model's crops)
    elif stage == "stage2":
        output, score = FLAT_OUTPUT, CategoricalScore(SUBTYPES.index(subtype))
    else:
        output, members = FLAT_OUTPUT, _FLAT_CLASS_INDICES[CLASSES.index(label)]
        if method == "scorecam":  # Score-CAM scores softmax outputs: p(class) = sum of p(subtype).
            def score(outputs):
                return tf.reduce_sum(tf.gather(outputs, members, axis=-1), axis=-1)
        else:
            def score(outputs):
                return tf.reduce_logsumexp(tf.gather(outputs, members, axis=-1), axis=-1)
    options = dict(penultimate_layer=explainer.cam_layer, seek_penultimate_conv_layer=False,
                   expand_cam=False, normalize_cam=False)
    if method == "scorecam":
        options["max_N"] = min(SCORECAM_MAX_N, explainer.channels)
    cam = np.asarray(explainer.visualizer(output, method)(score, model_input, **options))
    if views is not None and len(cam) > 1:  # a field model's crops -> one map of the field
        return stitch_crop_maps(cam[:, None], views, [magnification])[0, 0]
    return cam[0]


def _check_targets(method: str, label: str | None, subtype: str | None) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if label is not None and label not in CLASSES:
        raise ValueError(f"Stage-1 target must be one of {CLASSES}, not {label!r}")
    if subtype is not None and subtype not in CLASS_OF_SUBTYPE:
        raise ValueError(f"Stage-2 target must be one of {SUBTYPES}, not {subtype!r}")
    if label is not None and subtype is not None and CLASS_OF_SUBTYPE[subtype] != label:
        raise ValueError(f"Subtype {subtype!r} is not a subtype of {label!r}")


def gradcam_batch(predictor: Predictor, images: list[np.ndarray], tta: bool = False,
                  tiles: bool = False, magnifications=None) -> tuple[dict, np.ndarray]:
    """Compiled passes over a list of images in batches ->
    (raw outputs {head: (N, k)}, Grad-CAMs of every CAM_TARGETS entry (N, 10, h, w)).
    tta: each pass runs over the 8 test-time views (core.model.views.dihedral_views): the outputs
    are their mean (and each view, for the uncertainty) and the maps are view 0's, the image itself,
    so test-time augmentation costs no forward beyond its 8 views. A field model's crops are
    averaged the same way and their maps stitched back into one map of the field."""
    tta = predictor.uses_tta(tta)
    crops = predictor.crops_per_image(tiles)
    explainer, chunks, per_pass = explainer_for(predictor), [], predictor.images_per_pass(tta, tiles)
    magnifications = per_image(magnifications, len(images))
    for start in range(0, len(images), per_pass):
        part = slice(start, start + per_pass)
        batch = tf.constant(predictor.model_input(images[part], tiles, magnifications[part]))
        with predictor.lock:
            probabilities, cams = explainer.gradcam_pass(batch, tta)
        probabilities = mean_over_crops({k: v.numpy() for k, v in probabilities.items()}, crops)
        cams = cams.numpy()
        chunks.append((probabilities, stitch_crop_maps(cams, predictor.views, magnifications[part]) if crops > 1
                       else cams))
    outputs = {name: np.concatenate([c[0][name] for c in chunks]) for name in chunks[0][0]}
    return outputs, np.concatenate([c[1] for c in chunks])


def stitch_crop_maps(maps: np.ndarray, views, magnifications=None) -> np.ndarray:
    """Maps of each field's crops (N*C, T, h, w), crop-major per field -> one map per field
    (N, T, H', W') over the restored field (views.field_px): each crop's map resized onto its box
    (views.boxes at the field's magnification) at four times the maps' resolution at 200X, overlaps
    averaged; tissue no crop saw stays 0. The field covers the whole image, so the stitched map is
    drawn over the image as it is shown."""
    count, targets, h, w = maps.shape
    crops, (field_w, field_h) = views.crops, views.field_px
    scale = 4.0 * h / views.boxes(field_h, field_w)[0, 2]
    height, width = max(1, round(field_h * scale)), max(1, round(field_w * scale))
    per_field = maps.reshape(-1, crops, targets, h, w)
    canvas = np.zeros((len(per_field), targets, height, width), np.float32)
    sides = np.array([views.crop_px_at(m) for m in per_image(magnifications, len(per_field))])
    for side_px in np.unique(sides):  # fields whose crops have the same boxes are resized in one call
        fields = np.flatnonzero(sides == side_px)
        weight = np.zeros((height, width), np.float32)
        for c, (y0, x0, side, _) in enumerate(view_boxes(field_h, field_w, side_px, crops)):
            top, left = round(y0 * scale), round(x0 * scale)
            size = (max(1, min(round(side * scale), height - top)), max(1, min(round(side * scale), width - left)))
            canvas[fields, :, top:top + size[0], left:left + size[1]] += resize_maps(per_field[fields, c], size)
            weight[top:top + size[0], left:left + size[1]] += 1.0
        canvas[fields] /= np.maximum(weight, 1.0)
    return canvas


def cam_of(cams: np.ndarray, label: str, subtype: str | None = None) -> np.ndarray:
    """From gradcam_batch's maps (N, 10, h, w): the maps of class `label`, or of its `subtype`."""
    return cams[:, _CAM_INDEX[(label, subtype)]]


@dataclasses.dataclass
class RawCams:
    """One image's low-resolution Grad-CAMs of its two targets, one CAM per model (an ensemble's
    members): kept small, and resized only to the size that is shown."""

    label: str
    subtype: str
    stage1: list[np.ndarray]
    stage2: list[np.ndarray]

    def explanations(self, size: tuple[int, int], method: str = "gradcam") -> dict[str, Explanation]:
        """{stage: Explanation} at `size`; several models' maps are averaged after each is scaled to [0, 1]."""
        maps = {}
        for stage, cams, target in zip(STAGES, (self.stage1, self.stage2), (self.label, self.subtype)):
            heatmap, note = to_heatmap(cams[0], size)
            if len(cams) > 1:  # the mean of the members' [0, 1] maps, scaled to [0, 1] again
                members = [to_heatmap(cam, size) for cam in cams]
                heatmap, note = to_heatmap(np.mean([m[0] for m in members], axis=0), size)
                note = note or next((m[1] for m in members if m[1]), "")
            maps[stage] = Explanation(heatmap, target, stage, method, note)
        return maps


def gradcam_diagnosis(predictor: Predictor, images: list[np.ndarray], tta: bool = False,
                      labels: list | None = None, subtypes: list | None = None,
                      tiles: bool = False, magnifications=None) -> tuple[dict, list[RawCams]]:
    """(head outputs for `predictor.interpret`, per image the Grad-CAMs of its targets), for a batch.

    Targets default to each image's prediction (TTA's when `tta`). Each model runs ONE compiled
    pass (over the 8 views with TTA), which gives its probabilities and the maps of every target;
    the targets are picked afterwards from the final probabilities (the ensemble's mean, TTA's,
    calibrated ones), so no model ever runs a second pass.
    """
    count = len(images)
    if count == 0:
        return {}, []
    labels, subtypes = labels or [None] * count, subtypes or [None] * count
    passes = [gradcam_batch(member, images, tta, tiles, magnifications) for member in predictor.members]
    outputs = predictor.merge([p[0] for p in passes])  # as predictor.probabilities would give them
    targets = [_targets(prediction, label, subtype)
               for prediction, label, subtype in zip(predictor.interpret(outputs), labels, subtypes)]
    return outputs, [RawCams(label, subtype, [cam_of(cams, label)[i] for _, cams in passes],
                             [cam_of(cams, label, subtype)[i] for _, cams in passes])
                     for i, (label, subtype) in enumerate(targets)]


def _targets(prediction: Prediction, label: str | None, subtype: str | None) -> tuple[str, str]:
    """The (class, subtype) to explain: the given ones, else the prediction's (within the class)."""
    label = label or prediction.label
    if subtype is None:
        within = prediction.stage2 if label == prediction.label else prediction.other_stage2
        subtype = max(within, key=within.get)
    return label, subtype


def explain(predictor: Predictor, rgb: np.ndarray, method: str = "gradcam", label: str | None = None,
            subtype: str | None = None, refer_threshold: float | None = None,
            size: tuple[int, int] | None = None, magnification: str | None = None) -> Diagnosis:
    """The prediction plus both stages' heat maps: stage 1 of `label`, stage 2 of `subtype`.

    Targets default to the predicted class and subtype (a subtype alone implies its class). With
    Grad-CAM this is ONE compiled pass in total, which also gives the prediction; Grad-CAM++ and
    Score-CAM run through tf-keras-vis once per stage after a forward pass. An ensemble explains
    with the mean of its members' maps. Maps are at `size` (default: the image's own size).
    `magnification` ("40X"; None: unstated) sizes a field model's physical views.
    """
    _check_targets(method, label, subtype)
    if label is None and subtype is not None:
        label = CLASS_OF_SUBTYPE[subtype]
    size = size or rgb.shape[:2]
    if method == "gradcam":
        outputs, cams = gradcam_diagnosis(predictor, [rgb], labels=[label], subtypes=[subtype],
                                          magnifications=[magnification])
        return Diagnosis(predictor.interpret(outputs, refer_threshold)[0], cams[0].explanations(size, method))
    prediction = predictor.predict([rgb], refer_threshold=refer_threshold, magnifications=[magnification])[0]
    targets = _targets(prediction, label, subtype)
    cams = []  # per member, both stages' CAMs of the prediction's targets
    for member in predictor.members:
        explainer, model_input = explainer_for(member), member.model_input([rgb], magnifications=[magnification])
        with member.lock:
            cams.append([_tf_keras_vis_cam(explainer, model_input, stage, method, *targets, views=member.views,
                                           magnification=magnification) for stage in STAGES])
    return Diagnosis(prediction, RawCams(*targets, [c[0] for c in cams], [c[1] for c in cams]).explanations(size, method))
