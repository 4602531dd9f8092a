"""Probe: the field recipe's CV with features trained NOT to tell apart the patients of a subtype.

The installed model's errors are whole patients (a mucinous carcinoma patient called benign on
26 of 26 images), and a subtype learnt from 2-5 patients lets the network learn those patients'
stain, scanner and tissue rather than the subtype. Domain-adversarial training (Ganin et al. 2016,
DANN) with the patient as the domain: a small adversary head reads the classifier's shared features
(its `multiscale_concat`, what every head reads) through a gradient-reversal layer and is trained
to name each field's patient AMONG THE TRAINING PATIENTS OF ITS SUBTYPE (a conditional softmax:
the other patients' logits are masked), so the backbone is pushed towards features that carry the
subtype but not which of its patients a field came from. Plain patient-adversarial training would
also erase the subtype, since here a patient has one subtype; a subtype with one training patient
gives the adversary nothing to learn and the backbone no reversed gradient.

Scratch probe (TensorFlow backend: the reversal is a tf.custom_gradient): it replaces
core.training.field_fit.prepare_fit with the same steps plus the adversary, wraps
field_run.fit_classifier to see each fit's rows' patients, and runs the installed recipe's CV
unchanged otherwise; the saved classifier has no adversary (it is not among its layers).
ADV_STRENGTH (default 0.3): the reversal's scale on the backbone's gradient.

    ADV_STRENGTH=0.3 PYTHONPATH=. python experiments/i25/patient_adversary_probe.py -- <train options>
"""

import math
import os
import sys

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import core.training.field_fit as field_fit
import core.training.field_run as field_run
from core.backends import build_training_state, set_seed
from core.cli import main
from core.data.keras_augment import FieldAugmentation
from core.data.labels import CLASSES, SUBTYPES
from core.model.classifier import build_classifier, head_logits
from core.training.field_fit import (FIELD, HEADS, STAGE1_LOGITS, SUBTYPE_LOGITS, FieldBatches, SmoothedCrossEntropy,
                                     follow_batch_statistics, sampling, schedule)

STRENGTH = float(os.environ.get("ADV_STRENGTH", "0.3"))
PATIENT_LOGITS = "patient_logits"
original_fit = field_run.fit_classifier
seen = {}


def fit_classifier(fields, rows, config, writer, phase="fields"):
    seen["cases"] = rows["case"].to_numpy()
    return original_fit(fields, rows, config, writer, phase)


class GradientReversal(keras.layers.Layer):
    """Identity forward; the gradient times -strength backward (the adversary's wish, reversed)."""

    def __init__(self, strength: float, **kwargs):
        super().__init__(**kwargs)
        self.strength = float(strength)

    def call(self, inputs):
        strength = self.strength

        @tf.custom_gradient
        def reverse(x):
            return tf.identity(x), lambda upstream: -strength * upstream

        return reverse(inputs)


