"""The field recipe: fields at one scale, augmentation as Keras layers, backend-neutral training,
views declared in the card, per-stage referral; a model trained under JAX predicts under TensorFlow."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from core.data.fields import FIELD_PX, ViewSpec, pack_fields, read_pack, restore_field, view_boxes
from core.data.keras_augment import FieldAugmentation, crop_and_resize
from core.data.labels import SUBTYPES
from core.errors import UserInputError
from core.evaluation.referral import choose_threshold, referral_figures, referral_thresholds
from core.model.decisions import below, threshold_text
from core.testing.jax_process import run_under_jax
from core.training.config import TrainConfig, checked
from core.training.field_fit import sampling


def _field(width, height, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(700, 460), (500, 328), (224, 224), (460, 700)])
def test_every_published_field_size_is_restored_to_the_field_at_one_scale(size):
    restored = restore_field(_field(*size))
    assert restored.shape == (FIELD_PX[1], FIELD_PX[0], 3) and restored.dtype == np.uint8


def test_a_squashed_copy_is_stretched_back_not_cropped():
    """A 224x224 copy of a 700x460 field: a vertical bar at 3/4 of its width stays at 3/4 of the field."""
    image = np.full((224, 224, 3), 255, np.uint8)
    image[:, 164:172] = 0
    restored = restore_field(image)
    dark = np.flatnonzero(restored[115, :, 0] < 128)
    assert abs(dark.mean() / FIELD_PX[0] - 168 / 224) < 0.01


def test_view_boxes_span_the_field_evenly_inside_it():
    boxes = view_boxes(230, 350, 224, 3)
    assert boxes[:, 1].tolist() == [0.0, 63.0, 126.0] and set(boxes[:, 2]) == {224.0}
    assert (boxes[:, 1] + boxes[:, 3] <= 350).all() and (boxes[:, 0] + boxes[:, 2] <= 230).all()


def test_crop_and_resize_is_an_exact_crop_at_the_same_size_and_a_resize_otherwise():
    field = _field(350, 230).astype(np.float32)[None]
    exact = np.asarray(crop_and_resize(field, np.array([[10, 20, 100, 100]], np.float32), 100))
    assert np.abs(exact[0] - field[0, 10:110, 20:120]).max() < 1e-3
    smooth = np.tile(np.linspace(0, 255, 350, dtype=np.float32), (230, 1))[None, :, :, None].repeat(3, -1)
    half = np.asarray(crop_and_resize(smooth, np.array([[0, 0, 230, 350]], np.float32), 64))
    assert np.all(np.diff(half[0, 32, :, 0]) > 0)  # a ramp stays a ramp


def test_field_augmentation_gives_square_inputs_that_vary_and_stay_in_range():
    fields = np.stack([_field(350, 230, seed) for seed in range(4)])
    layer = FieldAugmentation(64, seed=3)
    first, second = np.asarray(layer(fields)), np.asarray(layer(fields))
    assert first.shape == (4, 64, 64, 3) and first.min() >= 0 and first.max() <= 255
    assert np.abs(first - second).mean() > 1.0  # a new draw each call


def test_without_jitter_a_crop_keeps_the_field_colours():
    """Strength 0: only crops and symmetries, so a uniform field stays exactly its colour."""
    fields = np.full((2, 230, 350, 3), (200, 120, 180), np.uint8)
    out = np.asarray(FieldAugmentation(48, strength=0.0, seed=0)(fields))
    assert np.allclose(out, (200, 120, 180), atol=1e-3)


def test_sampling_draws_by_inverse_sqrt_count_and_weights_balance_the_rest():
    subtypes = ["ductal_carcinoma"] * 100 + ["adenosis"] * 25 + ["lobular_carcinoma"] * 4
    draw, class_weights, subtype_weights = sampling(subtypes)
    share = {s: draw[np.asarray(subtypes) == s].sum() for s in set(subtypes)}
    assert share["ductal_carcinoma"] / share["adenosis"] == pytest.approx(2.0)  # sqrt(100 / 25)
    effective = {s: share[s] * subtype_weights[SUBTYPES.index(s)] for s in share}
    assert max(effective.values()) == pytest.approx(min(effective.values()))  # every subtype counts equally
    assert subtype_weights[SUBTYPES.index("fibroadenoma")] == 0.0  # absent: no weight
    benign, malignant = share["adenosis"], share["ductal_carcinoma"] + share["lobular_carcinoma"]
    assert benign * class_weights[0] == pytest.approx(malignant * class_weights[1])


def test_class_weights_ride_on_the_batches_so_every_fold_compiles_the_same_training_step():
    """Two folds with different patients: the same loss configuration (no per-fold constant in the
    compiled step), and each drawn field's sample weight is its class's and subtype's weight."""
    from core.training.field_fit import STAGE1_LOGITS, SUBTYPE_LOGITS, prepare_fit

    fields = np.zeros((12, 46, 70, 3), np.uint8)
    config = TrainConfig(data="x", out="y", pipeline="fields", backbone="small_cnn", weights="none", input_size=32,
                         epochs=1, batch_size=6)
    fold_a = ["ductal_carcinoma"] * 8 + ["adenosis"] * 4
    fold_b = ["ductal_carcinoma"] * 3 + ["adenosis"] * 6 + ["mucinous_carcinoma"] * 3
    prepared = [prepare_fit(fields, subtypes, config) for subtypes in (fold_a, fold_b)]
    losses = [{name: loss.get_config() for name, loss in m.loss.items()} for _, m, _, _ in prepared]
    assert losses[0] == losses[1] and set(losses[0]) == {STAGE1_LOGITS, SUBTYPE_LOGITS}
    _, class_weights, subtype_weights = sampling(fold_b)
    assert not np.allclose(subtype_weights, sampling(fold_a)[2])  # the folds' weights do differ
    _, outputs, weights = prepared[1][2][0]
    expected_class = class_weights[outputs[STAGE1_LOGITS]]
    np.testing.assert_allclose(weights[STAGE1_LOGITS], expected_class)
    np.testing.assert_allclose(weights[SUBTYPE_LOGITS], subtype_weights[outputs[SUBTYPE_LOGITS]])
    assert [len(batches) for _, _, batches, _ in prepared] == [2, 2]  # one pass over 12 fields at batch 6
    fixed = dataclasses.replace(config, steps_per_epoch=5)
    assert len(prepare_fit(fields, fold_a, fixed)[2]) == len(prepare_fit(fields[:7], fold_a[:7], fixed)[2]) == 5
    with pytest.raises(UserInputError, match="steps-per-epoch"):
        checked(dataclasses.replace(fixed, pipeline="tfdata"))


