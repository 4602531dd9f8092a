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
