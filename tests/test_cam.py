"""Class activation maps: right size (the ORIGINAL image's), right range, right target, every
method, and our single-pass Grad-CAM computes exactly what tf-keras-vis' Gradcam computes."""

import numpy as np
import pytest
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.utils.scores import CategoricalScore

from core.data.images import load_image
from core.data.labels import CLASSES, SUBTYPES_BY_CLASS
from core.model import cam as ex
from core.model import heatmap as hm
from core.model.classifier import build_classifier
from core.model.folders import save_model_folder
from core.model.loading import load_predictor

SIZE = 64


def _predictor(tmp_path_factory, hierarchy, backbone="small_cnn", size=SIZE):
    import keras

    keras.utils.set_random_seed(0)  # the same untrained weights every run: its maps are not empty
    model, _ = build_classifier(backbone, hierarchy, weights=None, input_size=size)
    card = {"name": f"tiny-{hierarchy}", "backbone": backbone, "hierarchy": hierarchy}
    return load_predictor(save_model_folder(model, tmp_path_factory.mktemp(hierarchy) / "model", card))


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return _predictor(tmp_path_factory, "hierarchical")


@pytest.fixture(scope="module")
def sample(samples_dir):
    """A real 700x460 BreakHis image."""
    image = load_image(next(iter(sorted(samples_dir.rglob("SOB_M_DC-*.png"))))).rgb
    assert image.shape == (460, 700, 3)
    return image


@pytest.mark.parametrize("method", ex.METHODS)
@pytest.mark.parametrize("stage", ex.STAGES)
def test_every_method_gives_an_original_size_map_in_0_1(predictor, sample, stage, method):
    explanation = ex.explain(predictor, sample, method).explanations[stage]
    heatmap = explanation.heatmap
    assert heatmap.shape == (460, 700) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    # scaled to [0, 1] at CAM resolution, then resized: the peak is 1 up to the interpolation. No
    # "or a note": an empty map must fail here (the empty case has its own test below).
    assert explanation.note == "" and heatmap.max() == pytest.approx(1.0, abs=0.01)
    assert 0.0 < heatmap.mean() < 1.0  # a map, not a constant
    prediction = predictor.predict([sample])[0]
    assert explanation.target == (prediction.label if stage == "stage1" else prediction.subtype)
    assert (explanation.stage, explanation.method) == (stage, method)


def test_a_flat_cam_becomes_an_empty_map_that_says_so():
    for flat in (np.zeros((7, 7)), np.full((7, 7), 3.0), np.full((7, 7), np.nan)):
        heatmap, note = hm.to_heatmap(flat, (46, 70))
        assert heatmap.shape == (46, 70) and not heatmap.any() and note.startswith("empty map")
    heatmap, note = hm.to_heatmap(np.arange(49.0).reshape(7, 7), (46, 70))
    assert note == "" and heatmap.max() == pytest.approx(1.0, abs=0.02) and heatmap.min() == pytest.approx(0.0, abs=0.02)


@pytest.fixture(scope="module")
def resnet_predictor(tmp_path_factory):
    return _predictor(tmp_path_factory, "hierarchical", "resnet18_half", 128)


@pytest.mark.parametrize("which", ["small_cnn", "resnet18_half"])
def test_single_pass_gradcam_equals_tf_keras_vis_gradcam_for_every_target(predictor, resnet_predictor, sample, which):
    """The small CNN's heads read earlier layers, so its whole pass is recorded; a ResNet's heads read
    the CAM layer alone, so only they are (the backbone runs as a bare forward): the same maps."""
    predictor = predictor if which == "small_cnn" else resnet_predictor
    explainer = ex.explainer_for(predictor)
    assert (explainer._heads is None) == (which == "small_cnn")
    model_input = predictor.model_input([sample])
    _, cams = explainer.gradcam_pass(model_input)
    assert cams.shape[:2] == (1, len(ex.CAM_TARGETS)) == (1, 10) and float(np.max(cams)) > 0  # maps to compare
    for label, subtype in ex.CAM_TARGETS:
        output, index = (("stage1", CLASSES.index(label)) if subtype is None
                         else (f"{label}_subtype", SUBTYPES_BY_CLASS[label].index(subtype)))
        reference = Gradcam(explainer.logit_models[output])(
            CategoricalScore([index]), model_input, penultimate_layer=explainer.cam_layer,
            seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False)
        ours = ex.cam_of(cams.numpy(), label, subtype)[0]
        assert ours.shape == np.asarray(reference)[0].shape == ((8, 8) if which == "small_cnn" else (4, 4))
        np.testing.assert_allclose(ours, np.asarray(reference)[0], rtol=1e-4, atol=1e-6)


