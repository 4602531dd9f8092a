"""The field recipe's training: whole fields in memory, augmentation on the accelerator, any backend.

    KERAS_BACKEND=jax python -m core train --pipeline fields --data DIR --out runs/NAME

Why this recipe (issue 25): squashing a 700x460 field into a 128-px square threw away the cells'
size and shape; the model here sees random square crops of 55-100 % of the field's short side at
~1 um/px (core.data.fields), resized to its input, in the 8 symmetries, with H&E stain jitter
(core.data.keras_augment.FieldAugmentation, the training model's first layer, so it runs where
the model runs). One ResNet-18 with the project's hierarchical heads learns stage 1 and the 8
subtypes together: class-weighted cross-entropy with label smoothing on stage 1, and on the
8-way softmax of both stage-2 heads' logits (whose within-class softmax is exactly what the saved
heads output), subtypes drawn by 1/sqrt(count); AdamW with warm-up then cosine decay.

Nothing here imports TensorFlow: the sampler is a keras.utils.PyDataset over numpy arrays, the
loss and augmentation are keras.ops, and prediction for evaluation (`predict_views`) runs the
model through Keras, so `fit` runs under Keras' JAX backend on a machine without TensorFlow; the
saved .keras file loads under TensorFlow for the app (tests/test_field_recipe.py checks both).
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np
from keras import ops

from core.backends import build_training_state, set_seed
from core.data.fields import ViewSpec, per_image, physical_scale
from core.data.keras_augment import FieldAugmentation, field_inputs
from core.data.labels import CLASS_OF_SUBTYPE, CLASSES, STAGE1_OUTPUT, STAGE2_OUTPUTS, SUBTYPES, SUBTYPES_BY_CLASS
from core.model.classifier import build_classifier, head_logits
from core.training.progress import keras_callback

HEADS = (STAGE1_OUTPUT, STAGE2_OUTPUTS["benign"], STAGE2_OUTPUTS["malignant"])
SUBTYPE_LOGITS = "subtype8_logits"
DEFAULT_LEARNING_RATE = 2e-3  # the recipe's AdamW peak, for a network trained from scratch
STAGE1_LOGITS = "stage1_logits"
FIELD, SCALE = "field", "field_scale"  # the training model's inputs (the scale only with physical crops)


def sampling(subtypes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probability of drawing each image, stage-1 class weights (2,), subtype weights (8,)).

    Images are drawn with probability proportional to 1/sqrt(count of their subtype), so a
    subtype's share of the batches grows as sqrt(count); the loss weights then make each class
    and each subtype count equally in expectation (weights ~ 1 / its drawn share, mean 1)."""
    subtypes = np.asarray(subtypes)
    counts = {s: int((subtypes == s).sum()) for s in SUBTYPES}
    draw = np.array([1.0 / math.sqrt(counts[s]) for s in subtypes])
    draw /= draw.sum()
    drawn_subtype = np.array([draw[subtypes == s].sum() for s in SUBTYPES])
    present = drawn_subtype > 0
    subtype_weights = np.where(present, 1.0 / np.maximum(drawn_subtype, 1e-12), 0.0)
    subtype_weights *= present.sum() / max((subtype_weights * drawn_subtype).sum() * present.sum(), 1e-12)
    drawn_class = np.array([drawn_subtype[[SUBTYPES.index(s) for s in SUBTYPES_BY_CLASS[c]]].sum() for c in CLASSES])
    class_weights = np.where(drawn_class > 0, 1.0 / np.maximum(drawn_class, 1e-12), 0.0)
    class_weights /= (class_weights * drawn_class).sum()
    return draw, class_weights.astype(np.float32), subtype_weights.astype(np.float32)


def targets(subtypes) -> dict[str, np.ndarray]:
    """Integer targets of the training model's two logit outputs."""
    subtypes = list(subtypes)
    return {STAGE1_LOGITS: np.array([CLASSES.index(CLASS_OF_SUBTYPE[s]) for s in subtypes], np.int32),
            SUBTYPE_LOGITS: np.array([SUBTYPES.index(s) for s in subtypes], np.int32)}