@pytest.mark.parametrize("setting, named", [
    ({"mode": "fast"}, "--mode fast"), ({"hierarchy": "flat"}, "--hierarchy flat"),
    ({"stain_norm": "macenko"}, "--stain-norm"), ({"zoom": 0.5}, "--zoom"),
    ({"folds": 5, "fold": 1}, "--fold")])
def test_the_fields_pipeline_refuses_what_it_would_ignore(tmp_path, setting, named):
    """Each of these shapes a tf.data run and would be dropped by the field recipe without a word (a
    Retrain form's 'fast' mode, a stain normaliser the card would not carry)."""
    config = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), pipeline="fields")
    checked(config)  # the recipe's own settings pass
    with pytest.raises(UserInputError, match="fields pipeline does not take " + named):
        checked(dataclasses.replace(config, **setting))
    checked(dataclasses.replace(config, **setting, pipeline="tfdata"))  # where they apply, they pass


def test_gan_fill_in_a_fields_cross_validation_is_refused_before_any_work(tmp_path):
    """It was refused inside the run, after the fields were loaded: a job started from Retrain then failed."""
    gan = tmp_path / "gan"
    gan.mkdir()
    config = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), pipeline="fields", balance="synthetic",
                         synthetic_dir=str(gan))
    checked(config)  # one split: GAN fill is measured there
    with pytest.raises(UserInputError, match="GAN fill in a cross-validation would need a generator per fold"):
        checked(dataclasses.replace(config, folds=5))


