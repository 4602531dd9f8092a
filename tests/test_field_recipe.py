"""The field recipe: fields at one scale, augmentation as Keras layers, backend-neutral training,
views declared in the card, per-stage referral; a model trained under JAX predicts under TensorFlow."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data.fields import FIELD_PX, ViewSpec, pack_fields, read_pack, restore_field, view_boxes
from core.data.keras_augment import FieldAugmentation, crop_and_resize
from core.data.labels import CLASS_OF_SUBTYPE, SUBTYPES
from core.data.splits import IMAGE
from core.errors import UserInputError
from core.evaluation.referral import choose_threshold, referral_figures, referral_thresholds
from core.testing.jax_process import run_under_jax
from core.training.config import TrainConfig, checked
from core.training.field_fit import sampling

REPO = Path(__file__).resolve().parent.parent


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
    assert nothing["threshold"] == 1.0 and nothing["coverage"] == 0.0


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


# ---------------------------------------------------------------- learning, through the CLI

def test_the_recipe_learns_unseen_patients_and_writes_a_servable_model(synthetic_breakhis, tmp_path):
    """`python -m core train --pipeline fields --folds 2`: every synthetic patient is tested by a model
    that never saw it; the pooled out-of-fold stage-1 balanced accuracy is far above chance (0.5), and
    the final model (all patients) carries the views, the referral thresholds and the CV's figures."""
    from core.cli import main
    from core.jsonfile import read_json
    from core.model.loading import load_predictor
    from core.slide.choose import validate_slide_rule

    out = tmp_path / "cv"
    code = main(["train", "--pipeline", "fields", "--data", str(synthetic_breakhis), "--out", str(out),
                 "--folds", "2", "--backbone", "small_cnn", "--weights", "none", "--input-size", "48",
                 "--epochs", "10", "--batch-size", "8", "--warmup-steps", "10"])
    assert code == 0
    cv = read_json(out / "cv.json")
    assert cv["pooled"]["stage1_balanced_accuracy"] >= 0.8
    assert cv["pooled"]["data"]["cases"] == 24 and "pooled out-of-fold" in cv["pooled"]["protocol"]
    assert set(cv["pooled"]["baselines"]) == {"majority", "colour_texture"}
    predictor = load_predictor(out / "model")
    card = predictor.card
    assert card["views"]["crops"] == 3 and card["evidence"]["patients"] == 24
    assert "out-of-fold" in card["evidence"]["figures_measured_on"]
    stage1, subtype, source = predictor.stage_thresholds()
    assert stage1 == card["thresholds"]["referral"]["stage1"]["threshold"] and "out-of-fold" in source
    prediction = predictor.predict([np.asarray(Image.open(next(synthetic_breakhis.rglob("*.png"))).convert("RGB"))])[0]
    assert set(prediction.referral) == {"stage1", "subtype", "thresholds_source"}
    assert prediction.to_dict()["refer_stage1"] == prediction.refer_stage1
    # The final model learnt from every patient: its slide rule is chosen on each fold's held-out
    # patients, seen by that fold's model, on mosaics of whole fields at its 1 um/px (2x3 fields, not the
    # command's 4x4: 38 mosaics; tests/test_slide_call.py runs the `slide-threshold` command itself).
    validate_slide_rule(out / "model", synthetic_breakhis, repeats=1, benign_mosaics=2, grid=(2, 3))
    validation = read_json(out / "model" / "card.json")["thresholds"]["slide_rule"]["validation"]
    on = validation["selected_on"]
    assert on["split"].startswith("held-out patients of 2 folds") and on["patients"] == 24 and on["grid"] == [2, 3]
    assert on["mosaics"] == 2 + 3 * on["malignant_patients"] and validation["specificity"] == 1.0
    load_predictor(out / "model")  # the card's checksum still holds


