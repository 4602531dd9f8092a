"""Train the classifier on a BreakHis folder and write a complete run folder.

    python -m core train --data DIR --out runs/NAME [--backbone densenet121] [--mode finetune|fast] ...

index the folder (skipped files reported) -> magnification filter -> split (patient-wise by
default; core.data.selection) -> balance the training part -> build + compile inside a tf.distribute scope -> fit with
early stopping (best weights restored), LR reduction on plateau, best checkpoint, history.csv and
the progress stream -> BatchNorm recalibration -> runs/NAME/model (model + card) -> evaluation
on the test split. SIGTERM ends the run with a "cancelled" event and exit status 143; a model saved before
a cancel or a failure (during calibration or evaluation) is moved aside to RUN/.unfinished-model.

finetune: the whole network learns, with augmentation (mixed float16 on GPU).
fast: the backbone is frozen; pooled multi-scale features of every train/val image are computed
ONCE (so without augmentation) and only the heads train on them. The heads are the full model's
own layers, so the full model has them afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from core.backends import build_training_state
from core.data.balance import apply_strategy
from core.data.labels import output_sizes
from core.data.pipeline import make_dataset, targets_and_weights
from core.data.selection import relative_to_data, select_images
from core.data.splits import IMAGE, assert_no_case_leakage, is_synthetic
from core.data.stain_reference import fit_normalizer
from core.data.synthetic import refuse_leaky_folder
from core.errors import BreakhisError, UserInputError
from core.jsonfile import write_json_atomic
from core.model.classifier import build_classifier, feature_extractor, head_model, set_backbone_trainable
from core.model.folders import save_model_folder
from core.paths import UNFINISHED, claim_run, portable
from core.training.additions import reviewed_for_training
from core.training.config import TrainConfig, checked
from core.training.feature_cache import FeatureCache, content_digest, extractor_key
from core.training.multiworker import fit_multiworker, is_chief, weights_fingerprint
from core.training.progress import ProgressWriter, final_events, keras_callback, metric_floats
from core.training.runcard import head_options, held_out_gaps, model_card, refuse_untaught_classes, split_counts

CANCELLED_EXIT = 128 + signal.SIGTERM
log = logging.getLogger(__name__)


def prepare_data(config: TrainConfig) -> dict:
    """Index, select and split (core.data.selection), check GAN images, balance the training part."""
    spec = config.split_spec()
    selection = select_images(config.data, spec)
    split = selection.split
    if config.balance == "synthetic" and config.synthetic_dir and not config.allow_gan_leak:
        refuse_leaky_folder(config.synthetic_dir, selection.fingerprint, spec)
    if config.reviewed_dir:
        split = add_reviewed(split, config.reviewed_dir)
    train, subtype_weights = apply_strategy(split[split["split"] == "train"], config.balance,
                                            synthetic_dir=config.synthetic_dir, subtypes=config.synthetic_subtypes,
                                            seed=config.seed)
    synthetic = train[train["synthetic"].astype(bool)].drop_duplicates("path")
    if len(synthetic):  # split.csv lists every image the run used, GAN images as train
        synthetic = synthetic.assign(split="train", protocol=split["protocol"].iloc[0])
        split = pd.concat([split, synthetic], ignore_index=True)
    # A patient in two splits is a leak a patient-wise split refuses; an image-level split (labelled leaky on
    # every figure, for comparison only) shares patients by design. GAN images stay in training under both:
    # the synthetic rows alone, which share no real case, hold only that second check.
    assert_no_case_leakage(split if spec.protocol != IMAGE else split[is_synthetic(split)])
    return {"split": split, "train": train, "val": split[split["split"] == "val"],
            "test": split[split["split"] == "test"], "subtype_weights": subtype_weights,
            "skipped": selection.skipped, "fingerprint": selection.fingerprint,
            "normalizer": fit_normalizer(config.stain_norm, selection.part("train"), config.seed)}



def add_reviewed(split: pd.DataFrame, folder: str) -> pd.DataFrame:
    """The split plus the reviewed images of `folder` as training images
    (core.training.additions.reviewed_for_training: none of a validation or test patient), so the
    held-out splits stay patient-disjoint and are never changed."""
    held_out = set(split.loc[split["split"] != "train", "case"])
    kept = reviewed_for_training(folder, held_out).assign(split="train", protocol=split["protocol"].iloc[0])
    return pd.concat([split, kept], ignore_index=True)


def choose_strategy(name: str = "auto", devices: str | None = None) -> tf.distribute.Strategy:
    """MultiWorkerMirrored when TF_CONFIG is set, Mirrored for >1 GPU or when asked, else default."""
    if name not in ("auto", "default", "mirrored"):
        raise UserInputError(f"Unknown strategy {name!r}; use auto, mirrored or default")
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    device_list = [d.strip() for d in devices.split(",") if d.strip()] if devices else None
    if name == "mirrored" or device_list or (name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy(devices=device_list)
    return tf.distribute.get_strategy()


def compile_model(model, hierarchy: str, learning_rate: float) -> None:
    """Adam + cross-entropy per output; weighted accuracies, so stage 2 ignores the other class."""
    outputs = list(output_sizes(hierarchy))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss={name: keras.losses.CategoricalCrossentropy() for name in outputs},
                  weighted_metrics={name: [keras.metrics.CategoricalAccuracy(name="accuracy")] for name in outputs})


def _callbacks(run_dir: Path, writer, config, steps: int, has_val: bool, phase: str) -> list:
    """Early stopping and LR reduction on the validation loss; or, with early_stopping off, a fixed
    schedule: the LR halves when the TRAINING loss stalls and the last epoch's weights are kept.
    (With a validation split of a few patients, its loss jumps by a factor of five from one epoch to
    the next, and "best on validation" picks an epoch by chance.)"""
    monitor = "val_loss" if has_val and config.early_stopping else "loss"
    callbacks = [
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=max(1, config.patience // 2),
                                          min_lr=1e-6),
        keras.callbacks.ModelCheckpoint(str(run_dir / "best.weights.h5"), monitor=monitor,
                                        save_best_only=config.early_stopping, save_weights_only=True),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv")),
        keras_callback(writer, config.epochs, steps, phase),  # last: sees the learning rate in the logs
    ]
    if config.early_stopping:
        callbacks.insert(0, keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience,
                                                          restore_best_weights=True))
    return callbacks


def _dataset(table: pd.DataFrame, config, data: dict, **options):
    """core.data.pipeline.make_dataset with the run's hierarchy, batch, input size and stain normaliser."""
    return make_dataset(table, config.hierarchy, config.batch_size, input_size=config.input_size,
                        normalizer=data["normalizer"], **options)