class FieldBatches(keras.utils.PyDataset):
    """`steps` batches per epoch of fields drawn with `probabilities` (with replacement), seeded by
    (seed, epoch, step): the same run draws the same batches on any backend. `weights`: per output,
    a weight per class (sampling's), sent as each drawn field's sample weight of that output (the
    losses carry none: SmoothedCrossEntropy)."""

    def __init__(self, fields: np.ndarray, subtypes, batch_size: int, steps: int, seed: int,
                 probabilities: np.ndarray | None = None, workers: int = 1, scales: np.ndarray | None = None, *,
                 weights: dict):
        super().__init__(workers=workers, use_multiprocessing=False)  # workers > 1: threads fetch ahead
        self.fields, self.targets, self.scales = fields, targets(subtypes), scales
        self.batch_size, self.steps, self.seed, self.epoch = batch_size, steps, seed, 0
        self.probabilities = probabilities
        self.sample_weights = {name: np.asarray(weights[name], np.float32)[self.targets[name]] for name in self.targets}

    def __len__(self):
        return self.steps

    def __getitem__(self, step):
        rng = np.random.default_rng([self.seed, self.epoch, step])
        index = rng.choice(len(self.fields), self.batch_size, p=self.probabilities)
        inputs = self.fields[index] if self.scales is None else {FIELD: self.fields[index], SCALE: self.scales[index]}
        return (inputs, {name: value[index] for name, value in self.targets.items()},
                {name: value[index] for name, value in self.sample_weights.items()})

    def on_epoch_end(self):
        self.epoch += 1


@keras.saving.register_keras_serializable(package="core")
class SmoothedCrossEntropy(keras.losses.Loss):
    """Cross-entropy from logits against integer targets, with label smoothing. The class weights come
    as each sample's weight (FieldBatches), not as constants of the loss: then the compiled training
    step of every fold and of the final model is the same program, which XLA compiles once and its
    cache serves to the rest (a fold's weights differ with its patients)."""

    def __init__(self, classes: int, label_smoothing: float = 0.1, name="smoothed_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.classes, self.label_smoothing = int(classes), float(label_smoothing)

    def call(self, y_true, y_pred):
        onehot = ops.one_hot(ops.reshape(ops.cast(y_true, "int32"), (-1,)), self.classes)
        target = onehot * (1.0 - self.label_smoothing) + self.label_smoothing / self.classes
        return -ops.sum(target * ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1), axis=-1)

    def get_config(self):
        return {**super().get_config(), "classes": self.classes, "label_smoothing": self.label_smoothing}


def training_model(classifier: keras.Model, field_shape: tuple[int, int], augment_strength: float,
                   crop_min: float, seed: int, physical: bool = False) -> keras.Model:
    """uint8 fields -> FieldAugmentation -> the classifier's head logits {stage 1, 8 subtypes}. The
    layers are the classifier's own, so training this model trains the classifier (saved alone).
    physical: a second input, each field's crop scale (field_scales), for crops of the same tissue
    at every magnification."""
    logits = head_logits(classifier, HEADS)
    # float32 like the softmax heads: under a mixed policy a bfloat16 Concatenate would round the logits
    subtype8 = keras.layers.Concatenate(name=SUBTYPE_LOGITS, dtype="float32")([logits[HEADS[1]], logits[HEADS[2]]])
    heads = keras.Model(classifier.inputs, {STAGE1_LOGITS: logits[HEADS[0]], SUBTYPE_LOGITS: subtype8},
                        name="head_logits")
    fields = keras.Input((*field_shape, 3), dtype="uint8", name=FIELD)
    size = int(classifier.input_shape[1])
    augment = FieldAugmentation(size, crop_min, augment_strength, seed, name="augment")
    if physical:
        scales = keras.Input((), dtype="float32", name=SCALE)
        inputs, augmented = {FIELD: fields, SCALE: scales}, augment([fields, scales])
    else:
        inputs, augmented = fields, augment(fields)
    outputs = heads(augmented)
    return keras.Model(inputs, {STAGE1_LOGITS: outputs[STAGE1_LOGITS], SUBTYPE_LOGITS: outputs[SUBTYPE_LOGITS]},
                       name="field_training")


def field_scales(magnifications) -> np.ndarray:
    """Each field's crop scale for physical training crops (core.data.fields.physical_scale, the
    rule its views predict with; an unknown magnification, e.g. a GAN field's, as 200X)."""
    return np.array([physical_scale(m) for m in magnifications], np.float32)


BN_MOMENTUM = 0.9  # PyTorch's 0.1