def test_a_field_pack_cross_validates_through_the_cli_as_on_the_gpu_machine(synthetic_breakhis, tmp_path, monkeypatch):
    """What scripts/gpu_machine.sh runs there: `python -m core train --pipeline fields --data PACK
    --folds 2 --refit-subtypes`, on a pack rather than a BreakHis folder. Each model's card counts the
    pack's real images (a pack has no synthetic rows) and records the refit; it once failed after
    the first fold on the pack's missing `synthetic` column, which only a run on a pack reaches."""
    from core.cli import main
    from core.data.breakhis import index_folder
    from core.jsonfile import read_json
    from core.model.loading import load_predictor

    pack = pack_fields(index_folder(synthetic_breakhis).images, tmp_path / "pack")
    out = tmp_path / "cv"
    assert main(["train", "--pipeline", "fields", "--data", str(pack), "--out", str(out), "--folds", "2",
                 "--backbone", "small_cnn", "--weights", "none", "--input-size", "32", "--epochs", "1",
                 "--batch-size", "16", "--warmup-steps", "2", "--refit-subtypes"]) == 0
    table, _ = read_pack(pack)
    card = read_json(out / "model" / "card.json")
    assert card["training"]["by_subtype"] == table["subtype"].value_counts().to_dict()
    assert card["training"]["synthetic_by_subtype"] == {} and card["evidence"]["patients"] == table["case"].nunique()
    assert set(card["training"]["subtype_refit"]["heads"]) == {"benign_subtype", "malignant_subtype"}
    assert read_json(out / "cv.json")["pooled"]["data"]["cases"] == table["case"].nunique()
    # Each pooled prediction names its fold, so the per-fold figures can be recomputed from the stored predictions.
    oof, per_fold = pd.read_csv(out / "oof_predictions.csv"), read_json(out / "cv.json")["per_fold"]["model"]
    assert oof["fold"].value_counts().sort_index().tolist() == [f["test_images"] for f in per_fold]
    assert oof.groupby("fold")["case"].nunique().tolist() == [f["test_cases"] for f in per_fold]
    # The calibration's effect, measured on the predictions it was fitted on, and said to be in-sample.
    measured = card["calibration"]["measured"]["test"]
    assert measured["in_sample"] and measured["data"]["images"] == len(oof) and "in-sample" in card["calibration"][
        "measured_note"]
    assert set(measured["heads"]) == {"stage1", "benign_subtype", "malignant_subtype"}
    # Brought back, it installs as make-default installs its own run, with the command that made it.
    installed, ran = tmp_path / "default", "scripts/gpu_machine.sh run pack --folds 2 --refit-subtypes"
    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(tmp_path / "data"))  # its audit row in a database of its own
    monkeypatch.delenv("BREAKHIS_DATABASE_URL", raising=False)
    assert main(["make-default", "--from-run", str(out), "--out", str(installed), "--command", ran]) == 2  # DEMO
    assert main(["make-default", "--from-run", str(out), "--out", str(installed), "--command", ran,
                 "--allow-demo"]) == 0  # 96 synthetic images: a DEMO model, installed because asked
    recipe = load_predictor(installed).card["recipe"]
    assert recipe["command"] == ran and recipe["cross_validation_folds"] == 2 and recipe["settings"]["refit_subtypes"]
    assert read_json(installed / "cv.json") == read_json(out / "cv.json")
    assert main(["make-default", "--from-run", str(out), "--out", str(installed)]) == 2  # never over a model unasked
    assert main(["make-default", "--from-run", str(pack), "--out", str(tmp_path / "x")]) == 2  # a pack is not a run
    assert main(["make-default", "--out", str(tmp_path / "x")]) == 2  # neither --data nor --from-run


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_a_cancelled_fields_run_says_so_in_its_last_event(samples_dir, tmp_path, backend):
    """SIGTERM (the Retrain page's cancel, the GPU script's time limit) mid-training: exit 143 and a
    final "cancelled" event, so the page never waits on a dead run; no model folder. Under JAX the
    signal often lands inside a bare `except:` of Keras' log conversion, which swallowed it (a GPU
    script run trained on until killed); tests/test_train.py checks that case deterministically."""
    import os
    import signal
    import time

    from core.training.progress import read_progress

    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "core", "train", "--pipeline", "fields", "--data", str(samples_dir),
                                "--out", str(out), "--backbone", "small_cnn", "--weights", "none",
                                "--input-size", "48", "--epochs", "500", "--batch-size", "4"], cwd=REPO,
                               env={**os.environ, "KERAS_BACKEND": backend},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(e["event"] == "epoch_end" for e in read_progress(out / "progress.jsonl")):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=120) == 143
    finally:
        process.kill()  # a run that ignored the signal must not train on behind the suite
    last = read_progress(out / "progress.jsonl")[-1]
    assert last["event"] == "end" and last["status"] == "cancelled"
    assert not (out / "model").exists()