def test_explicit_targets_change_the_map(predictor, sample):
    lobular = ex.explain(predictor, sample, "gradcam", subtype="lobular_carcinoma").explanations["stage2"]
    fibro = ex.explain(predictor, sample, "gradcam", subtype="fibroadenoma").explanations["stage2"]
    assert (lobular.target, fibro.target) == ("lobular_carcinoma", "fibroadenoma")
    # Compared where the target acts, on the low-resolution maps: the displayed maps of an untrained
    # model may both be emptied by the padding-frame rule (core.model.heatmap.BORDER_RATIO).
    _, cams = ex.gradcam_batch(predictor, [sample])
    raw_lobular, raw_fibro = ex.cam_of(cams, "malignant", "lobular_carcinoma"), ex.cam_of(cams, "benign", "fibroadenoma")
    assert not np.allclose(raw_lobular, raw_fibro)
    assert np.allclose(lobular.heatmap, hm.to_heatmap(raw_lobular[0], lobular.heatmap.shape)[0], atol=1e-5)
    benign = ex.explain(predictor, sample, "gradcam++", label="benign").explanations["stage1"]
    assert benign.target == "benign"
    with pytest.raises(ValueError, match="Stage-2 target"):
        ex.explain(predictor, sample, subtype="benign")
    with pytest.raises(ValueError, match="Stage-1 target"):
        ex.explain(predictor, sample, label="lobular_carcinoma")
    with pytest.raises(ValueError, match="method must be"):
        ex.explain(predictor, sample, method="lime")


def test_explain_is_the_prediction_plus_both_maps(predictor, sample):
    diagnosis = ex.explain(predictor, sample)
    expected = predictor.predict([sample])[0]
    assert (diagnosis.prediction.label, diagnosis.prediction.subtype) == (expected.label, expected.subtype)
    np.testing.assert_allclose(list(diagnosis.prediction.stage1.values()), list(expected.stage1.values()), atol=1e-5)
    assert diagnosis.explanations["stage1"].target == expected.label
    assert diagnosis.explanations["stage2"].target == expected.subtype
    explicit = ex.explain(predictor, sample, label=expected.label, subtype=expected.subtype)
    np.testing.assert_allclose(diagnosis.explanations["stage2"].heatmap, explicit.explanations["stage2"].heatmap,
                               atol=1e-5)


def test_flat_models_explain_both_stages(tmp_path_factory, sample):
    flat = _predictor(tmp_path_factory, "flat")
    prediction = flat.predict([sample])[0]
    for method in ("gradcam", "scorecam"):
        stage1, stage2 = ex.explain(flat, sample, method).explanations.values()
        assert stage1.target == prediction.label and stage2.target in SUBTYPES_BY_CLASS[prediction.label]
        assert stage1.heatmap.shape == stage2.heatmap.shape == (460, 700)


def test_overlay_blends_a_turbo_coloured_map(sample):
    heatmap = np.tile(np.linspace(0, 1, 700, dtype=np.float32), (460, 1))
    blended = hm.overlay(sample, heatmap, alpha=0.4)
    assert blended.shape == sample.shape and blended.dtype == np.uint8
    np.testing.assert_array_equal(hm.overlay(sample, heatmap, alpha=0.0), sample)
    np.testing.assert_array_equal(hm.overlay(sample, heatmap, alpha=1.0), hm.colorize(heatmap))
    assert hm.overlay(sample, np.ones((7, 7), np.float32)).shape == sample.shape  # resized to fit
    low, middle, high = hm.TURBO[32], hm.TURBO[128], hm.TURBO[240]
    assert low.argmax() == 2 and middle.argmax() == 1 and high.argmax() == 0  # blue -> green -> red
    with pytest.raises(ValueError, match="alpha"):
        hm.overlay(sample, heatmap, alpha=2)


