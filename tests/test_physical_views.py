"""Physical field views: a field model looks at the same tissue at every magnification an image
states (its file name's, the user's choice, --magnification), in the CLI, the app, evaluation and
training alike; unstated is read as 200X, and cards written before keep the views they were
measured with."""

import json

import numpy as np
import pytest

from core.data.fields import FIELD_PX, ViewSpec, restore_field
from core.data.images import load_image
from core.data.keras_augment import crop_and_resize
from core.model.classifier import build_classifier
from core.model.folders import save_model_folder
from core.model.loading import load_predictor

SIZE = 48
SPEC = ViewSpec(SIZE, physical=True)


@pytest.fixture(scope="module")
def physical(tmp_path_factory):
    """(untrained small CNN, its Predictor) with a card that declares physical field views."""
    import keras

    keras.utils.set_random_seed(0)
    model, _ = build_classifier("small_cnn", "hierarchical", weights=None, input_size=SIZE)
    card = {"name": "tiny-physical", "backbone": "small_cnn", "hierarchy": "hierarchical", "views": SPEC.to_dict()}
    return model, load_predictor(save_model_folder(model, tmp_path_factory.mktemp("physical") / "model", card))


@pytest.fixture(scope="module")
def field_40x(samples_dir):
    path = next(p for p in sorted(samples_dir.rglob("*.png")) if "-40-" in p.name)
    return path, load_image(path.read_bytes(), name=path.name).rgb


def test_a_crop_covers_the_same_tissue_at_every_stated_magnification():
    height, width = FIELD_PX[1], FIELD_PX[0]
    assert SPEC.crop_px_at("200X") == SPEC.crop_px_at(None) == SPEC.crop_px_at("not stated") == 224
    assert SPEC.crop_px_at("40X") == pytest.approx(224 / 5) and SPEC.crop_px_at("100x") == pytest.approx(112)
    at_40x = SPEC.boxes(height, width, "40X")
    assert np.allclose(at_40x[:, 2:], 224 / 5) and np.allclose(at_40x[:, 0] + at_40x[:, 2] / 2, height / 2)
    assert at_40x[0, 1] == 0 and at_40x[-1, 1] + at_40x[-1, 3] == pytest.approx(width)  # spread along the field
    assert np.allclose(SPEC.boxes(height, width, "400X")[:, 2:], height)  # less tissue than 224 um: all of it
    old = {k: v for k, v in SPEC.to_dict().items() if k != "physical"}  # a card written before physical views
    assert ViewSpec.from_card({"views": old}).crop_px_at("40X") == 224
    assert ViewSpec.from_card({"views": SPEC.to_dict()}) == SPEC
    assert "45 px at 40X" in SPEC.describe()


def test_the_predictor_sees_and_scores_what_training_evaluated(physical, field_40x):
    """The served inputs at 40X are the field's 45-px crops; its outputs equal the training side's
    predict_views (any backend) for each magnification, and 40X differs from unstated."""
    from core.training.field_fit import predict_views

    model, predictor = physical
    _, rgb = field_40x
    field = restore_field(rgb)
    seen = predictor.model_input([rgb], magnifications=["40X"])
    boxes = SPEC.boxes(field.shape[0], field.shape[1], "40X").astype(np.float32)
    expected = np.asarray(crop_and_resize(np.repeat(field[None].astype(np.float32), 3, 0), boxes, SIZE))
    assert seen.shape == (3, SIZE, SIZE, 3) and np.abs(seen - expected).max() < 1e-3
    assert np.abs(seen - predictor.model_input([rgb])).mean() > 1.0  # not the 224-px crops
    magnifications = ["40X", "200X", None]
    served = predictor.probabilities([rgb] * 3, magnifications=magnifications)
    trained = predict_views(model, np.stack([field] * 3), SPEC, magnifications=magnifications)
    for head in ("stage1", "benign_subtype", "malignant_subtype"):
        assert np.abs(served[head] - trained[head]).max() < 1e-4
    assert np.allclose(served["stage1"][1], served["stage1"][2])  # unstated is read as 200X
    assert predictor.uses_magnification
    with pytest.raises(ValueError, match="2 magnifications for 3"):
        predictor.probabilities([rgb] * 3, magnifications=["40X", None])