def test_a_seed_ensemble_is_cross_validated_as_it_predicts(synthetic_breakhis, tmp_path):
    """--members 2: each fold trains two seeds; the pooled out-of-fold figures, temperatures and
    referral thresholds are those of the mean of the members' calibrated outputs, which is what the
    final ensemble folder serves, and each seed's own figures stand beside them."""
    from core.cli import main
    from core.jsonfile import read_json
    from core.model.loading import load_predictor

    out = tmp_path / "cv"
    assert main(["train", "--pipeline", "fields", "--data", str(synthetic_breakhis), "--out", str(out), "--folds", "2",
                 "--members", "2", "--backbone", "small_cnn", "--weights", "none", "--input-size", "32",
                 "--epochs", "1", "--batch-size", "16", "--warmup-steps", "2"]) == 0
    cv = read_json(out / "cv.json")
    assert cv["members"] == 2 and len(cv["pooled_by_member"]) == 2 and len(cv["train_seconds"]) == 4
    assert cv["pooled_by_member"][0] != cv["pooled_by_member"][1]  # two seeds, two models
    ensemble = load_predictor(out / "ensemble")
    members = [load_predictor(out / "model"), load_predictor(out / "member-1" / "model")]
    assert [m.card["calibration"]["temperatures"] for m in members] == cv["member_temperatures"]
    assert ensemble.card["thresholds"]["referral"] == cv["referral"]
    assert ensemble.stage_thresholds()[:2] == (cv["referral"]["stage1"]["threshold"], cv["referral"]["subtype"]["threshold"])
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(synthetic_breakhis.rglob("*.png"))[:3]]
    mean = np.mean([m.calibrate(m.probabilities(images))["stage1"] for m in members], axis=0)
    assert np.allclose(ensemble.probabilities(images)["stage1"], mean, atol=1e-5)
    with pytest.raises(UserInputError, match="cross-validation is what measures"):
        checked(TrainConfig(data=str(synthetic_breakhis), out=str(tmp_path / "x"), pipeline="fields", members=2))


def test_reviewed_images_train_every_model_that_is_not_tested_on_their_patient(synthetic_breakhis, tmp_path):
    """`--reviewed-dir` with the fields recipe (the Retrain form's default pipeline): a reviewed image of
    a new patient trains every fold and the final model; one of a patient in the data trains only the
    models that are not tested on that patient; the out-of-fold figures stay those of the data."""
    import shutil

    from core.cli import main
    from core.data.breakhis import index_folder
    from core.jsonfile import read_json

    images = index_folder(synthetic_breakhis).images
    reviewed = tmp_path / "reviewed"
    reviewed.mkdir()
    known, other = images.iloc[0], images.iloc[-1]
    shutil.copy(known["path"], reviewed / Path(known["path"]).name)  # a patient of the data set
    shutil.copy(other["path"], reviewed / Path(other["path"]).name.replace(other["case"], "0-77"))  # a new one
    common = ["--pipeline", "fields", "--data", str(synthetic_breakhis), "--backbone", "small_cnn", "--weights", "none",
              "--input-size", "32", "--epochs", "1", "--batch-size", "16", "--warmup-steps", "2",
              "--reviewed-dir", str(reviewed)]
    out = tmp_path / "cv"
    assert main(["train", *common, "--out", str(out), "--folds", "2"]) == 0
    folds = [read_json(out / f"fold-{k}" / "model" / "card.json") for k in range(2)]
    held = [set(pd.read_csv(out / f"fold-{k}" / "predictions_uncalibrated.csv")["case"]) for k in range(2)]
    assert [card["training"]["reviewed_images"] for card in folds] == [1 if known["case"] in h else 2 for h in held]
    final = read_json(out / "model" / "card.json")
    assert final["training"]["reviewed_images"] == 2
    assert final["evidence"]["images"] == len(images) + 2 and final["evidence"]["patients"] == images["case"].nunique() + 1
    assert read_json(out / "cv.json")["pooled"]["data"]["images"] == len(images)  # tested on the data only

    one = tmp_path / "one"  # one split: validation and test unchanged, the known patient's copy only if it trains
    assert main(["train", *common, "--out", str(one)]) == 0
    split = pd.read_csv(one / "split.csv")
    plain = split[~split["path"].str.startswith(str(reviewed))]
    assert len(plain) == len(images) and set(split.loc[split["path"].str.startswith(str(reviewed)), "split"]) == {"train"}
    trains_known = plain.loc[plain["case"] == known["case"], "split"].eq("train").all()
    assert read_json(one / "model" / "card.json")["training"]["reviewed_images"] == (2 if trains_known else 1)


