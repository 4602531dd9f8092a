"""Evaluation of a (tiny, really trained) run: every block names its split protocol and size, the
numbers are consistent with each other, and a moved dataset is found again by file name."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

from core.app.performance import per_magnification_table
from core.cli import main as cli
from core.data.breakhis import index_folder
from core.data.images import load_image
from core.data.labels import CLASS_OF_SUBTYPE, CLASSES, SUBTYPES, SUBTYPES_BY_CLASS, subtype_index
from core.data.preprocess import batch_for_model
from core.data.splits import PATIENT, make_split
from core.evaluation.evaluate import evaluate_run, predictions_frame
from core.evaluation.metrics import classification_block, magnification_blocks, patient_table
from core.evaluation.thresholds import recall_favouring_threshold
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


def test_recall_favouring_threshold_is_the_largest_reaching_the_target():
    scores = np.array([0.2, 0.9, 0.7, 0.8])
    assert recall_favouring_threshold(scores, 0.75) == 0.7  # 3 of 4 at >= 0.7
    assert recall_favouring_threshold(scores, 0.5) == 0.8
    assert recall_favouring_threshold(scores, 1.0) == 0.2
    assert recall_favouring_threshold(np.array([]), 0.95) is None


def test_patient_level_averages_probabilities_per_case():
    def row(case, p_malignant, subtype="ductal_carcinoma"):
        joint = {f"p_{s}": (p_malignant if s == subtype else (1 - p_malignant) if s == "adenosis" else 0.0)
                 for s in SUBTYPES}
        return {"case": case, "subtype": subtype, "label": "malignant", "protocol": PATIENT,
                "pred_label": "malignant" if p_malignant >= 0.5 else "benign",
                "pred_subtype": subtype if p_malignant >= 0.5 else "adenosis",
                "p_benign": 1 - p_malignant, "p_malignant": p_malignant, **joint,
                **{f"w_{s}": 1.0 if s in (subtype, "adenosis") else 0.0 for s in SUBTYPES}}
    cases = patient_table(pd.DataFrame([row("a", 0.9), row("a", 0.4), row("b", 0.3), row("b", 0.45)]))
    assert cases["pred_label"].tolist() == ["malignant", "benign"]  # means 0.65 and 0.375
    assert cases["pred_subtype"].tolist() == ["ductal_carcinoma", "adenosis"]
    assert cases["n_images"].tolist() == [2, 2] and cases["correct_stage1"].tolist() == [0.5, 0.0]
    assert set(SUBTYPES_BY_CLASS["benign"]) & set(cases["pred_subtype"]) == {"adenosis"}


def test_app_case_calls_and_patient_level_evaluation_use_one_rule():
    """Mean p(class) -> class; then the mean p(subtype | class). Here the mean JOINT probability
    would pick ductal carcinoma, the hierarchical rule picks lobular carcinoma."""
    from core.app.report import case_calls
    from core.app.service import ImageResult
    from core.model.predict import Prediction, case_decision

    def prediction(p_malignant, malignant_within):
        stage1 = {"benign": 1 - p_malignant, "malignant": p_malignant}
        malignant = dict(zip(SUBTYPES_BY_CLASS["malignant"], malignant_within))
        benign = dict(zip(SUBTYPES_BY_CLASS["benign"], [0.25] * 4))
        label = max(stage1, key=stage1.get)
        stage2, other = (malignant, benign) if label == "malignant" else (benign, malignant)
        subtype = max(stage2, key=stage2.get)
        return Prediction(stage1, label, stage2, other, subtype, stage1[label] * stage2[subtype], False, [])

    images = [prediction(0.9, [0.9, 0.1, 0.0, 0.0]), prediction(0.2, [0.0, 1.0, 0.0, 0.0])]
    decision = case_decision(images)
    assert (decision.label, decision.subtype) == ("malignant", SUBTYPES_BY_CLASS["malignant"][1])
    assert decision.p_class["malignant"] == pytest.approx(0.55)
    calls = case_calls([ImageResult(f"{i}.png", str(i), prediction=p, case="a") for i, p in enumerate(images)])
    rows = [{"case": "a", "subtype": "lobular_carcinoma", "label": "malignant", "protocol": PATIENT,
             "pred_label": p.label, "pred_subtype": p.subtype, **{f"p_{c}": p.stage1[c] for c in CLASSES},
             **{f"p_{s}": v for s, v in p.subtype_probabilities().items()},
             **{f"w_{s}": {**p.stage2, **p.other_stage2}[s] for s in SUBTYPES}} for p in images]
    cases = patient_table(pd.DataFrame(rows))
    assert calls["call"].tolist() == cases["pred_label"].tolist() == ["malignant"]
    assert cases["pred_subtype"].tolist() == [decision.subtype]
    assert calls["subtype"].tolist() == ["Lobular carcinoma"] and calls["p_subtype"].item() == pytest.approx(0.55)
    with pytest.raises(ValueError, match="at least one"):
        case_decision([])


def test_the_eight_view_uncertainty_uses_at_most_a_few_hundred_images_per_split():
    """TTA runs 8 forwards an image: a full split is capped, at random but reproducibly."""
    import pandas as pd

    from core.evaluation.evaluate import VIEWS_MOST, for_views

    rows = pd.DataFrame({"path": [f"{i}.png" for i in range(VIEWS_MOST + 250)]})
    drawn = for_views(rows)
    assert len(drawn) == VIEWS_MOST and drawn["path"].is_unique
    assert drawn.equals(for_views(rows))  # the same images every evaluation
    assert len(set(drawn.index) - set(range(VIEWS_MOST))) > 0  # not simply the first ones
    small = rows.head(10)
    assert for_views(small).equals(small)


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


def _table(rows) -> pd.DataFrame:
    """A predictions table: (magnification, true subtype, called subtype) per image, one case per image."""
    frame = pd.DataFrame([{"magnification": m, "subtype": s, "label": CLASS_OF_SUBTYPE[s], "case": f"c{i}",
                           "protocol": PATIENT} for i, (m, s, _) in enumerate(rows)])
    called = [CLASS_OF_SUBTYPE[c] for _, _, c in rows]
    p_class = np.array([[0.9, 0.1] if c == "benign" else [0.1, 0.9] for c in called])
    within = np.array([[0.9 if s == c else 0.1 / 7 for s in SUBTYPES] for _, _, c in rows])
    return predictions_frame(frame, p_class, within)


def test_a_recall_without_images_of_its_class_is_undefined_not_zero():
    """A magnification without malignant images read 'malignant recall 0.0', as if every one was missed."""
    table = _table([("40X", "adenosis", "adenosis"), ("40X", "fibroadenoma", "adenosis"),
                    ("100X", "adenosis", "adenosis"), ("100X", "ductal_carcinoma", "ductal_carcinoma"),
                    ("100X", "lobular_carcinoma", "adenosis")])
    blocks = magnification_blocks(table, "test")
    assert blocks["40X"]["stage1"]["malignant_recall"] is None
    assert blocks["100X"]["stage1"]["malignant_recall"] == pytest.approx(0.5)
    assert blocks["40X"]["stage1"]["macro_recall"] is None  # no malignant images: a macro figure is n/a
    assert "no malignant images" in blocks["40X"]["stage1"]["not_applicable"]
    shown = per_magnification_table({"per_magnification": blocks}).set_index("magnification")["malignant recall"]
    assert pd.isna(shown["40X"]) and shown["100X"] == 0.5  # the Model performance page: an empty cell, not 0.0
    stage1 = classification_block(table["label"], table["pred_label"], table[["p_benign", "p_malignant"]].to_numpy(),
                                  CLASSES, {})
    assert stage1["per_class"]["benign"]["recall"] == 1.0  # specificity, defined
    only_malignant = table[table["label"] == "malignant"]
    malignant_only = classification_block(only_malignant["label"], only_malignant["pred_label"],
                                          only_malignant[["p_benign", "p_malignant"]].to_numpy(), CLASSES, {})
    benign = malignant_only["per_class"]["benign"]
    assert benign["recall"] is None and benign["f1-score"] is None and benign["support"] == 0
    assert benign["precision"] == 0.0  # called benign once, wrongly: a measured precision


def test_a_split_without_a_class_has_no_balanced_accuracy_or_macro_f1_and_says_why():
    """A test split of benign images only, all called benign, read "balanced accuracy 1.0, macro F1 1.0"
    (an average over the one class present) on the Retrain and Model performance pages."""
    from core.app.performance import intervals_table, metrics_table
    from core.evaluation.evaluate import score

    rows = [("40X", s, s) for s in ("adenosis", "adenosis", "fibroadenoma", "fibroadenoma")]
    table = _table(rows).assign(path=[f"img{i}.png" for i in range(len(rows))], split="test")
    table["case"] = ["c0", "c0", "c1", "c1"]
    results = score(table, table.assign(split="val"), "test")
    assert results["stage1"]["accuracy"] == 1.0  # a share of images right: still defined
    for block in (results["stage1"], results["subtype8"], results["patient"]["stage1"]):
        assert block["balanced_accuracy"] is None and block["macro_f1"] is None and block["macro_recall"] is None
        assert block["not_applicable"].startswith("n/a: no malignant images in this split")
    assert results["stage1_balanced_accuracy"] is None and results["subtype_macro_f1"] is None
    assert results["stage2"]["benign"]["macro_f1"] == 1.0  # two benign subtypes: a defined macro figure
    for level in ("image", "patient"):
        assert results["intervals"][level]["stage1_balanced_accuracy"]["value"] is None
        assert "no malignant" in results["intervals"][level]["subtype_macro_f1"]["not_applicable"]
    assert results["validation"]["stage1_balanced_accuracy"] is None
    assert "no malignant" in results["validation"]["not_applicable"]["subtype_macro_f1"]
    shown = metrics_table(results).set_index("what")
    assert shown["balanced accuracy"].isna().sum() == 4 and shown["macro F1"].isna().sum() == 4
    assert shown.loc["Stage 2: benign subtypes (true class given)", "macro F1"] == 1.0
    assert "no malignant images" in shown.loc["Stage 1: benign vs malignant", "note"]
    headline = intervals_table(results).set_index(["level", "metric"])["model"]
    assert headline[("image", "stage-1 balanced accuracy")] == "n/a"
    assert headline[("patient", "subtype macro-F1 (8 classes)")] == "n/a"
    one_subtype = _table([("40X", "adenosis", "adenosis")] * 2)
    block = classification_block(one_subtype["subtype"], one_subtype["pred_subtype"],
                                 one_subtype[[f"p_{s}" for s in SUBTYPES_BY_CLASS["benign"]]].to_numpy(),
                                 SUBTYPES_BY_CLASS["benign"], {})
    assert block["macro_f1"] is None and block["not_applicable"].startswith("n/a: only adenosis images")


def test_per_subtype_figures_of_absent_or_never_called_subtypes_are_undefined():
    table = _table([("40X", "adenosis", "adenosis"), ("40X", "adenosis", "fibroadenoma"),
                    ("40X", "tubular_adenoma", "adenosis"), ("40X", "ductal_carcinoma", "ductal_carcinoma")])
    block = classification_block(table["subtype"], table["pred_subtype"],
                                 table[[f"p_{s}" for s in SUBTYPES]].to_numpy(), SUBTYPES, {})
    per_class = block["per_class"]
    assert per_class["adenosis"] == {"precision": 0.5, "recall": 0.5, "f1-score": 0.5, "support": 2}
    assert per_class["fibroadenoma"] == {"precision": 0.0, "recall": None, "f1-score": None, "support": 0}
    assert per_class["tubular_adenoma"] == {"precision": None, "recall": 0.0, "f1-score": 0.0, "support": 1}
    assert per_class["phyllodes_tumor"] == {"precision": None, "recall": None, "f1-score": None, "support": 0}
    assert block["macro_f1"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)  # the absent subtypes are not averaged in
    from core.evaluation.metrics import block_note

    assert block_note(block).startswith("macro figures over the 3 of 8 present; none of fibroadenoma, phyllodes_tumor")


def test_the_comparison_table_shows_an_undefined_recall_as_n_a():
    """Model performance's published-results table called round(None) on a benign-only evaluation's malignant recall."""
    from core.app.performance import comparison_table

    table = _table([("40X", "adenosis", "adenosis"), ("40X", "fibroadenoma", "adenosis")])
    stage1 = classification_block(table["label"], table["pred_label"], table[["p_benign", "p_malignant"]].to_numpy(),
                                  CLASSES, {})
    metrics = {"stage1": stage1, "data": {"protocol": "patient-wise", "images": 2, "cases": 1}}
    reference = pd.DataFrame([{"source": "paper", "model": "x", "protocol": "patient-wise", "task": "binary",
                               "metric": "accuracy", "value": 0.9, "note": ""}])
    rows = comparison_table(reference, metrics, "mine").set_index("metric")
    ours = rows[rows["source"] == "this app (active model)"]
    assert ours.loc["malignant recall", "value"] == "n/a" and ours.loc["accuracy", "value"] == "1.0"


def test_pooled_out_of_fold_figures_state_the_thresholds_chosen_on_them():
    """A cross-validated model's card said "no validation cases of both classes" under metrics.case_threshold
    (and no recall-favouring threshold) while its thresholds block had chosen the case threshold on the same
    pooled out-of-fold patients."""
    from core.training.field_run import _selection_figures

    rng = np.random.default_rng(0)
    rows = [("200X", s, s if rng.random() < 0.7 else "adenosis") for s in SUBTYPES for _ in range(6)]
    table = _table(rows).assign(split="test")
    table["path"] = [f"img{i}.png" for i in range(len(table))]
    referral, case_rule, metrics = _selection_figures(table, "pooled out-of-fold predictions")
    assert case_rule["selected_on"] is not None and metrics["case_threshold"] == case_rule
    favouring = metrics["malignant_threshold"]["recall_favouring"]
    assert favouring["threshold"] is not None and favouring["selected_on"]["data"]["protocol"] == PATIENT
    assert "validation" not in metrics  # the same predictions: no second, identical set of figures


def test_a_patient_with_two_tumour_types_is_one_stage1_patient_as_the_app_calls_it():
    """Stage 1 is called per case (core.app.report.case_calls); a case with two true tumour types of one class
    (one called right, one wrong) is ONE stage-1 patient, not a right and a wrong one. The subtype is scored
    per case and tumour type, and those rows say so; the intervals and the case threshold count patients."""
    from core.app.registry import measured_accuracy
    from core.evaluation.evaluate import score
    from core.evaluation.thresholds import case_threshold

    def row(case, subtype, p_malignant):
        label = CLASS_OF_SUBTYPE[subtype]
        within = {s: 1.0 if s == subtype else 0.0 for s in SUBTYPES}
        p_class = np.array([[1 - p_malignant, p_malignant]])
        return predictions_frame(pd.DataFrame([{"path": f"{case}-{subtype}-{p_malignant}.png", "case": case,
                                                "subtype": subtype, "label": label, "protocol": PATIENT,
                                                "magnification": "200X"}]),
                                 p_class, np.array([[within[s] for s in SUBTYPES]]))

    frames = [row("mixed", "adenosis", 0.1), row("mixed", "fibroadenoma", 0.8), row("mixed", "fibroadenoma", 0.7),
              row("b", "tubular_adenoma", 0.2), row("m", "ductal_carcinoma", 0.9), row("m2", "lobular_carcinoma", 0.6)]
    table = pd.concat(frames, ignore_index=True)
    patients = patient_table(table)
    assert len(patients) == 4 and pd.isna(patients.loc[patients["case"] == "mixed", "subtype"].item())
    results = score(table, None, "test")  # case threshold 0.5
    stage1, subtype8 = results["patient"]["stage1"], results["patient"]["subtype8"]
    assert stage1["data"]["rows"] == stage1["data"]["cases"] == 4 and stage1["data"]["level"] == "patient"
    assert stage1["accuracy"] == 0.75  # "mixed" (mean p(malignant) 0.53) is one wrong patient
    assert subtype8["data"]["rows"] == 5 and subtype8["data"]["level"] == "case x tumour type"
    patient = results["intervals"]["patient"]
    assert patient["rows"] == patient["cases"] == 4 and patient["subtype_rows"] == 5
    assert patient["stage1_accuracy"]["value"] == 0.75 == results["patient_stage1_accuracy"]
    assert case_threshold(table)["selected_on"]["rows"] == 4
    card = {"metrics": {**results, "intervals": {"patient": patient}}}
    assert measured_accuracy(card).endswith("0.75 (95% CI " + measured_accuracy(card).split("95% CI ")[1])
    assert "4 test patients" in measured_accuracy(card) and "rows" not in measured_accuracy(card)
    older = {"metrics": {**results, "intervals": {"patient": {**patient, "rows": 5}}}}
    assert "4 test patients, counted as 5 patient-and-tumour-type groups" in measured_accuracy(older)
