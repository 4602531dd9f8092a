"""Training across machines: MultiWorkerMirroredStrategy with a plain distributed loop.

Keras 3's Model.fit does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585: the
distributed batches reach the train function as PerReplica values it cannot convert), so with
TF_CONFIG set the run trains with the same model, loss, sample weights, optimizer and tf.data
pipeline in the loop TensorFlow's own multi-worker guide uses: strategy.run per global batch, the
per-example loss averaged over the global batch, gradients all-reduced by the strategy. It trains
a fixed number of epochs (no early stopping: validation is not distributed here) and writes the
same progress events and history.csv as Model.fit. Only the chief writes the run folder
(is_chief, below); each worker computes the same weights.
"""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import keras
import pandas as pd
import tensorflow as tf

from core.data.labels import output_sizes
from core.digests import weights_sha256


def fit_multiworker(model, data, config, run_dir, writer, strategy, dataset) -> SimpleNamespace:
    """Train `model` (built in `strategy.scope()`) on the training split; returns an object with a
    Keras-like `.history` dict."""
    outputs = list(output_sizes(config.hierarchy))
    train_ds = dataset(data["train"], config, data, training=True, augment=True, shuffle_seed=config.seed,
                       subtype_weights=data["subtype_weights"], cache=True,
                       augment_strength=config.augment_strength, zoom=config.zoom)
    distributed = strategy.experimental_distribute_dataset(train_ds)
    with strategy.scope():
        optimizer = keras.optimizers.Adam(config.learning_rate)
        crossentropy = keras.losses.CategoricalCrossentropy(reduction=None)

    def replica_step(images, targets, weights):
        with tf.GradientTape() as tape:
            predictions = model(images, training=True)
            per_example = tf.add_n([crossentropy(targets[name], predictions[name]) * weights[name]
                                    for name in outputs])
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=config.batch_size)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def train_step(batch):
        losses = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    steps = math.ceil(len(data["train"]) / config.batch_size)
    history = {"loss": []}
    for epoch in range(1, config.epochs + 1):
        writer.emit("epoch_begin", epoch=epoch, epochs=config.epochs, steps=steps, message="training (multi-worker)")
        total, count = 0.0, 0
        for batch in distributed:
            total += float(train_step(batch))
            count += 1
        history["loss"].append(total / max(count, 1))
        writer.emit("epoch_end", epoch=epoch, epochs=config.epochs, steps=steps,
                    metrics={"loss": history["loss"][-1], "learning_rate": config.learning_rate})
    pd.DataFrame({"epoch": range(len(history["loss"])), **history}).to_csv(run_dir / "history.csv", index=False)
    return SimpleNamespace(history=history)


def is_chief() -> tuple[bool, int]:
    """(does this process write the run folder, its worker index). Without TF_CONFIG there is one
    process, the chief; under MultiWorkerMirroredStrategy the chief is the "chief" task, or worker 0
    when the cluster has none (TensorFlow's own convention)."""
    try:
        spec = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        return True, 0
    task = spec.get("task") or {}
    kind, index = task.get("type", "chief"), int(task.get("index", 0))
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in (spec.get("cluster") or {})), index


def weights_fingerprint(model) -> str:
    """SHA-256 (first 16 hex digits) of the trainable weights' bytes: the same on workers that agree.
    (BatchNorm moving statistics are each worker's own estimate from its share of the batches.)"""
    return weights_sha256(model.trainable_weights)[:16]
