"""The multi-scale, hierarchical classifier.

backbone taps (3 scales) -> per tap: global average pool -> BN -> dense (L2) -> BN
-> concatenate -> per head: dense + dropout -> softmax.

Hierarchical mode has three heads on the shared features: stage 1 (benign/malignant) and one
stage-2 head per class (its four subtypes); at inference the stage-2 head used is the one
stage 1 picks. Flat mode has one 8-subtype head, for comparison.
The head layers are named so the same layers can be re-applied to cached pooled features
(fast mode trains them without running the backbone each step).
"""

from __future__ import annotations

import keras
from keras import layers, regularizers

from core.data.labels import FLAT_OUTPUT, HIERARCHICAL, INPUT_SIZE, STAGE1_OUTPUT, STAGE2_OUTPUTS, output_sizes
from core.model.backbones import DEFAULT_BACKBONE, build_trunk, get_backbone


class Heads:
    """The trainable layers after the backbone, created once, applicable to any pooled inputs."""

    def __init__(self, hierarchy: str, n_taps: int = 3, branch_units: int = 256,
                 head_units: int = 256, dropout: float = 0.5, l2: float = 1e-4,
                 model: keras.Model | None = None):
        self.hierarchy, self.n_taps = hierarchy, n_taps
        self.sizes = output_sizes(hierarchy)
        get = model.get_layer if model is not None else None

        def layer(name, factory):
            return get(name) if get else factory()

        self.branches = [
            (layer(f"branch{i}_bn_in", lambda: layers.BatchNormalization(name=f"branch{i}_bn_in")),
             layer(f"branch{i}_dense", lambda: layers.Dense(
                 branch_units, activation="relu", kernel_regularizer=regularizers.L2(l2),
                 name=f"branch{i}_dense")),
             layer(f"branch{i}_bn_out", lambda: layers.BatchNormalization(name=f"branch{i}_bn_out")))
            for i in range(n_taps)
        ]
        self.concat = layer("multiscale_concat", lambda: layers.Concatenate(name="multiscale_concat"))
        self.heads = {
            out: (layer(f"{out}_dense", lambda: layers.Dense(head_units, activation="relu", name=f"{out}_dense")),
                  layer(f"{out}_dropout", lambda: layers.Dropout(dropout, name=f"{out}_dropout")),
                  layer(out, lambda: layers.Dense(n, activation="softmax", dtype="float32", name=out)))
            for out, n in self.sizes.items()
        }

    @classmethod
    def of(cls, model: keras.Model, hierarchy: str) -> "Heads":
        """The head layers of an already built model (shared weights)."""
        return cls(hierarchy, n_taps=tap_count(model), model=model)

    def __call__(self, pooled: list) -> dict:
        branches = [bn_out(dense(bn_in(x))) for x, (bn_in, dense, bn_out) in zip(pooled, self.branches)]
        features = self.concat(branches)
        return {out: softmax(dropout(dense(features))) for out, (dense, dropout, softmax) in self.heads.items()}


def build_classifier(backbone: str = DEFAULT_BACKBONE, hierarchy: str = HIERARCHICAL,
                     weights: str | None = "imagenet", input_size: int = INPUT_SIZE,
                     **head_options) -> tuple[keras.Model, str]:
    """Build the classifier; returns (model, description of the backbone weights used).

    The model takes raw RGB pixels in [0, 255], shape (input_size, input_size, 3), and returns a
    dict of softmax outputs (see `output_sizes`).
    """
    inputs = keras.Input((input_size, input_size, 3), name="image")
    taps, weights_used = build_trunk(backbone, inputs, weights)
    pooled = [layers.GlobalAveragePooling2D(name=f"tap{i}_pool")(tap) for i, tap in enumerate(taps)]
    outputs = Heads(hierarchy, n_taps=len(taps), **head_options)(pooled)
    model = keras.Model(inputs, outputs, name=f"{backbone}_{hierarchy}")
    return model, weights_used


def tap_count(model: keras.Model) -> int:
    """Number of multi-scale taps of a built classifier (its tap{i}_pool layers)."""
    return sum(1 for layer in model.layers if layer.name.startswith("tap") and layer.name.endswith("_pool"))


def feature_extractor(model: keras.Model) -> keras.Model:
    """Image -> pooled tap features (the frozen part in fast mode)."""
    return keras.Model(model.inputs, [model.get_layer(f"tap{i}_pool").output for i in range(tap_count(model))])


def head_model(model: keras.Model, hierarchy: str) -> keras.Model:
    """Pooled features -> outputs, sharing the head weights with `model` (fast mode trains this)."""
    pooled_inputs = [keras.Input(model.get_layer(f"tap{i}_pool").output.shape[1:], name=f"tap{i}_features")
                     for i in range(tap_count(model))]
    return keras.Model(pooled_inputs, Heads.of(model, hierarchy)(pooled_inputs), name="heads")


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze or unfreeze everything before the pooled taps (head layers stay trainable)."""
    head_prefixes = ("branch", "multiscale_concat", STAGE1_OUTPUT, FLAT_OUTPUT, *STAGE2_OUTPUTS.values())
    for layer in model.layers:
        if not layer.name.startswith(head_prefixes) and not layer.name.startswith("tap"):
            layer.trainable = trainable


def cam_layer(backbone: str) -> str:
    """Layer name Grad-CAM should use for this backbone."""
    return get_backbone(backbone).cam_layer


@keras.saving.register_keras_serializable(package="core")
class HeadLogits(layers.Layer):
    """Pre-softmax output of a softmax Dense head, sharing that layer's weights (no copy): Grad-CAM
    differentiates logits, and the field recipe's 8-subtype loss is a softmax over both stage-2
    heads' logits."""

    def __init__(self, dense: layers.Dense, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense

    def call(self, inputs):
        logits = keras.ops.matmul(inputs, self.dense.kernel)
        return logits + self.dense.bias if self.dense.use_bias else logits


def head_logits(model: keras.Model, names) -> dict:
    """{head name: its logits tensor} on the model's graph, for the heads `names`."""
    return {name: HeadLogits(model.get_layer(name), name=f"{name}_logits", dtype="float32")(model.get_layer(name).input)
            for name in names}

