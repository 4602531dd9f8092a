"""A single-split run of the field recipe (`python -m core train --pipeline fields`, no --folds): what its card
and metrics say about where its temperatures were fitted, DEMO, baselines and the data it learnt from."""

import logging

import pytest

from core.jsonfile import read_json


@pytest.fixture(scope="module")
def run(synthetic_breakhis, tmp_path_factory):
    """One tiny patient-wise run (96 synthetic images: fewer training images than the DEMO threshold)."""
    from core.cli import main

    out = tmp_path_factory.mktemp("fields") / "one"
    assert main(["train", "--pipeline", "fields", "--data", str(synthetic_breakhis), "--out", str(out),
                 "--backbone", "small_cnn", "--weights", "none", "--input-size", "32", "--epochs", "1",
                 "--batch-size", "16", "--warmup-steps", "2"]) == 0
    return out


def test_the_temperatures_are_said_to_be_fitted_on_the_validation_patients_not_the_test_split(run):
    """They are fitted on the validation split; the card said 'fitted_on: the test split (N images, M patients)'."""
    card = read_json(run / "model" / "card.json")
    val = card["training"]["counts"]["val"]
    fitted_on = card["calibration"]["fitted_on"]
    assert fitted_on.startswith(f"the validation split ({val} images, ") and "test" not in fitted_on
    assert card["calibration"]["measured"]["val"]["in_sample"] and not card["calibration"]["measured"]["test"]["in_sample"]


def test_a_fields_run_on_fewer_images_than_the_demo_threshold_is_a_demo_model_as_a_tfdata_run_is(run):
    """One DEMO rule for both pipelines (core.training.runcard: --demo, or fewer than DEMO_BELOW_TRAIN_IMAGES
    training images); the fields card said demo false whatever it learnt from, --demo included."""
    from core.app.registry import describe_model
    from core.training.runcard import DEMO_BELOW_TRAIN_IMAGES

    card = read_json(run / "model" / "card.json")
    assert card["evidence"]["images"] < DEMO_BELOW_TRAIN_IMAGES and card["demo"] is True
    assert describe_model(card)["demo"]


def test_the_fields_pipeline_logs_the_folders_scan_report_as_the_tfdata_pipeline_does(samples_dir, tmp_path, caplog):
    """field_table indexed the folder without a word: a skipped file or a picture filed under two patients went
    unreported in a fields run's log, while core.data.selection.select_images logs it for a tf.data run."""
    import shutil

    from core.training.field_run import field_table

    first = sorted(samples_dir.rglob("SOB_*.png"))[0]
    shutil.copy(first, tmp_path / first.name)
    (tmp_path / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="core.data.selection"):
        assert len(field_table(tmp_path)) == 1
    assert "1 files skipped" in caplog.text and "notes.txt" in caplog.text


def test_a_generator_trained_on_this_split_is_accepted_by_a_fields_run_at_one_magnification(synthetic_breakhis,
                                                                                             tmp_path):
    """A GAN's training records the fingerprint of every image of the folder (core.data.selection.select_images,
    all magnifications); the fields run compared it with the fingerprint of its 40X images only, so GAN fill at
    one magnification was refused as a leak, by the run and by the Retrain form alike."""
    import numpy as np
    from PIL import Image

    from core.app.retrain import synthetic_problem
    from core.data.breakhis import synthetic_name
    from core.data.selection import SplitSpec, select_images
    from core.data.synthetic import record_provenance
    from core.testing.synthetic import synthetic_image
    from core.training.additions import gan_fill
    from core.training.config import TrainConfig
    from core.training.field_run import data_fingerprint, load_field_data

    spec = SplitSpec(magnification="40X")
    recorded = select_images(synthetic_breakhis, spec, report_skipped=False).fingerprint  # what `gan train` keeps
    gan = tmp_path / "gan"
    gan.mkdir()
    Image.fromarray(synthetic_image("adenosis", np.random.default_rng(0))).save(gan / synthetic_name("adenosis", "g", 0, 0))
    record_provenance(gan, {"generator": "g", "sha256": "s", "data_source": str(synthetic_breakhis),
                            "fingerprint": recorded, "split": spec.to_dict()})
    config = TrainConfig(data=str(synthetic_breakhis), out=str(tmp_path / "run"), pipeline="fields",
                         magnification="40X", balance="synthetic", synthetic_dir=str(gan))
    table, _ = load_field_data(config)
    assert set(table["magnification"]) == {"40X"} and table.attrs["data_fingerprint"] == recorded
    assert data_fingerprint(synthetic_breakhis) == recorded
    subtype = table["subtype"].to_numpy()  # adenosis a minority of the training rows: GAN fill tops it up
    train = np.concatenate([np.flatnonzero(subtype == "fibroadenoma"), np.flatnonzero(subtype == "adenosis")[:1]])
    filled, added = gan_fill(config, table, train, table.attrs["data_fingerprint"])  # not refused
    assert filled["synthetic"].astype(bool).sum() == len(added) >= 1
    assert synthetic_problem(config) is None


def test_the_card_keeps_the_fingerprint_a_generator_of_the_same_data_records(run, synthetic_breakhis):
    from core.data.selection import SplitSpec, select_images

    card = read_json(run / "model" / "card.json")
    assert card["training"]["data_fingerprint"] == select_images(synthetic_breakhis, SplitSpec()).fingerprint


def test_a_single_split_fields_run_scores_the_baselines_so_its_subtype_is_checked(run):
    """Only the cross-validation scored the baselines: a single split's metrics had none, so the subtype check
    never ran and a head at macro-F1 0.03 was shown as a finding."""
    from core.evaluation.subtype_trust import subtype_reliability

    metrics, card = read_json(run / "metrics.json"), read_json(run / "model" / "card.json")
    baselines = metrics["baselines"]
    assert set(baselines) == {"majority", "colour_texture"} and card["metrics"]["baselines"] == baselines
    for baseline in baselines.values():  # the model's test images and patients
        assert baseline["data"]["images"] == metrics["data"]["images"]
        assert baseline["data"]["cases"] == metrics["data"]["cases"]
    reliable, note = subtype_reliability(card)
    assert "colour/texture baseline" in note and "not compared" not in note
    assert reliable == (metrics["subtype_macro_f1"] >= baselines["colour_texture"]["subtype_macro_f1"])


def test_the_referral_caption_of_a_split_gives_its_validation_figures_as_in_sample_and_its_test_figures(run):
    from core.app import referral_view

    referral = read_json(run / "model" / "card.json")["thresholds"]["referral"]
    caption = referral_view.referral_caption(referral, referral_view.stored_predictions(run / "model"))
    assert "Chosen on the validation split (" in caption and "in-sample, so optimistic" in caption
    assert "On the held-out test images:" in caption
    # the intervals it gave are named (here Wilson's: every unreferred call right); the subtype refers every
    # image of this tiny run, and no interval is claimed for it
    assert caption.endswith("95% intervals: Wilson score interval over 8 patients (the bootstrap had no spread: "
                            "every resample gave the same value).") or "95% intervals: bootstrap over patients" in caption
