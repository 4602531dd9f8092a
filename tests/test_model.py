"""The backbone registry and the multi-scale hierarchical model."""

import keras
import numpy as np
import pytest

from core.data.labels import SUBTYPES_BY_CLASS
from core.errors import UserInputError
from core.model import backbones
from core.model.backbones import BACKBONES, PixelNormalization, get_backbone
from core.model.classifier import build_classifier, feature_extractor, head_model, output_sizes, set_backbone_trainable


def test_registry_lists_the_required_backbones():
    assert {"densenet121", "resnet50", "vgg19", "efficientnetb0", "small_cnn"} <= set(BACKBONES)
    with pytest.raises(ValueError, match="Unknown backbone"):
        get_backbone("alexnet")


def test_densenet_graph_is_flat_with_the_three_taps():
    model, weights = build_classifier("densenet121", weights=None)
    assert weights == "random initialisation"
    assert not any(isinstance(layer, keras.Model) for layer in model.layers), "nested base model"
    names = {layer.name for layer in model.layers}
    assert {"conv3_block12_concat", "conv4_block24_concat", "conv5_block16_concat"} <= names
    assert model.input_shape == (None, 224, 224, 3)


@pytest.mark.parametrize("hierarchy", ["hierarchical", "flat"])
def test_outputs_are_probability_distributions(hierarchy):
    model, _ = build_classifier("small_cnn", hierarchy, weights=None, input_size=64)
    outputs = model(np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("float32"))
    assert set(outputs) == set(output_sizes(hierarchy))
    for name, probs in outputs.items():
        probs = np.asarray(probs)
        assert probs.shape == (3, output_sizes(hierarchy)[name])
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    if hierarchy == "hierarchical":
        assert output_sizes(hierarchy)["benign_subtype"] == len(SUBTYPES_BY_CLASS["benign"])


def test_head_model_shares_weights_with_the_full_model():
    model, _ = build_classifier("small_cnn", weights=None, input_size=64)
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    full = model(images, training=False)
    heads = head_model(model, "hierarchical")(feature_extractor(model)(images, training=False), training=False)
    for name in full:
        np.testing.assert_allclose(np.asarray(full[name]), np.asarray(heads[name]), atol=1e-5)
    # Changing a head weight through the head model changes the full model: they are the same layer.
    layer = heads_layer = model.get_layer("stage1")
    kernel = heads_layer.kernel
    kernel.assign(kernel * 0.0)
    np.testing.assert_allclose(np.asarray(model(images)["stage1"]), 0.5, atol=1e-6)
    assert layer is head_model(model, "hierarchical").get_layer("stage1")


def test_freezing_the_backbone_keeps_heads_trainable():
    model, _ = build_classifier("small_cnn", weights=None, input_size=64)
    set_backbone_trainable(model, False)
    assert not model.get_layer("cnn_block1_conv").trainable
    assert model.get_layer("branch0_dense").trainable and model.get_layer("stage1").trainable


@pytest.mark.parametrize("mode, reference", [
    ("torch", keras.applications.densenet.preprocess_input),
    ("caffe", keras.applications.resnet50.preprocess_input),
])
def test_pixel_normalization_matches_keras_applications(mode, reference):
    pixels = np.random.default_rng(2).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = np.asarray(PixelNormalization(mode)(pixels))
    np.testing.assert_allclose(ours, reference(pixels.copy()), rtol=1e-4, atol=1e-3)


def test_unavailable_imagenet_weights_warn_and_fall_back(monkeypatch, caplog):
    """Offline: a clear warning and random init, never a crash (no network is touched)."""
    original = BACKBONES["densenet121"]

    def offline_build(input_tensor, weights):
        if weights == "imagenet":
            raise OSError("URL fetch failure (offline)")
        return original.build(input_tensor, weights)

    monkeypatch.setitem(BACKBONES, "densenet121", backbones.Backbone(
        original.name, offline_build, original.taps, original.cam_layer, original.normalization))
    with caplog.at_level("WARNING", logger="core.model.backbones"):
        model, weights = build_classifier("densenet121", weights="imagenet")
    assert "Could not load ImageNet weights" in caplog.text
    assert "ImageNet unavailable" in weights
    # ...and the model is the whole multi-scale DenseNet121, not a stand-in: its last dense block
    # (1024 channels at 7x7 for 224 px input) feeds the third tap.
    assert tuple(model.get_layer("conv5_block16_concat").output.shape[1:]) == (7, 7, 1024)
    assert model.get_layer("tap2_pool").input.shape[-1] == 1024


def test_missing_local_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="Weights file not found"):
        build_classifier("densenet121", weights=str(tmp_path / "nope.h5"))


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "resnet18_half"])
def test_a_weights_file_for_a_backbone_without_pretrained_weights_is_refused_not_ignored(name, tmp_path):
    """build_trunk skipped the file for these backbones and trained from random weights without a word."""
    from core.model.backbones import build_trunk
    from core.training.config import TrainConfig, checked

    weights = tmp_path / "trained.weights.h5"
    weights.write_bytes(b"weights")
    with pytest.raises(UserInputError, match="no pretrained weights here; train it from scratch"):
        build_trunk(name, keras.Input((64, 64, 3)), str(weights))
    with pytest.raises(UserInputError, match=f"--weights {weights}: {name} has no pretrained weights here"):
        checked(TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), backbone=name, weights=str(weights)))
    assert not (tmp_path / "run").exists()
    for default in ("imagenet", "none"):  # the default --weights still trains these from scratch
        assert build_trunk(name, keras.Input((64, 64, 3)), default)[1] == "random initialisation"
        checked(TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), backbone=name, weights=default))