def test_view_batches_have_one_shape_and_the_padding_changes_no_prediction():
    import keras

    from core.model.classifier import build_classifier
    from core.training.field_fit import predict_views, view_batches

    keras.utils.set_random_seed(0)
    classifier, _ = build_classifier("small_cnn", "hierarchical", None, 32)
    spec = ViewSpec(input_size=32, crops=2, crop_px=40, field_px=(70, 46))
    fields = np.stack([_field(70, 46, seed) for seed in range(5)])
    assert {views.shape for views, _ in view_batches(fields, spec, batch_fields=4)} == {(4 * 2 * 8, 32, 32, 3)}
    assert [n for _, n in view_batches(fields, spec, batch_fields=4)] == [4, 1]
    padded, alone = predict_views(classifier, fields, spec, batch_fields=4), predict_views(classifier, fields, spec, 1)
    for name, value in alone.items():
        assert padded[name].shape == value.shape == (5, value.shape[1])
        np.testing.assert_allclose(padded[name], value, atol=1e-5)


def test_referral_keeps_the_largest_share_at_the_target_accuracy():
    """Hand-worked: 20 images, confidence 1.00 .. 0.62; the 4 least confident are wrong, plus one at 0.80."""
    confidence = np.linspace(1.0, 0.62, 20)
    correct = np.ones(20, bool)
    correct[-4:] = False
    correct[10] = False  # confidence 0.80
    chosen = choose_threshold(confidence, correct, target=0.9)
    # keeping 16 images: 15/16 = 0.94 >= 0.9; 17 images: 15/17 = 0.88 < 0.9
    assert chosen["coverage"] == pytest.approx(16 / 20) and chosen["threshold"] == pytest.approx(confidence[15])
    nothing = choose_threshold(confidence, np.zeros(20, bool), target=0.9)
    assert nothing["threshold"] > 1.0 and nothing["coverage"] == 0.0


def test_refer_everything_refers_saturated_probabilities_too():
    """A threshold of 1.0 meant "refer everything", but an image is kept when p >= threshold and a float32
    softmax saturates at exactly 1.0: such images were left unreferred and counted as the unreferred share."""
    table = _predictions(40)
    table["pred_label"] = "malignant"  # half wrong: no threshold reaches the target
    table.loc[:3, ["p_malignant", "p_benign"]] = [1.0, 0.0]
    table[["p_malignant", "p_benign"]] = table[["p_malignant", "p_benign"]].astype(np.float32)
    chosen = referral_thresholds(table, "test data")
    assert "every image is referred" in chosen["stage1"]["note"]
    figures = referral_figures(table, chosen)
    assert figures["stage1_referred_share"] == 1.0 and figures["stage1_accuracy_unreferred"] is None
    assert threshold_text(chosen["stage1"]["threshold"]).startswith("1+")
    assert below(1.0, chosen["stage1"]["threshold"]) == "1.00 < 1+ (every image referred)"


