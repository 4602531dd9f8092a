"""Evaluation of a (tiny, really trained) run: every block names its split protocol and size, the
numbers are consistent with each other, and a moved dataset is found again by file name."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

from core.cli import main as cli
from core.data.breakhis import index_folder
from core.data.images import load_image
from core.data.labels import CLASSES, SUBTYPES, subtype_index
from core.data.preprocess import batch_for_model
from core.data.splits import PATIENT, make_split
from core.evaluation.evaluate import evaluate_run
from core.model.classifier import build_classifier
from core.model.folders import load_model_folder, save_model_folder

SIZE = 64


def _fit_tiny_model(train: pd.DataFrame) -> keras.Model:
    """A few epochs of plain keras fit: stage 1 (colour) is learnable, stage 2 partly."""
    keras.utils.set_random_seed(0)
    model, _ = build_classifier("small_cnn", "hierarchical", weights=None, input_size=SIZE)
    for layer in model.layers:  # 48 steps are too few for the default 0.99 moving-statistics momentum.
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.5
    images = batch_for_model([load_image(p).rgb for p in train["path"]], SIZE)
    targets = {"stage1": np.array([CLASSES.index(c) for c in train["label"]])}
    weights = {"stage1": np.ones(len(train), np.float32)}
    for label in CLASSES:
        own = (train["label"] == label).to_numpy()
        targets[f"{label}_subtype"] = np.array([subtype_index(s) if o else 0 for s, o in zip(train["subtype"], own)])
        weights[f"{label}_subtype"] = own.astype(np.float32)
    model.compile(keras.optimizers.Adam(1e-3), loss={name: "sparse_categorical_crossentropy" for name in targets})
    model.fit(images, targets, sample_weight=weights, epochs=12, batch_size=8, verbose=0)
    return model


@pytest.fixture(scope="module")
def run_dir(synthetic_breakhis, tmp_path_factory):
    split = make_split(index_folder(synthetic_breakhis).images, PATIENT, seed=0)
    run = tmp_path_factory.mktemp("run")
    split.to_csv(run / "split.csv", index=False)
    card = {"name": "tiny-run", "backbone": "small_cnn", "hierarchy": "hierarchical", "demo": True,
            "training": {"split_protocol": PATIENT}}
    save_model_folder(_fit_tiny_model(split[split["split"] == "train"]), run / "model", card)
    return run


@pytest.fixture(scope="module")
def metrics(run_dir):
    return evaluate_run(run_dir)


def _blocks(value, path=""):
    """Every metric block (a dict with numbers computed on some data) with its location."""
    if isinstance(value, dict):
        if any(k in value for k in ("accuracy", "threshold", "stage1")) and "data" in value:
            yield path, value
        for key, child in value.items():
            yield from _blocks(child, f"{path}/{key}")


def test_every_block_carries_protocol_and_size(metrics):
    blocks = list(_blocks(metrics))
    paths = {p for p, _ in blocks}
    assert {"/stage1", "/subtype8", "/stage2/benign", "/stage2/malignant", "/patient/stage1",
            "/patient/subtype8", "/patient/patient_recognition_rate", "/per_magnification/40X/stage1",
            "/malignant_threshold/decision", "/malignant_threshold/recall_favouring/on_split",
            "/malignant_threshold/recall_favouring/selected_on"} <= paths
    for path, block in blocks:
        data = block["data"]
        assert data["protocol"] == PATIENT and data["images"] > 0 and data["cases"] > 0, path
    assert metrics["data"] == {"split": "test", "protocol": PATIENT, "level": "image", "images": 32, "cases": 8}
    assert metrics["patient"]["stage1"]["data"]["level"] == "patient"
    assert metrics["malignant_threshold"]["recall_favouring"]["selected_on"]["data"]["split"] == "val"


def test_numbers_are_consistent(metrics):
    """Every block's figures follow from its own confusion matrix, which counts exactly its images
    (image level), its patients or its case x tumour-type rows (patient level)."""
    checked = 0
    for path, block in _blocks(metrics):
        if "confusion_matrix" not in block:
            continue
        matrix = np.asarray(block["confusion_matrix"]["matrix"])
        level = block["data"]["level"]
        assert matrix.sum() == block["data"]["images" if level == "image" else "rows"], path
        assert level != "patient" or matrix.sum() == block["data"]["cases"], path
        rows = matrix.sum(axis=1)
        assert block["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum()), path
        recalls = np.diag(matrix)[rows > 0] / rows[rows > 0]  # classes present in the truth
        assert block["balanced_accuracy"] == pytest.approx(recalls.mean()), path
        assert block["macro_recall"] == pytest.approx(recalls.mean()), path  # over the classes present
        checked += 1
    assert checked >= 6  # stage 1, both stage-2 heads, 8 subtypes, patient stage 1 and 8 subtypes
    assert np.sum(metrics["stage1"]["confusion_matrix"]["matrix"]) == 32
    assert np.sum(metrics["stage2"]["benign"]["confusion_matrix"]["matrix"]) == 16
    assert np.sum(metrics["patient"]["subtype8"]["confusion_matrix"]["matrix"]) == 8
    assert len(metrics["subtype8"]["confusion_matrix"]["matrix"]) == len(SUBTYPES)
    assert sum(m["stage1"]["data"]["images"] for m in metrics["per_magnification"].values()) == 32
    # The tiny model really learned stage 1 (benign and malignant differ strongly in colour).
    assert metrics["stage1"]["accuracy"] >= 0.75
    assert metrics["stage1"]["roc_auc"]["macro"] >= 0.75
    favouring = metrics["malignant_threshold"]["recall_favouring"]
    assert favouring["selected_on"]["malignant_recall"] >= 0.95
    assert favouring["threshold"] <= 1.0 and metrics["not_evaluated"] == {"missing": 0, "unreadable": 0, "examples": []}


def test_headline_metrics_carry_bootstrap_intervals_over_cases(metrics):
    for level, cases in (("image", 8), ("patient", 8)):
        block = metrics["intervals"][level]
        assert block["cases"] == cases and "over cases" in block["method"]
        for name in ("stage1_accuracy", "stage1_balanced_accuracy", "malignant_recall", "stage1_auc", "subtype_macro_f1"):
            interval = block[name]
            if interval["low"] is None:  # a perfect AUC on 8 cases: every resample the same, no interval given
                assert interval["method"].startswith("no interval") and name not in ("stage1_accuracy",
                                                                                    "malignant_recall"), name
            else:
                assert interval["low"] <= interval["value"] <= interval["high"], (level, name)
            assert interval["resamples"] > 1500  # a few resamples may lack a class
    assert metrics["intervals"]["image"]["stage1_accuracy"]["value"] == metrics["stage1"]["accuracy"]
    assert metrics["intervals"]["patient"]["stage1_accuracy"]["value"] == metrics["patient"]["stage1"]["accuracy"]
    assert metrics["validation"]["data"]["split"] == "val" and 0 <= metrics["validation"]["stage1_accuracy"] <= 1


def test_baselines_are_scored_on_the_same_cases_and_the_cnn_is_compared(metrics):
    majority, colour = metrics["baselines"]["majority"], metrics["baselines"]["colour_texture"]
    for baseline in (majority, colour):
        assert baseline["data"] == metrics["data"]  # the same held-out images and cases
        assert "stage1_accuracy" in baseline["intervals"]["patient"]
    # Half the synthetic images are benign: always calling one class is right half the time.
    assert majority["stage1_accuracy"] == pytest.approx(0.5) and majority["stage1_balanced_accuracy"] == 0.5
    # Colour separates the synthetic classes, so the colour/texture baseline learns them.
    assert colour["stage1_accuracy"] >= 0.9 and colour["stage1_accuracy"] > majority["stage1_accuracy"]


def test_the_case_threshold_is_chosen_on_validation_cases_and_used(metrics, run_dir):
    rule = metrics["case_threshold"]
    assert 0.0 < rule["threshold"] < 1.0 and rule["selected_on"]["split"] == "val"
    assert rule["balanced_accuracy_on_validation"] >= 0.75  # the tiny model separates the colours
    assert rule["selected_on"]["level"] == "patient" and metrics["patient"]["malignant_threshold"] == rule["threshold"]
    _, card = load_model_folder(run_dir / "model")
    assert card["thresholds"]["case_malignant"] == rule["threshold"]


def test_outputs_written_and_card_updated_with_valid_checksum(metrics, run_dir):
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["stage1"]["accuracy"] == metrics["stage1"]["accuracy"]
    assert on_disk["stage1"]["roc_curves"]["malignant"]["fpr"][0] == 0.0
    _, card = load_model_folder(run_dir / "model")  # still passes the checksum
    assert card["metrics"]["stage1"]["accuracy"] == metrics["stage1"]["accuracy"]
    assert "roc_curves" not in card["metrics"]["stage1"]
    report = (run_dir / "report.html").read_text()
    assert report.count("plotly.js v") == 1 and report.count("Plotly.newPlot") == 8
    assert "DEMO model" in report and PATIENT in report


def test_a_first_evaluation_reports_its_figures_as_measured_not_as_not_evaluated(metrics, run_dir, tmp_path):
    """The report is drawn before the card gets its metrics; the card's evidence reads "not evaluated" until then
    (core.evaluation.evidence, QA retrain #8), so the report words the card as this evaluation leaves it."""
    import shutil

    from core.model.folders import update_card

    run = tmp_path / "first"
    shutil.copytree(run_dir, run)
    statement = "weights learnt from 48 real images of 12 patients (from scratch); figures measured on the test split"
    update_card(run / "model", metrics=None, evidence={"images": 48, "patients": 12, "statement": statement})
    evaluate_run(run, baselines=False)
    assert f"Trained on: {statement}." in (run / "report.html").read_text()
    assert "not evaluated" not in (run / "report.html").read_text()


def test_moved_dataset_is_found_by_file_name(metrics, run_dir, synthetic_breakhis, tmp_path):
    moved = tmp_path / "moved_run"
    moved.mkdir()
    split = pd.read_csv(run_dir / "split.csv")
    split["path"] = "/nowhere/" + split["path"].map(lambda p: p.rsplit("/", 1)[-1])
    split.to_csv(moved / "split.csv", index=False)
    (moved / "model").symlink_to(run_dir / "model")
    with pytest.raises(ValueError, match="--data"):
        evaluate_run(moved, write=False)
    again = evaluate_run(moved, data_dir=synthetic_breakhis, write=False)
    assert again["stage1"]["confusion_matrix"] == metrics["stage1"]["confusion_matrix"]


def test_cli_prints_a_summary(run_dir, synthetic_breakhis, capsys, tmp_path):
    assert cli(["evaluate", str(run_dir), "--data", str(synthetic_breakhis), "--split", "val", "--threshold", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "val split, patient-wise, 32 images, 8 cases" in out and "stage-1 accuracy" in out
    assert cli(["evaluate", str(run_dir / "missing")]) == 2
    assert "split.csv not found" in capsys.readouterr().err
    cv = tmp_path / "a-cross-validation"  # no split of its own: said so, not "is it a run folder?"
    cv.mkdir()
    (cv / "cv.json").write_text("{}")
    for command in ("evaluate", "calibrate"):
        assert cli([command, str(cv)]) == 2
        assert "is a cross-validation: its figures are in cv.json" in capsys.readouterr().err


def test_flat_models_are_evaluated_the_same_way(run_dir, tmp_path):
    flat_run = tmp_path / "flat_run"
    flat_run.mkdir()
    (flat_run / "split.csv").write_bytes((run_dir / "split.csv").read_bytes())
    model, _ = build_classifier("small_cnn", "flat", weights=None, input_size=SIZE)
    save_model_folder(model, flat_run / "model", {"backbone": "small_cnn", "hierarchy": "flat"})
    flat = evaluate_run(flat_run, write=False)
    assert flat["hierarchy"] == "flat" and np.sum(flat["subtype8"]["confusion_matrix"]["matrix"]) == 32
    assert np.sum(flat["stage2"]["malignant"]["confusion_matrix"]["matrix"]) == 16
    assert 0.0 <= flat["patient"]["stage1"]["accuracy"] <= 1.0


def _copy_run(run_dir, to):
    """A run folder of its own (split.csv, model/), so a test may rewrite its card and metrics."""
    import shutil

    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns("metrics*.json", "report*.html"))
    return to


def test_an_evaluation_keeps_the_thresholds_other_steps_chose(metrics, run_dir, tmp_path):
    """evaluate (and calibrate, which re-evaluates) replace only the thresholds they choose: the slide
    rule of `slide-threshold` and a fields run's referral stay in the card."""
    from core.evaluation.evaluate import write_outputs
    from core.model.folders import update_card

    run = _copy_run(run_dir, tmp_path / "run")
    others = {"slide_rule": {"rule": "region", "threshold": 0.8}, "referral": {"stage1": {"threshold": 0.9}}}
    update_card(run / "model", thresholds={**others, "case_malignant": 0.123})
    write_outputs(run, metrics)
    _, card = load_model_folder(run / "model")
    assert {k: card["thresholds"][k] for k in others} == others
    assert card["thresholds"]["case_malignant"] == metrics["case_threshold"]["threshold"] != 0.123


def test_only_the_test_split_updates_the_card_and_metrics_json(metrics, run_dir, tmp_path, capsys, caplog):
    """`evaluate --split val|train` is a look at other images: it is written beside the held-out figures
    (metrics_val.json, report_val.html) and says its split; the card, its thresholds and metrics.json
    keep the test split's, which the app shows as the model's."""
    from core.app.registry import measured_accuracy, tested
    from core.evaluation.evaluate import write_outputs

    run = _copy_run(run_dir, tmp_path / "run")
    write_outputs(run, metrics)
    card_before, held_out = (run / "model" / "card.json").read_text(), (run / "metrics.json").read_text()
    for split in ("val", "train"):
        assert cli(["evaluate", str(run), "--split", split]) == 0
        assert f"the {split} split was evaluated" in caplog.text
        assert f"metrics_{split}.json" in capsys.readouterr().out.splitlines()[-1]  # the files it wrote
        assert (run / "model" / "card.json").read_text() == card_before
        assert (run / "metrics.json").read_text() == held_out
        other = json.loads((run / f"metrics_{split}.json").read_text())
        assert other["split"] == other["data"]["split"] == split and (run / f"report_{split}.html").is_file()
        assert tested(other) == split and f"{split} patients" in measured_accuracy({"metrics": other})
    val = json.loads((run / "metrics_val.json").read_text())
    # Scored with the card's case threshold (chosen on these very cases), and said so, not "no validation cases".
    assert val["case_threshold"]["threshold"] == metrics["case_threshold"]["threshold"]
    assert "the val split is evaluated" in val["case_threshold"]["reason"]
    assert tested(metrics) == "test" and "8 test patients" in measured_accuracy({"metrics": metrics})
