"""What a run records about itself, in both pipelines: warnings at its start, its card's counts, command and
time, and its report. One tiny GAN-fill run of each pipeline, through the CLI, on a folder whose only
malignant patient lands in training, so that validation and test hold benign images only."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from core.training.progress import read_progress

OPTIONS = ["--backbone", "small_cnn", "--weights", "none", "--input-size", "32", "--epochs", "1", "--batch-size", "16",
           "--balance", "synthetic", "--allow-gan-leak"]
PIPELINES = {"tfdata": ["--no-baselines"], "fields": ["--pipeline", "fields", "--warmup-steps", "2"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{pipeline: (run folder, argv)} of one tiny run each on the same folder and GAN images."""
    from core.cli import main
    from core.data.breakhis import synthetic_name
    from core.testing.synthetic import synthetic_image, write_synthetic_breakhis

    root = tmp_path_factory.mktemp("records")
    data = write_synthetic_breakhis(root / "data")
    malignant = sorted(p for p in data.rglob("SOB_M_*") if p.is_dir() and p.parent.parent.name == "SOB")
    for folder in malignant[1:]:  # one malignant patient: the split puts it in training
        shutil.rmtree(folder)
    for path in data.rglob("*/adenosis/*/*/*-00[34].png"):  # adenosis a minority: GAN fill tops it up
        path.unlink()
    gan, rng = root / "gan", np.random.default_rng(0)
    gan.mkdir()
    for n in range(5):
        Image.fromarray(synthetic_image("adenosis", rng)).save(gan / synthetic_name("adenosis", "test-gan", 0, n))
    made = {}
    for pipeline, extra in PIPELINES.items():
        argv = ["train", "--data", str(data), "--out", str(root / pipeline), *OPTIONS, "--synthetic-dir", str(gan),
                *extra]
        assert main(argv) == 0
        made[pipeline] = (root / pipeline, argv)
    return made


def _card(run) -> dict:
    return json.loads((run / "model" / "card.json").read_text())


def test_a_run_whose_validation_and_test_lack_a_class_warns_at_its_start_and_shows_n_a(runs):
    """Its test split held benign images only, and the metrics table read "balanced accuracy 1.0, macro F1 1.0"
    with no warning anywhere."""
    from core.app.performance import metrics_table

    for pipeline, (run, _) in runs.items():
        start = read_progress(run / "progress.jsonl")[0]
        assert start["event"] == "start"
        assert [w.split(" (")[0] for w in start["warnings"]] == ["the validation split", "the test split"], pipeline
        assert all("no malignant images" in w for w in start["warnings"])
        assert "WARNING: the test split" in start["message"]  # what the Retrain page's log shows
    table = metrics_table(json.loads((runs["tfdata"][0] / "metrics.json").read_text())).set_index("what")
    stage1 = table.loc["Stage 1: benign vs malignant"]
    assert stage1["balanced accuracy"] is None or np.isnan(stage1["balanced accuracy"])
    assert np.isnan(table.loc["Patient level: benign vs malignant", "macro F1"])
    assert "no malignant images in this split" in stage1["note"]


def test_the_report_says_what_the_model_was_trained_on(runs):
    """report.html, the file most likely to be shared, gave only its title and test scope."""
    run = runs["tfdata"][0]
    report, card = (run / "report.html").read_text(), _card(run)
    assert card["evidence"]["limited"] and "LIMITED DATA" in report
    assert card["evidence"]["statement"] in report
    synthetic = sum(card["training"]["synthetic_by_subtype"].values())
    assert synthetic > 0 and f"{synthetic} synthetic (GAN) training images" in report


def test_both_pipelines_count_real_training_images_and_gan_images_apart(runs):
    """The tf.data card counted GAN images in training.by_subtype and counts.train; the fields card did not."""
    cards = {pipeline: _card(run)["training"] for pipeline, (run, _) in runs.items()}
    for pipeline, training in cards.items():
        evidence = _card(runs[pipeline][0])["evidence"]
        assert sum(training["by_subtype"].values()) == training["counts"]["train"] == evidence["images"], pipeline
        assert sum(training["synthetic_by_subtype"].values()) == training["counts"]["synthetic"] > 0, pipeline
    assert cards["tfdata"]["by_subtype"] == cards["fields"]["by_subtype"]
    assert cards["tfdata"]["synthetic_by_subtype"] == cards["fields"]["synthetic_by_subtype"]
    assert cards["tfdata"]["counts"] == cards["fields"]["counts"]


def test_both_pipelines_record_the_command_time_and_settings(runs):
    """Neither card had the command; the tf.data card had no training time and no settings either."""
    import shlex

    for pipeline, (run, argv) in runs.items():
        training = _card(run)["training"]
        assert training["command"] == shlex.join(["python", "-m", "core", *argv]), pipeline
        assert training["seconds"] > 0 and training["machine"]["backend"], pipeline
        settings = training["settings"]
        assert settings["pipeline"] == pipeline and settings["balance"] == "synthetic" and settings["epochs"] == 1
        assert "data" not in settings and "command_line" not in settings
