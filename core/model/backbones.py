"""Backbone registry: one entry per backbone, one builder.

Each entry says how to build the convolutional trunk, which layers are the multi-scale taps, which
layer Grad-CAM should look at and how pixels are normalised. Adding a backbone is one entry.
Backbones are built on our own input tensor so the final model is one flat graph (no nested
base model), which is what lets Grad-CAM reach the taps.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Callable

import keras
from keras import layers

from core.errors import UserInputError

log = logging.getLogger(__name__)

# Per-channel ImageNet statistics for the "torch" normalisation used by DenseNet.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="core")
class PixelNormalization(layers.Layer):
    """Raw 0-255 RGB -> what a backbone expects. Inside the model, so callers never normalise."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("torch", "caffe", "unit", "none"):
            raise ValueError(f"Unknown normalisation mode: {mode}")
        self.mode = mode

    def call(self, inputs):
        ops = keras.ops
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_IMAGENET_MEAN, dtype=inputs.dtype)
            std = ops.convert_to_tensor(_IMAGENET_STD, dtype=inputs.dtype)
            return (inputs / 255.0 - mean) / std
        if self.mode == "caffe":
            bgr = ops.flip(inputs, axis=-1)
            return bgr - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=inputs.dtype)
        if self.mode == "unit":
            return inputs / 255.0
        return inputs

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable  # (input_tensor, weights) -> keras.Model built on that tensor
    taps: tuple[str, ...]  # multi-scale feature layers, shallow to deep
    cam_layer: str  # layer Grad-CAM differentiates against
    normalization: str  # PixelNormalization mode
    pretrained: bool = True  # has ImageNet weights


def _application(constructor):
    def build(input_tensor, weights):
        return constructor(include_top=False, weights=weights, input_tensor=input_tensor)
    return build


def _small_cnn(input_tensor, weights):
    """The four-layer CNN baseline that published BreakHis projects compare against."""
    if weights not in (None, "none"):
        raise UserInputError("small_cnn has no pretrained weights here; train it from scratch (--weights none)")
    x = input_tensor
    for i, filters in enumerate((32, 64, 128, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"cnn_block{i}_conv")(x)
        x = layers.BatchNormalization(name=f"cnn_block{i}_bn")(x)
        x = layers.Activation("relu", name=f"cnn_block{i}_out")(x)
        x = layers.MaxPooling2D(2, name=f"cnn_block{i}_pool")(x)
    return keras.Model(input_tensor, x, name="small_cnn")


def _resnet18(input_tensor, weights, width: int = 64):
    """ResNet-18 (He et al. 2016: basic blocks, [2, 2, 2, 2]) for training from scratch: Keras ships
    no ResNet-18, and at 757 images it learns subtypes where DenseNet121 does not (issue 25's table).
    Written here, layer by layer, so its CAM layer has a stable name."""
    if weights not in (None, "none"):
        raise UserInputError("resnet18 has no pretrained weights here; train it from scratch (--weights none)")
    x = layers.Conv2D(width, 7, strides=2, padding="same", use_bias=False, name="res_stem_conv")(input_tensor)
    x = layers.BatchNormalization(name="res_stem_bn")(x)
    x = layers.Activation("relu", name="res_stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="res_stem_pool")(x)
    for stage, filters in enumerate((width, 2 * width, 4 * width, 8 * width), start=1):
        for block in (1, 2):
            name = f"res{stage}_block{block}"
            stride = 2 if stage > 1 and block == 1 else 1
            shortcut = x
            if stride != 1 or int(x.shape[-1]) != filters:
                shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_down")(x)
                shortcut = layers.BatchNormalization(name=f"{name}_down_bn")(shortcut)
            y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
            y = layers.BatchNormalization(name=f"{name}_bn1")(y)
            y = layers.Activation("relu", name=f"{name}_relu1")(y)
            y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
            # Zero-initialised last BN of each block: every block starts as the identity (Goyal et al.
            # 2017), which lets a network trained from scratch take the recipe's large learning rate.
            y = layers.BatchNormalization(gamma_initializer="zeros", name=f"{name}_bn2")(y)
            x = layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))
    return keras.Model(input_tensor, x, name="resnet18" if width == 64 else f"resnet18_w{width}")


BACKBONES = {
    b.name: b
    for b in (
        Backbone("densenet121", _application(keras.applications.DenseNet121),
                 ("conv3_block12_concat", "conv4_block24_concat", "conv5_block16_concat"),
                 "conv5_block16_concat", "torch"),
        Backbone("resnet50", _application(keras.applications.ResNet50),
                 ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
                 "conv5_block3_out", "caffe"),
        Backbone("vgg19", _application(keras.applications.VGG19),
                 ("block3_conv4", "block4_conv4", "block5_conv4"), "block5_conv4", "caffe"),
        # EfficientNet carries its own rescaling layers, so it takes raw pixels.
        Backbone("efficientnetb0", _application(keras.applications.EfficientNetB0),
                 ("block3b_add", "block5c_add", "top_activation"), "top_activation", "none"),
        Backbone("resnet18", _resnet18, ("res4_block2_out",), "res4_block2_out", "unit", pretrained=False),
        # Half the channels, a quarter of the work: the field recipe on 2 CPU cores (README, issue 25).
        Backbone("resnet18_half", functools.partial(_resnet18, width=32), ("res4_block2_out",), "res4_block2_out",
                 "unit", pretrained=False),
        Backbone("small_cnn", _small_cnn,
                 ("cnn_block2_out", "cnn_block3_out", "cnn_block4_out"), "cnn_block4_out", "unit",
                 pretrained=False),
    )
}
DEFAULT_BACKBONE = "densenet121"


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UserInputError(f"Unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


def build_trunk(name: str, input_tensor, weights: str | None = "imagenet"):
    """Build backbone `name` on `input_tensor`; returns (tap tensors, description of the weights).

    weights: "imagenet" (default; when it cannot be downloaded, warn and fall back to random
    init; a backbone without ImageNet weights starts from random init), None / "none" for random
    init, or a path to a local weights file, which a backbone without pretrained weights refuses
    (its builder says so) rather than ignoring it.
    """
    backbone = get_backbone(name)
    normalized = PixelNormalization(backbone.normalization, name="pixel_normalization")(input_tensor)
    if weights in (None, "none") or (weights == "imagenet" and not backbone.pretrained):
        trunk, described = backbone.build(normalized, None), "random initialisation"
    elif weights == "imagenet":
        try:
            trunk, described = backbone.build(normalized, "imagenet"), "ImageNet"
        except Exception as error:  # Offline, proxy, or corrupt cache: keep going, loudly.
            message = (
                f"Could not load ImageNet weights for {name} ({type(error).__name__}: {error}). "
                "Continuing from random initialisation; pass --weights PATH to use a local file."
            )
            log.warning(message)
            trunk, described = backbone.build(normalized, None), "random initialisation (ImageNet unavailable)"
    else:
        if not os.path.exists(weights):
            raise UserInputError(f"Weights file not found: {weights}")
        trunk, described = backbone.build(normalized, weights), f"local file {os.path.basename(weights)}"
    return [trunk.get_layer(tap).output for tap in backbone.taps], described