def test_an_empty_map_is_zero_with_a_note():
    heatmap, note = hm.to_heatmap(np.zeros((4, 4), np.float32), (46, 70))
    assert heatmap.shape == (46, 70) and not heatmap.any() and "empty" in note


def _count_gradcam_passes(predictor, monkeypatch) -> list:
    explainer = ex.explainer_for(predictor)
    calls, original = [], explainer.gradcam_pass

    def counted(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(explainer, "gradcam_pass", counted)
    return calls


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_explicit_targets_give_the_per_stage_maps_of_the_prediction(predictor, sample, method, monkeypatch):
    prediction = predictor.predict([sample])[0]
    calls = _count_gradcam_passes(predictor, monkeypatch)
    stage1, stage2 = ex.explain(predictor, sample, method, prediction.label, prediction.subtype).explanations.values()
    assert len(calls) == (1 if method == "gradcam" else 0)  # ONE pass gives both stages
    assert (stage1.stage, stage2.stage) == ex.STAGES
    assert (stage1.target, stage2.target) == (prediction.label, prediction.subtype)
    default = ex.explain(predictor, sample, method).explanations  # targets default to the prediction
    np.testing.assert_allclose(stage1.heatmap, default["stage1"].heatmap, atol=1e-5)
    np.testing.assert_allclose(stage2.heatmap, default["stage2"].heatmap, atol=1e-5)
    with pytest.raises(ValueError, match="not a subtype"):
        ex.explain(predictor, sample, method, "benign", "lobular_carcinoma")


def test_explain_runs_one_gradcam_pass(predictor, sample, monkeypatch):
    calls = _count_gradcam_passes(predictor, monkeypatch)
    ex.explain(predictor, sample)
    assert len(calls) == 1


def test_a_batch_of_images_gets_each_image_s_own_maps(predictor, sample):
    """One batched pass gives every image the maps it gets alone (images do not interact)."""
    images = [sample, sample[::-1].copy(), sample[:, ::-1].copy()]
    outputs, cams = ex.gradcam_diagnosis(predictor, images)
    assert len(cams) == 3 and outputs["stage1"].shape == (3, 2)
    for i, image in enumerate(images):
        alone = ex.explain(predictor, image)
        assert (alone.prediction.label, alone.prediction.subtype) == (cams[i].label, cams[i].subtype)
        heatmap, _ = hm.to_heatmap(cams[i].stage2[0], image.shape[:2])
        np.testing.assert_allclose(heatmap, alone.explanations["stage2"].heatmap, atol=1e-4)


def test_with_tta_one_pass_over_the_8_views_gives_tta_outputs_and_the_image_s_own_maps(predictor, sample, monkeypatch):
    images = [sample, sample[::-1].copy()]
    calls = _count_gradcam_passes(predictor, monkeypatch)
    outputs, cams = ex.gradcam_diagnosis(predictor, images, tta=True)
    assert [(len(args[0]), args[1]) for args in calls] == [(2, True)]  # ONE pass: the 8 views of each of the 2 images
    expected = predictor.probabilities(images, tta=True)
    assert set(outputs) == set(expected)  # the means and every view (the uncertainty)
    for name, value in expected.items():
        np.testing.assert_allclose(outputs[name], value, atol=1e-5)
    _, plain = ex.gradcam_diagnosis(predictor, images, labels=[c.label for c in cams],
                                    subtypes=[c.subtype for c in cams])
    for with_tta, without in zip(cams, plain):  # the maps are the unrotated image's
        np.testing.assert_allclose(with_tta.stage1[0], without.stage1[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(with_tta.stage2[0], without.stage2[0], rtol=1e-4, atol=1e-6)