def fit_finetune(model, data, config, run_dir, writer, strategy):
    """The whole network, on augmented images decoded once and cached."""
    cache = {"memory": True, "none": False}.get(config.cache, config.cache)
    train_ds = _dataset(data["train"], config, data, training=True, augment=True, shuffle_seed=config.seed,
                        subtype_weights=data["subtype_weights"], cache=cache,
                        augment_strength=config.augment_strength, zoom=config.zoom)
    val_ds = _dataset(data["val"], config, data, cache=bool(cache)) if len(data["val"]) else None
    steps = math.ceil(len(data["train"]) / config.batch_size)
    follow_batch_statistics(model, steps)
    callbacks = _callbacks(run_dir, writer, config, steps, val_ds is not None, "training")
    build_training_state(model, train_ds.element_spec)
    return model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks,
                     verbose=0, shuffle=False)


def follow_batch_statistics(model, steps_per_epoch: int) -> float:
    """BatchNorm momentum so its moving statistics average over about one epoch; returns it.

    Keras' 0.99 averages over ~100 steps. A small data set has 15 steps an epoch, so during the
    first many epochs the moving statistics (what validation and early stopping see) lag far
    behind the weights: validation accuracy jumped between 0.23 and 0.95 from one epoch to the
    next on the 757-image set, and early stopping picked an epoch by chance. The full data set
    (146 steps an epoch) keeps 0.99. A test-sized set (4 steps an epoch) gets 0.6: with a floor
    of 0.8 its validation loss saw mostly the initial statistics and early stopping could keep
    the untrained first epoch. The saved model is recalibrated exactly anyway.
    """
    momentum = float(min(0.99, max(0.5, 1.0 - 2.0 / (steps_per_epoch + 1))))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
    return momentum