def test_the_grad_cam_of_a_40x_field_covers_only_the_tissue_its_crops_saw(physical, field_40x):
    from core.model.cam import gradcam_batch

    _, predictor = physical
    _, rgb = field_40x
    _, cams = gradcam_batch(predictor, [rgb, rgb], magnifications=["40X", "200X"])
    at_40x, at_200x = np.abs(cams[0]).sum(axis=0), np.abs(cams[1]).sum(axis=0)
    rows = at_40x.sum(axis=1)
    strip = rows > 0
    assert 0.1 < strip.mean() < 0.35  # the crops' 45-px strip of the 230-px field height
    assert strip[len(rows) // 2] and not strip[0] and not strip[-1]
    assert (at_200x.sum(axis=1) > 0).mean() > 0.95  # 224-px crops: nearly the whole height


def test_the_app_and_the_cli_pass_each_image_s_magnification(physical, field_40x, tmp_path, capsys):
    from core.app import service
    from core.cli import main

    _, predictor = physical
    path, rgb = field_40x
    data = path.read_bytes()
    queue = service.BatchQueue()
    # The file name states 40X; an unnamed copy takes the user's choice; without one it is read as 200X.
    read, outputs = service.classify(predictor, [(path.name, data), ("upload.png", data), ("other.png", data)],
                                     batches=queue, magnification="40X")
    alone = predictor.probabilities([rgb, rgb], magnifications=["40X", None])
    assert np.allclose(outputs["stage1"][0], alone["stage1"][0], atol=1e-5)
    assert np.allclose(outputs["stage1"][1], alone["stage1"][0], atol=1e-5)
    shown, unstated = service.classify(predictor, [("other.png", data)], batches=queue)
    assert np.allclose(unstated["stage1"][0], alone["stage1"][1], atol=1e-5)
    assert any("looked at this field as 200X" in note for note in service.interpret(predictor, shown, unstated)[0].notes)
    assert service.pass_magnification(predictor, "40X") == "40X"

    renamed = tmp_path / "field.png"
    renamed.write_bytes(data)
    capsys.readouterr()
    assert main(["predict", str(path), str(renamed), "--model", str(predictor.folder), "--json",
                 "--magnification", "400X"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["magnification"], r["magnification_source"]) for r in lines] == [("40X", "file name"),
                                                                               ("400X", "--magnification")]


def test_a_model_without_physical_views_ignores_the_magnification(tmp_path, field_40x):
    """A whole-field model (the bundled kind) is not re-run when the user moves the control."""
    from core.app import service

    model, _ = build_classifier("small_cnn", "hierarchical", weights=None, input_size=SIZE)
    predictor = load_predictor(save_model_folder(model, tmp_path / "model", {
        "name": "whole-field", "backbone": "small_cnn", "hierarchy": "hierarchical"}))
    _, rgb = field_40x
    assert not predictor.uses_magnification and service.pass_magnification(predictor, "40X") is None
    assert np.array_equal(predictor.model_input([rgb], magnifications=["40X"]), predictor.model_input([rgb]))


def test_training_crops_cover_the_same_tissue_at_every_magnification():
    """With each field's scale (field_scales), a 40X field's crops span a fifth of what a 200X
    field's do, and a 400X field's the whole short side; the training model takes the scales as
    its second input and learns through it."""
    from core.data.keras_augment import FieldAugmentation
    from core.training.field_fit import SCALE, field_scales, training_model

    ramp = np.broadcast_to(np.linspace(0, 230, 350, dtype=np.float32)[None, :, None], (230, 350, 3))
    fields = np.repeat(ramp[None].astype(np.uint8), 48, axis=0)  # a pixel's value: its x position x 230/350
    scales = field_scales(["40X", "200X", "400X"] * 16)
    assert np.allclose(scales[:3], [0.2, 1.0, 2.0])
    out = np.asarray(FieldAugmentation(32, strength=0.0, seed=1)([fields, scales]))
    # A crop's range of values is its side in x (turned or not), sampled at 32 pixel centres.
    side = (out[..., 0].max(axis=(1, 2)) - out[..., 0].min(axis=(1, 2))) * 350 / 230 * 32 / 31
    at_40x, at_200x, at_400x = side[0::3], side[1::3], side[2::3]
    assert at_40x.max() <= 0.2 * 230 + 3
    assert np.median(at_200x) > 0.55 * 230 and at_200x.max() <= 230 + 3
    assert np.allclose(at_400x, 230, atol=3)  # every 400X crop is the whole short side

    model, _ = build_classifier("small_cnn", "hierarchical", weights=None, input_size=32)
    trainer = training_model(model, (230, 350), 0.0, 0.55, 0, physical=True)
    assert SCALE in [t.name for t in trainer.inputs]


def test_one_switch_makes_a_field_run_train_and_predict_at_one_physical_scale():
    """--physical-crops (off by default: measured no better) sets both the training crops and the
    views its cards declare, so a model is never served at another scale than it learnt."""
    from core.training.config import TrainConfig
    from core.training.field_run import view_spec

    base = dict(data="d", out="o", pipeline="fields", input_size=SIZE)
    assert not TrainConfig(**base).physical_crops and not view_spec(TrainConfig(**base)).physical
    assert view_spec(TrainConfig(**base, physical_crops=True)).physical