def follow_batch_statistics(classifier: keras.Model, momentum: float = BN_MOMENTUM) -> int:
    """Faster-moving batch-norm statistics (Keras' default momentum is 0.99): a run of a few hundred
    steps from scratch ends with inference statistics hundreds of steps stale under 0.99, and the
    model then predicts one class for everything (measured: training images at balanced accuracy
    0.5 after 64 steps, 0.89 with subtype macro-F1 0.20 after 300, under 0.99)."""
    layers = [layer for layer in classifier.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.momentum = momentum
    return len(layers)


class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras' CosineDecay with its warm-up, the same values, with the branch chosen by ops.where instead of
    ops.cond. Written here because the optimizer evaluates the schedule once per variable, twice (weight
    decay, update), while the training step is traced, and each cond traces two sub-graphs: in a cProfile
    of a 2-fold CV of 6 small CNNs on 2 CPU cores, Keras' schedule was 16.5 s of the 87 s of fitting (522
    evaluations in 12 traces); with this one the whole command took 97.5 s instead of 110 s."""

    def __call__(self, step):
        with keras.name_scope(self.name):
            start = ops.convert_to_tensor(self.initial_learning_rate)
            dtype = start.dtype
            decay_steps, warmup_steps = ops.cast(self.decay_steps, dtype), ops.cast(self.warmup_steps, dtype)
            step = ops.minimum(ops.cast(step, dtype), decay_steps + warmup_steps)
            target = ops.cast(self.warmup_target, dtype)
            # ops.where computes both branches: a warm-up of 0 steps divides by 1 here, never by 0
            warming = self._warmup_function(step, ops.maximum(warmup_steps, 1.0), target, start)
            decaying = self._decay_function(step - warmup_steps, decay_steps, target, dtype)
            return ops.where(step < warmup_steps, warming, decaying)


def schedule(learning_rate: float, total_steps: int, warmup_steps: int):
    """Linear warm-up to `learning_rate`, then cosine decay to zero over the remaining steps."""
    warmup = min(warmup_steps, max(total_steps // 4, 1))
    return WarmupCosineDecay(0.0, max(total_steps - warmup, 1), alpha=0.0, warmup_target=learning_rate,
                             warmup_steps=warmup)


def compile_training(model: keras.Model, config, total_steps: int) -> keras.Model:
    """The recipe's optimizer and losses on a training_model (fit_fields and bench/gpu_train.py):
    AdamW with warm-up then cosine decay, clipped gradients, smoothed cross-entropy on the stage-1
    and 8-subtype logits, weighted per class through the batches' sample weights (FieldBatches)."""
    learning_rate = config.learning_rate or DEFAULT_LEARNING_RATE
    model.compile(optimizer=keras.optimizers.AdamW(schedule(learning_rate, total_steps, config.warmup_steps),
                                                   weight_decay=config.weight_decay, clipnorm=5.0),
                  loss={STAGE1_LOGITS: SmoothedCrossEntropy(len(CLASSES), config.label_smoothing),
                        SUBTYPE_LOGITS: SmoothedCrossEntropy(len(SUBTYPES), config.label_smoothing)})
    return model


def prepare_fit(fields: np.ndarray, subtypes, config, steps: int | None = None, workers: int = 1,
                magnifications=None) -> tuple[keras.Model, keras.Model, FieldBatches, str]:
    """(classifier, compiled training model, its batches, weights used) of a run with `config`'s
    settings on (fields, subtypes); `steps` per epoch default to config.steps_per_epoch, else one pass
    over the fields. With config.physical_crops and the fields' magnifications, crops cover the same
    tissue at each."""
    set_seed(config.seed)
    classifier, weights_used = build_classifier(config.backbone, "hierarchical", config.weights_or_none,
                                                config.input_size, branch_units=config.head_units,
                                                head_units=config.head_units, dropout=config.dropout, l2=config.l2)
    follow_batch_statistics(classifier)
    draw, class_weights, subtype_weights = sampling(subtypes)
    steps = steps or config.steps_per_epoch or max(1, math.ceil(len(fields) / config.batch_size))
    scales = field_scales(magnifications) if config.physical_crops and magnifications is not None else None
    model = training_model(classifier, fields.shape[1:3], config.augment_strength, config.crop_min, config.seed,
                           physical=scales is not None)
    compile_training(model, config, steps * config.epochs)
    batches = FieldBatches(fields, subtypes, config.batch_size, steps, config.seed, draw, workers, scales,
                           weights={STAGE1_LOGITS: class_weights, SUBTYPE_LOGITS: subtype_weights})
    build_training_state(model, batches[0])  # a pure function of (seed, epoch, step): nothing is drawn early
    return classifier, model, batches, weights_used


def precision_for_device() -> str:
    """mixed_bfloat16 where the Keras backend in use sees a GPU (bench/gpu_train.py measures it), else float32."""
    from core.backends import current_backend, probe

    return "mixed_bfloat16" if probe(current_backend())["gpus"] else "float32"