class WithinSubtypeCrossEntropy(keras.losses.Loss):
    """Cross-entropy of the patient among the patients of the same subtype (`same`: P x P, 1 where two
    training patients share a subtype); the other patients' logits are masked out."""

    def __init__(self, same: np.ndarray, name="within_subtype_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.same = np.asarray(same, np.float32)

    def call(self, y_true, y_pred):
        index = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        allowed = ops.take(ops.convert_to_tensor(self.same), index, axis=0)
        logits = ops.cast(y_pred, "float32") + (allowed - 1.0) * 1e9
        return -ops.sum(ops.one_hot(index, self.same.shape[0]) * ops.log_softmax(logits, axis=-1), axis=-1)


def adversarial_model(classifier, field_shape, config, patients: int) -> keras.Model:
    """training_model's uint8 fields -> augmentation -> {stage 1, 8 subtypes} logits, plus the adversary's
    patient logits from the shared features through the reversal."""
    logits = head_logits(classifier, HEADS)
    subtype8 = keras.layers.Concatenate(name=SUBTYPE_LOGITS, dtype="float32")([logits[HEADS[1]], logits[HEADS[2]]])
    features = classifier.get_layer("multiscale_concat").output
    heads = keras.Model(classifier.inputs, {STAGE1_LOGITS: logits[HEADS[0]], SUBTYPE_LOGITS: subtype8,
                                            "features": features}, name="head_logits")
    fields = keras.Input((*field_shape, 3), dtype="uint8", name=FIELD)
    augment = FieldAugmentation(int(classifier.input_shape[1]), config.crop_min, config.augment_strength,
                                config.seed, name="augment")
    outputs = heads(augment(fields))
    hidden = keras.layers.Dense(128, activation="relu", name="adversary_dense")(
        GradientReversal(STRENGTH, name="reversal")(outputs["features"]))
    patient = keras.layers.Dense(patients, dtype="float32", name=PATIENT_LOGITS)(hidden)
    return keras.Model(fields, {STAGE1_LOGITS: outputs[STAGE1_LOGITS], SUBTYPE_LOGITS: outputs[SUBTYPE_LOGITS],
                                PATIENT_LOGITS: patient}, name="field_training_adversarial")


def prepare_fit(fields, subtypes, config, steps=None, workers=1, magnifications=None):
    """field_fit.prepare_fit's steps (no physical crops) with the adversary and its targets. Its first lines are
    copied from there, not shared: a scratch probe should not add a hook to the training code it measures."""
    cases = seen.get("cases")
    assert cases is not None and len(cases) == len(fields), "the probe needs each field's patient"
    assert not config.physical_crops, "the probe covers the installed recipe (no physical crops)"
    subtypes = np.asarray(subtypes)
    names, patient = np.unique(cases, return_inverse=True)
    subtype_of = np.array([subtypes[patient == p][0] for p in range(len(names))])
    same = (subtype_of[:, None] == subtype_of[None, :]).astype(np.float32)
    set_seed(config.seed)
    classifier, weights_used = build_classifier(config.backbone, "hierarchical", config.weights_or_none,
                                                config.input_size, branch_units=config.head_units,
                                                head_units=config.head_units, dropout=config.dropout, l2=config.l2)
    follow_batch_statistics(classifier)
    draw, class_weights, subtype_weights = sampling(subtypes)
    steps = steps or config.steps_per_epoch or max(1, math.ceil(len(fields) / config.batch_size))
    model = adversarial_model(classifier, fields.shape[1:3], config, len(names))
    model.compile(optimizer=keras.optimizers.AdamW(schedule(config.learning_rate or 2e-3, steps * config.epochs,
                                                            config.warmup_steps),
                                                   weight_decay=config.weight_decay, clipnorm=5.0),
                  loss={STAGE1_LOGITS: SmoothedCrossEntropy(len(CLASSES), config.label_smoothing),
                        SUBTYPE_LOGITS: SmoothedCrossEntropy(len(SUBTYPES), config.label_smoothing),
                        PATIENT_LOGITS: WithinSubtypeCrossEntropy(same)})
    batches = FieldBatches(fields, subtypes, config.batch_size, steps, config.seed, draw, workers, None,
                           weights={STAGE1_LOGITS: class_weights, SUBTYPE_LOGITS: subtype_weights})
    batches.targets[PATIENT_LOGITS] = patient.astype(np.int32)
    batches.sample_weights[PATIENT_LOGITS] = np.ones(len(fields), np.float32)
    build_training_state(model, batches[0])
    print(f"patient adversary: {len(names)} patients, {int((same.sum(1) > 1).sum())} share a subtype with another, "
          f"reversal strength {STRENGTH}", flush=True)
    return classifier, model, batches, weights_used


field_run.fit_classifier, field_fit.prepare_fit = fit_classifier, prepare_fit
sys.exit(main(sys.argv[sys.argv.index("--") + 1:]))