def _features(extractor, tables: list[pd.DataFrame], config, data, writer) -> list[tuple]:
    """Pooled tap features of each table's rows, computed once per distinct image (val rows and
    oversampled duplicates cost nothing extra) and, with config.feature_cache, read from the
    on-disk cache where an earlier run computed them (core.training.feature_cache)."""
    unique = pd.concat(tables).drop_duplicates("path").reset_index(drop=True)
    cache = FeatureCache(extractor_key(extractor, config.input_size, data["normalizer"].to_dict())) \
        if config.feature_cache else None
    digests = [content_digest(path) for path in unique["path"]] if cache else []
    stored = [cache.get(digest) for digest in digests] if cache else [None] * len(unique)
    missing = [i for i, features in enumerate(stored) if features is None]
    steps = max(1, math.ceil(len(missing) / config.batch_size))
    message = f"extracting features of {len(missing)} images" + (
        f" ({len(unique) - len(missing)} read from the feature cache)" if cache else "")
    writer.emit("epoch_begin", epoch=0, epochs=config.epochs, steps=steps, message=message)
    if missing:
        dataset = _dataset(unique.iloc[missing], config, data, cache=False)
        extracted = extractor.predict(dataset, verbose=0,
                                      callbacks=[keras_callback(writer, config.epochs, steps, message)])
        for row, i in enumerate(missing):
            stored[i] = tuple(np.asarray(tap[row]) for tap in extracted)
            if cache:
                cache.put(digests[i], stored[i])
    data["feature_cache"] = ({"folder": portable(cache.folder), "read": len(unique) - len(missing),
                              "extracted": len(missing)} if cache else None)
    features = [np.stack([image[tap] for image in stored]) for tap in range(len(stored[0]))]
    row_of = {path: i for i, path in enumerate(unique["path"])}
    rows = [np.array([row_of[p] for p in table["path"]], dtype=np.int64) for table in tables]
    return [tuple(f[r] for f in features) for r in rows]


def fit_fast(model, data, config, run_dir, writer, strategy):
    """Frozen backbone: features once, then only the (shared) head layers train on them."""
    set_backbone_trainable(model, False)
    with strategy.scope():
        heads = head_model(model, config.hierarchy)
        compile_model(heads, config.hierarchy, config.learning_rate)
        extractor = feature_extractor(model)
    has_val = len(data["val"]) > 0
    features = _features(extractor, [data["train"], data["val"]] if has_val else [data["train"]], config, data, writer)

    def dataset(table, table_features, training, subtype_weights=None):
        targets, weights = targets_and_weights(table, config.hierarchy, subtype_weights)
        ds = tf.data.Dataset.from_tensor_slices((table_features, targets, weights))
        if training:
            ds = ds.shuffle(len(table), seed=config.seed, reshuffle_each_iteration=True)
        return ds.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)

    train_ds = dataset(data["train"], features[0], True, data["subtype_weights"])
    val_ds = dataset(data["val"], features[1], False) if has_val else None
    steps = math.ceil(len(data["train"]) / config.batch_size)
    callbacks = _callbacks(run_dir, writer, config, steps, has_val, "training heads")
    build_training_state(heads, train_ds.element_spec)
    history = heads.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks,
                        verbose=0, shuffle=False)
    return history