def float32_copy(classifier: keras.Model, config) -> keras.Model:
    """The classifier rebuilt under the float32 policy with the same weights: a model trained in mixed
    precision is saved portable to CPU-only machines."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        portable, _ = build_classifier(config.backbone, "hierarchical", None, config.input_size,
                                       branch_units=config.head_units, head_units=config.head_units,
                                       dropout=config.dropout, l2=config.l2)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    portable.set_weights(classifier.get_weights())
    return portable


def fit_fields(fields: np.ndarray, subtypes, config, writer=None, phase: str = "fields",
               magnifications=None) -> tuple[keras.Model, dict]:
    """Train a new classifier on (fields, subtypes) (of these magnifications, for physical crops)
    with the recipe's settings in `config` (a TrainConfig), in mixed bfloat16 on a GPU;
    -> (float32 classifier, history summary)."""
    precision, previous = precision_for_device(), keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        classifier, model, batches, weights_used = prepare_fit(fields, subtypes, config,
                                                               magnifications=magnifications)
        steps, total = len(batches), len(batches) * config.epochs
        callbacks = [keras_callback(writer, config.epochs, steps, phase)] if writer is not None else []
        started = time.perf_counter()
        history = model.fit(batches, epochs=config.epochs, verbose=0, callbacks=callbacks).history
        seconds = time.perf_counter() - started
    finally:
        keras.mixed_precision.set_global_policy(previous)
    if precision != "float32":
        classifier = float32_copy(classifier, config)
    losses = [float(v) for v in history.get("loss", [])]
    return classifier, {"epochs": len(losses), "steps": total, "seconds": round(seconds, 1),
                        "images_per_s": round(total * config.batch_size / max(seconds, 1e-9), 1),
                        "final_loss": losses[-1] if losses else None, "loss": losses,
                        "weights_init": weights_used, "backend": keras.backend.backend(), "precision": precision}


def dihedral_numpy(batch: np.ndarray) -> np.ndarray:
    """(B, S, S, C) -> (8B, S, S, C): the 8 symmetries, symmetry-major, the identity first."""
    views = []
    for transpose in (False, True):
        for flip_lr in (False, True):
            for flip_ud in (False, True):
                v = batch.transpose(0, 2, 1, 3) if transpose else batch
                v = v[:, :, ::-1] if flip_lr else v
                views.append(v[:, ::-1] if flip_ud else v)
    return np.concatenate(views)


def view_batches(fields: np.ndarray, spec: ViewSpec, magnifications=None, batch_fields: int = 8):
    """Yields (views, n): a model's declared views of `batch_fields` fields at a time, rows
    symmetry-major, then field, then crop (each field's magnification sets physical views' size).
    The last batch is padded with copies of its last field (by_field drops their rows), so that
    every batch has one shape: a backend compiles the forward once, not again for each fold's
    last batch. n: the batch's real fields."""
    magnifications = per_image(magnifications, len(fields))
    for start in range(0, len(fields), batch_fields):
        index = np.arange(start, min(start + batch_fields, len(fields)))
        n, index = len(index), np.concatenate([index, np.full(batch_fields - len(index), index[-1])])
        crops = field_inputs(fields[index], spec, magnifications=[magnifications[i] for i in index])
        yield (dihedral_numpy(crops) if spec.dihedral else crops), n


def by_field(rows, n: int, spec: ViewSpec) -> np.ndarray:
    """A view batch's outputs (view_batches' row order: symmetry-major, then field, then crop) ->
    the first n fields' (n, views, k), float64."""
    rows = np.asarray(rows, np.float64)
    fields, k = len(rows) // spec.views_per_image, rows.shape[-1]
    per_field = rows.reshape(-1, fields, spec.crops, k).transpose(1, 0, 2, 3)
    return per_field[:n].reshape(n, -1, k)


def predict_views(classifier: keras.Model, fields: np.ndarray, spec: ViewSpec, batch_fields: int = 8,
                  magnifications=None) -> dict:
    """Head outputs of fields under a model's declared views, on any backend: {head: (N, k)} (the
    mean softmax over the views). The TensorFlow Predictor computes the same (tested)."""
    out = {name: [] for name in HEADS}
    for views, n in view_batches(fields, spec, magnifications, batch_fields):
        probs = classifier.predict_on_batch(views)
        for name in HEADS:
            out[name].append(by_field(ops.convert_to_numpy(probs[name]), n, spec).mean(axis=1))
    return {name: np.concatenate(chunks) for name, chunks in out.items()}
