"""Band-limited field views: a field model trained with --band-limit sees every field and slide tile at
the detail of the 224x224 px copies most small BreakHis sets are made of, in training and prediction
alike, so that a full-size field and its squashed copy look alike to it."""

import numpy as np
import pytest
from PIL import Image

from core.data.fields import FIELD_PX, ViewSpec, band_limit, band_limit_all, pack_fields, restore_field
from core.data.images import load_image
from core.data.keras_augment import field_inputs
from core.model.classifier import build_classifier
from core.model.folders import save_model_folder
from core.model.loading import load_predictor

SIZE = 48
SPEC = ViewSpec(SIZE, band_limit=True)


@pytest.fixture(scope="module")
def full_size(samples_dir):
    """The bundled samples that are full-size 700x460 fields, decoded."""
    paths = [p for p in sorted(samples_dir.rglob("*.png")) if Image.open(p).size == (700, 460)]
    assert len(paths) >= 4
    return [load_image(p.read_bytes(), name=p.name).rgb for p in paths[:6]]


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """(untrained small CNN, its Predictor) with a card that declares band-limited field views."""
    import keras

    keras.utils.set_random_seed(0)
    model, _ = build_classifier("small_cnn", "hierarchical", weights=None, input_size=SIZE)
    card = {"name": "tiny-band-limited", "backbone": "small_cnn", "hierarchy": "hierarchical",
            "views": SPEC.to_dict()}
    return model, load_predictor(save_model_folder(model, tmp_path_factory.mktemp("limited") / "model", card))


def _squashed(rgb: np.ndarray, method) -> np.ndarray:
    """What a publisher of a 224x224 set did to a 700x460 field, restored like such a copy."""
    return restore_field(np.asarray(Image.fromarray(rgb).resize((224, 224), method)))


@pytest.mark.parametrize("method", [Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC])
def test_a_full_size_field_and_its_squashed_copy_look_more_alike(full_size, method):
    before, after = [], []
    for rgb in full_size:
        native, copy = restore_field(rgb), _squashed(rgb, method)
        before.append(np.abs(native.astype(int) - copy).mean())
        after.append(np.abs(band_limit(native).astype(int) - band_limit(copy)).mean())
        assert band_limit(native).shape == native.shape and band_limit(native).dtype == np.uint8
    assert np.mean(after) < 0.75 * np.mean(before)
    # The tissue stays: the band-limited field is close to the field at large scales.
    native = restore_field(full_size[0])
    coarse = [np.asarray(Image.fromarray(a).resize((35, 23), Image.Resampling.BOX), float)
              for a in (native, band_limit(native))]
    assert np.abs(coarse[0] - coarse[1]).mean() < 2.0


def test_band_limit_is_written_in_the_card_and_old_cards_keep_the_full_detail():
    assert ViewSpec.from_card({"views": SPEC.to_dict()}) == SPEC
    old = {k: v for k, v in SPEC.to_dict().items() if k != "band_limit"}  # a card written before band limits
    assert ViewSpec.from_card({"views": old}).band_limit is False
    assert "224x224 px copy" in SPEC.describe() and "copy" not in ViewSpec(SIZE).describe()
    tile = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert ViewSpec(SIZE).detail(tile) is tile and not np.array_equal(SPEC.detail(tile), tile)


def test_the_predictor_band_limits_fields_and_tiles_as_training_did(limited, full_size):
    from core.training.field_fit import predict_views

    model, predictor = limited
    rgb = full_size[0]
    field = band_limit(restore_field(rgb))
    assert np.abs(predictor.model_input([rgb]) - field_inputs(field[None], SPEC)).max() < 1e-3
    served = predictor.probabilities([rgb])
    trained = predict_views(model, field[None], SPEC)
    assert np.abs(served["stage1"] - trained["stage1"]).max() < 1e-4
    tile = restore_field(rgb)[:224, :224]
    seen = predictor.model_input([tile], tiles=True)
    expected = field_inputs(band_limit(tile)[None], ViewSpec(SIZE, crop_px=224, crops=1))
    assert np.abs(seen - expected).max() < 1e-3
    assert np.abs(seen - field_inputs(tile[None], ViewSpec(SIZE, crop_px=224, crops=1))).mean() > 0.5


def test_training_fields_are_band_limited_from_a_folder_or_a_pack(samples_dir, tmp_path):
    from core.training.config import TrainConfig
    from core.training.field_run import field_table, load_field_data

    config = TrainConfig(data=str(samples_dir), out=str(tmp_path / "run"), pipeline="fields", band_limit=True)
    table, fields = load_field_data(config)
    plain = load_field_data(TrainConfig(data=str(samples_dir), out="", pipeline="fields"))[1]
    assert fields.shape == (len(table), FIELD_PX[1], FIELD_PX[0], 3)
    assert np.array_equal(fields, band_limit_all(plain)) and not np.array_equal(fields, plain)
    pack = pack_fields(field_table(samples_dir), tmp_path / "pack")
    packed = load_field_data(TrainConfig(data=str(pack), out="", pipeline="fields", band_limit=True))[1]
    assert np.abs(packed.astype(int) - fields).mean() < 2.0  # the same fields, through JPEG


def test_the_source_shifts_make_a_published_copy_of_a_full_size_field_only(full_size):
    from core.evaluation.robustness import SOURCE_SHIFTS

    square = np.zeros((224, 224, 3), np.uint8)
    for shift in SOURCE_SHIFTS.values():
        copy = shift(full_size[0])
        assert copy.shape == (224, 224, 3) and shift(square) is square
        # restored like any squashed copy, it is the same field again, at less detail
        assert restore_field(copy).shape == restore_field(full_size[0]).shape
        assert np.abs(restore_field(copy).astype(int) - restore_field(full_size[0])).mean() < 12


def test_a_shift_report_with_labels_scores_each_version_from_its_own_predictions(limited, full_size):
    from core.evaluation.robustness import SOURCE_SHIFTS, shift_report

    _, predictor = limited
    labels = ["malignant", "benign", "malignant", "benign"][:len(full_size)]
    report = shift_report(predictor, full_size[:4], SOURCE_SHIFTS, labels)
    assert set(report["stage1_accuracy"]) == {"unshifted", *SOURCE_SHIFTS}
    shifted = predictor.predict([SOURCE_SHIFTS["squashed copy 224x224 (nearest)"](rgb) for rgb in full_size[:4]])
    assert report["stage1_accuracy"]["squashed copy 224x224 (nearest)"] == pytest.approx(
        np.mean([p.label == y for p, y in zip(shifted, labels)]))
    assert "stage1_accuracy" not in shift_report(predictor, full_size[:2], SOURCE_SHIFTS)