def _predictions(n=60, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.choice(["benign", "malignant"], n)
    p_mal = np.clip(np.where(label == "malignant", 0.75, 0.25) + rng.normal(0, 0.2, n), 0.01, 0.99)
    table = pd.DataFrame({"label": label, "subtype": np.where(label == "benign", "adenosis", "ductal_carcinoma"),
                          "p_benign": 1 - p_mal, "p_malignant": p_mal,
                          "pred_label": np.where(p_mal >= 0.5, "malignant", "benign")})
    table["pred_subtype"] = np.where(table["pred_label"] == "benign", "adenosis", "ductal_carcinoma")
    for s in SUBTYPES:
        table[f"w_{s}"] = np.where(table["pred_subtype"] == s, 0.9, 0.1 / 3)
    return table


def test_per_stage_thresholds_meet_their_target_where_they_were_chosen():
    table = _predictions()
    chosen = referral_thresholds(table, "test data")
    figures = referral_figures(table, chosen)
    assert figures["stage1_accuracy_unreferred"] >= 0.97
    assert 0 < figures["stage1_referred_share"] < 1  # neither everything nor nothing
    assert chosen["stage1"]["curve"]["coverage"][-1] == 1.0


# ---------------------------------------------------------------- a model trained under JAX, served by TensorFlow

_TRAIN_UNDER_JAX = """
import json, sys
import numpy as np, keras
assert keras.backend.backend() == "jax"
from core.data.fields import ViewSpec, read_pack
from core.model.folders import save_model_folder
from core.training.config import TrainConfig
from core.training.field_fit import fit_fields, predict_views
table, fields = read_pack(sys.argv[1])
config = TrainConfig(data=sys.argv[1], out=sys.argv[2], backbone="resnet18_half", weights="none", input_size=48,
                     batch_size=8, epochs=1, pipeline="fields")
classifier, history = fit_fields(fields, table["subtype"], config)
spec = ViewSpec(48, 224, 3, True)
card = {"backbone": "resnet18_half", "hierarchy": "hierarchical", "views": spec.to_dict(), "name": "jax-trained"}
save_model_folder(classifier, sys.argv[2], card)
outputs = predict_views(classifier, fields[:4], spec)
np.savez(sys.argv[3], **outputs)
print(json.dumps({"backend": history["backend"], "steps": history["steps"],
                  "tensorflow_loaded": "tensorflow" in sys.modules}))
"""


@pytest.fixture(scope="module")
def pack(tmp_path_factory, samples_dir):
    from core.data.breakhis import index_folder

    table = index_folder(samples_dir).images.head(10)
    return pack_fields(table, tmp_path_factory.mktemp("pack"))


def test_a_field_pack_round_trips_its_fields_and_labels(pack, samples_dir):
    from core.data.breakhis import index_folder
    from core.data.fields import load_fields

    table, fields = read_pack(pack)
    original = index_folder(samples_dir).images.head(10)
    assert table["subtype"].tolist() == original["subtype"].tolist()
    assert np.abs(fields.astype(float) - load_fields(original["path"]).astype(float)).mean() < 4.0  # JPEG q92
    indexed = index_folder(pack).images  # its files keep their BreakHis names: the GAN and evaluate read a pack
    assert sorted(indexed["case"]) == sorted(original["case"])
    assert sorted(indexed["magnification"]) == sorted(original["magnification"])


def test_weights_trained_under_jax_predict_the_same_under_tensorflow(pack, tmp_path):
    """Train a few steps under KERAS_BACKEND=jax in a fresh process (TensorFlow never imported
    there), then load the folder here under TensorFlow: the Predictor's outputs over the card's
    views equal the JAX process's own, within 1e-4 (float32 rounding of two compilers)."""
    folder, expected = tmp_path / "model", tmp_path / "jax_outputs.npz"
    report = run_under_jax(_TRAIN_UNDER_JAX, pack, folder, expected)
    assert report == {"backend": "jax", "steps": 2, "tensorflow_loaded": False}

    from core.model.loading import load_predictor

    predictor = load_predictor(folder)
    assert predictor.card["versions"]["keras_backend"] == "jax"
    _, fields = read_pack(pack)
    served = predictor.probabilities(list(fields[:4]))
    trained = np.load(expected)
    for head in ("stage1", "benign_subtype", "malignant_subtype"):
        assert np.abs(served[head] - trained[head]).max() < 1e-4
    assert served["stage1@views"].shape == (4, 24, 2)  # 3 crops x 8 symmetries, declared in the card
    assert ViewSpec.from_card(predictor.card).views_per_image == 24


def test_the_training_step_is_traced_once_with_the_recipes_schedule_values(monkeypatch):
    """Keras' TensorFlow trainer created the optimizer's and losses' variables inside the first traced step,
    so TensorFlow traced every model's step twice (~5 s each on 2 cores); build_training_state makes them
    first. The warm-up cosine schedule (ops.where, cheaper to trace than Keras' ops.cond) keeps Keras' values."""
    import keras
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from core.training.field_fit import WarmupCosineDecay, fit_fields

    traced, real = [], TensorFlowTrainer.train_step
    monkeypatch.setattr(TensorFlowTrainer, "train_step", lambda self, data: traced.append(1) or real(self, data))
    fields = np.random.default_rng(0).integers(0, 255, (32, 46, 70, 3), dtype=np.uint8)
    config = TrainConfig(data="d", out="o", pipeline="fields", backbone="small_cnn", weights="none", input_size=32,
                         epochs=2, batch_size=8, warmup_steps=2)
    fit_fields(fields, [SUBTYPES[i % 8] for i in range(32)], config)
    assert len(traced) == 1
    ours = WarmupCosineDecay(0.0, 30, warmup_target=0.002, warmup_steps=10)
    keras_own = keras.optimizers.schedules.CosineDecay(0.0, 30, warmup_target=0.002, warmup_steps=10)
    assert [float(ours(step)) for step in range(45)] == [float(keras_own(step)) for step in range(45)]
