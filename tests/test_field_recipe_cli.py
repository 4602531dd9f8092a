"""The field recipe learns, through the CLI (`python -m core train --pipeline fields`): unseen patients
in a cross-validation, a pack as on the GPU machine, seed ensembles, reviewed images, a single split,
cancellation, the slide rule (tests/test_field_recipe.py has the recipe's parts)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data.fields import pack_fields, read_pack
from core.data.labels import CLASS_OF_SUBTYPE
from core.data.splits import IMAGE
from core.errors import UserInputError
from core.training.config import TrainConfig, checked

REPO = Path(__file__).resolve().parent.parent


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
    script run trained on until killed); tests/test_train_control.py checks that case deterministically."""
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