def recalibrate_batchnorm(model, images: pd.DataFrame, config, data: dict, max_batches: int = 50) -> int:
    """Set BatchNorm moving statistics to the mean batch statistics of the un-augmented training
    images under the final weights ("precise BN"); returns the number of batches used.

    With momentum 0.99 the moving averages need hundreds of steps to catch up; small data (a demo
    run, the few steps of a fast-mode head) gives far fewer, and the saved model would normalise
    with stale statistics. Frozen layers (fast mode's backbone) run in inference mode and keep theirs.
    """
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not layers or len(images) == 0:
        return 0
    momenta = [layer.momentum for layer in layers]
    dataset = _dataset(images.drop_duplicates("path"), config, data, training=True, cache=False,
                       shuffle_seed=config.seed)
    used = 0
    try:
        for used, (batch, _, _) in enumerate(dataset.take(max_batches), start=1):
            for layer in layers:
                layer.momentum = 1.0 - 1.0 / used  # a running mean over batches
            model(batch, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return used


def validate_final(model, val: pd.DataFrame, config, data: dict, strategy) -> dict:
    """val_* metrics of the weights being saved (after the recalibration)."""
    if len(val) == 0:
        return {}
    if not getattr(model, "compiled", False):  # fast mode compiled only the head model
        with strategy.scope():
            compile_model(model, config.hierarchy, config.learning_rate)
    dataset = _dataset(val, config, data, cache=False)
    return {f"val_{k}": v for k, v in metric_floats(model.evaluate(dataset, verbose=0, return_dict=True)).items()}


def _after_training(run_dir: Path, what: str, command: str, **options):
    """Calibration, then evaluation, of the saved model. A failure fails the run: a model whose
    calibration or evaluation broke must not look like a finished, measured one (train's final_events moves
    it aside, and says where)."""
    from core.evaluation.evaluate import evaluate_run
    from core.training.calibrate_run import calibrate_run

    try:
        return (calibrate_run if what == "calibration" else evaluate_run)(run_dir, **options)
    except Exception as error:
        steps = f"python -m core {command} {run_dir}" + (f", then python -m core evaluate {run_dir}"
                                                          if command == "calibrate" else "")
        raise BreakhisError(f"the model was saved, but its {what} failed ({type(error).__name__}: {error}); to "
                            f"finish it, move {run_dir / (UNFINISHED + 'model')} back to {run_dir / 'model'} and run "
                            f"{steps}") from error


def _evaluate(run_dir: Path, baselines: bool) -> dict:
    """core.evaluation.evaluate on the test split -> the headline numbers."""
    result = _after_training(run_dir, "evaluation", "evaluate", baselines=baselines)
    return {f"test_{k}": v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _run(config: TrainConfig, run_dir: Path, writer: ProgressWriter) -> dict:
    keras.utils.set_random_seed(config.seed)
    data = prepare_data(config)
    refuse_untaught_classes(data["train"])
    relative_to_data(data["split"], config.data).to_csv(run_dir / "split.csv", index=False)
    strategy = choose_strategy(config.strategy, config.devices)
    on_gpu = bool(tf.config.list_logical_devices("GPU"))
    mixed = config.mode == "finetune" and on_gpu
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    with strategy.scope():
        model, weights_used = build_classifier(config.backbone, config.hierarchy, config.weights, config.input_size,
                                               **head_options(config))
        if config.learning_rate is None:
            pretrained = config.mode == "finetune" and not weights_used.startswith("random")
            config.learning_rate = 1e-4 if pretrained else 1e-3
        if config.mode == "finetune":
            compile_model(model, config.hierarchy, config.learning_rate)
    kind = type(strategy).__name__
    distribution = {"strategy": "none" if kind.startswith("_Default") else kind,
                    "replicas": int(strategy.num_replicas_in_sync), "mixed_precision": mixed, "gpu": on_gpu}
    counts = split_counts(data)  # distinct images; an epoch's steps come from the rows (oversampled copies too)
    steps = math.ceil(len(data["train"]) / config.batch_size)
    settings = {**dataclasses.asdict(config), "weights_init": weights_used, "distribution": distribution,
                "counts": counts, "skipped_files": len(data["skipped"])}
    write_json_atomic(run_dir / "config.json", settings)
    gaps = held_out_gaps(data["split"])
    for gap in gaps:
        log.warning(gap)
    writer.emit("start", epochs=config.epochs, steps=steps, counts=counts, warnings=gaps,
                message=f"{config.mode} {config.backbone}: {counts['train']} training images"
                        + (f" and {counts['synthetic']} synthetic (GAN) images" if counts["synthetic"] else "") + ", "
                        f"{len(data['skipped'])} files skipped, {distribution['strategy']} x{distribution['replicas']}"
                        + "".join(f"; WARNING: {gap}" for gap in gaps),
                config=settings)

    multiworker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    started = time.perf_counter()
    if multiworker:
        follow_batch_statistics(model, steps)
        history = fit_multiworker(model, data, config, run_dir, writer, strategy, _dataset).history
    else:
        history = (fit_fast if config.mode == "fast" else fit_finetune)(model, data, config, run_dir, writer,
                                                                        strategy).history
    trained = weights_fingerprint(model)  # equal on every worker of a multi-worker run
    monitor = "val_loss" if "val_loss" in history else "loss"
    epochs_run = len(history.get(monitor, []))
    kept = (int(np.argmin(history[monitor])) + 1 if config.early_stopping else epochs_run) if epochs_run else None
    summary = {"epochs": epochs_run, "best_epoch": kept, "early_stopping": config.early_stopping and not multiworker,
               "seconds": round(time.perf_counter() - started, 1)}  # wall-clock fit, as a fields card's
    if not multiworker:  # both run the model outside strategy.run, which a multi-worker model cannot
        distribution["batchnorm_recalibration_batches"] = recalibrate_batchnorm(model, data["train"], config, data)
    if config.mode == "fast":  # only now: the frozen backbone's statistics must stay what the heads saw
        set_backbone_trainable(model, True)  # saved unfrozen, ready to be fine-tuned later
    validation = {} if multiworker else validate_final(model, data["val"], config, data, strategy)
    if mixed:  # save a float32 copy: portable to CPU-only machines
        keras.mixed_precision.set_global_policy("float32")
        portable, _ = build_classifier(config.backbone, config.hierarchy, None, config.input_size, **head_options(config))
        portable.set_weights(model.get_weights())
        model = portable
    card = model_card(config, data, weights_used, summary, distribution, validation)
    model_dir = save_model_folder(model, run_dir / "model", card)
    if config.evaluate and counts["val"]:
        _after_training(run_dir, "calibration", "calibrate")
    metrics = {**validation, **(_evaluate(run_dir, config.baselines) if config.evaluate and counts["test"] else {})}
    return {"status": "completed", "model_dir": str(model_dir), "metrics": metrics, "epochs_run": epochs_run,
            "weights_fingerprint": trained, **summary}


def train(config: TrainConfig | dict) -> dict:
    """Train exactly one run (one split, or one fold of a k-fold split); returns a summary. On
    SIGTERM raises Cancelled, on failure re-raises, in both cases after writing the final events,
    so the caller and the stream both know. Every fold in one go: core.training.crossval."""
    config = checked(config)
    if config.all_folds:
        raise UserInputError(f"--folds {config.folds} without --fold is a cross-validation of every fold: "
                             "run core.training.crossval.cross_validate (python -m core train does)")
    chief, worker = is_chief()
    run_dir = Path(config.out) if chief else Path(tempfile.mkdtemp(prefix=f"breakhis-worker{worker}-"))
    claim = claim_run(run_dir, ("progress.jsonl", "model"))  # this process's until the run ends
    config.data = str(Path(config.data).resolve())  # split.csv paths stay valid from any directory
    if not chief:  # evaluation and calibration are the chief's; this worker only trains in step
        config.evaluate, config.out = False, str(run_dir)
    writer = ProgressWriter(run_dir / "progress.jsonl", echo_stdout=config.echo_stdout)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        with final_events(writer, run_dir):  # a model saved by a run that then stopped is moved aside
            result = _run(config, run_dir, writer)
            writer.emit("end", status="completed", model_dir=result["model_dir"] if chief else None,
                        metrics=result["metrics"], epoch=result["epochs_run"], epochs=config.epochs,
                        weights_fingerprint=result.get("weights_fingerprint"), worker=worker,
                        message=f"kept epoch {result['best_epoch']} of {result['epochs_run']}")
            return result
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        claim.close()
        if not chief:  # a non-chief worker leaves nothing behind: the chief's run folder is the run
            shutil.rmtree(run_dir, ignore_errors=True)