def test_a_single_split_fields_run_is_evaluated_calibrated_and_ensembled_like_a_tfdata_run(synthetic_breakhis,
                                                                                           tmp_path):
    """Its split.csv has the columns the tf.data pipeline writes (label, protocol, ...), which evaluate,
    calibrate and ensemble read: without them each stopped at "split.csv lacks the column(s) label"."""
    from core.cli import main
    from core.evaluation.evaluate import REQUIRED_COLUMNS
    from core.jsonfile import read_json

    run = tmp_path / "one"
    assert main(["train", "--pipeline", "fields", "--data", str(synthetic_breakhis), "--out", str(run),
                 "--split", "image-level", "--backbone", "small_cnn", "--weights", "none", "--input-size", "32",
                 "--epochs", "1", "--batch-size", "16", "--warmup-steps", "2"]) == 0
    split = pd.read_csv(run / "split.csv")
    assert set(REQUIRED_COLUMNS) | {"protocol"} <= set(split.columns)
    assert (split["label"] == split["subtype"].map(CLASS_OF_SUBTYPE)).all()
    assert set(split["protocol"]) == {IMAGE} == {read_json(run / "metrics.json")["protocol"]}  # not "patient-wise"
    assert "image-level (leaky) split" in read_json(run / "model" / "card.json")["evidence"]["statement"]
    referral = read_json(run / "model" / "card.json")["thresholds"]["referral"]
    measured = read_json(run / "model" / "card.json")["calibration"]["measured"]  # fitted on val, tested on test
    assert measured["val"]["in_sample"] and not measured["test"]["in_sample"]
    assert measured["test"]["data"]["images"] == int((split["split"] == "test").sum())
    assert main(["calibrate", str(run)]) == 0  # re-evaluates: metrics.json and the card
    assert read_json(run / "metrics.json")["data"]["protocol"] == IMAGE
    assert read_json(run / "model" / "card.json")["thresholds"]["referral"] == referral
    assert main(["ensemble", "--members", str(run / "model"), str(run / "model"), "--out", str(tmp_path / "ens")]) == 0
    assert read_json(tmp_path / "ens" / "metrics.json")["data"]["split"] == "test"


def test_the_slide_rule_of_a_one_magnification_cv_knows_its_data_by_the_fingerprint_it_records(synthetic_breakhis,
                                                                                               tmp_path):
    """A fields CV's card records the fingerprint of every image of the folder (what a GAN records, so GAN fill
    is not refused), but fold_parts compared it with the fingerprint of the 40X images alone: refused as 'not the
    data this model was trained on'. A card of before (the 40X images' fingerprint) is still known."""
    from core.data.selection import fingerprint
    from core.model.classifier import build_classifier
    from core.model.folders import save_model_folder
    from core.slide.choose import fold_parts
    from core.training.field_run import data_fingerprint, field_table

    for k in (0, 1):
        model, _ = build_classifier("small_cnn", "hierarchical", weights=None, input_size=32)
        save_model_folder(model, tmp_path / f"fold-{k}" / "model", {"backbone": "small_cnn", "hierarchy": "hierarchical"})
    training = {"pipeline": "fields", "settings": {"folds": 2, "seed": 0, "magnification": "40X"}}
    for recorded in (data_fingerprint(synthetic_breakhis), fingerprint(field_table(synthetic_breakhis, "40X"))):
        card = {"training": {**training, "data_fingerprint": recorded}}
        parts = fold_parts(tmp_path / "model", card, synthetic_breakhis)
        assert len(parts) == 2 and all(set(fields["magnification"]) == {"40X"} for _, fields in parts)


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
