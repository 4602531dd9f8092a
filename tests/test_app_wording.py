"""What the Diagnose and performance pages print, without a model pass: the display size of a field, the training
curves and split table, a case call's reason and rule, the probability beside its threshold, what a model without
figures or an ensemble says (tests/test_app_service.py has the service and its model passes)."""

import numpy as np
import pandas as pd

from core.app import performance, report, service
from core.data.labels import SUBTYPES_BY_CLASS
from core.model.decisions import threshold_text


def test_a_breakhis_field_is_shown_as_scanned_and_a_larger_image_is_shrunk_to_the_display_side():
    field = np.random.default_rng(0).integers(0, 256, (460, 700, 3), dtype=np.uint8)
    assert np.array_equal(service.display_size(field), field)  # 700 x 460: not resampled for display
    large = np.zeros((1200, 1800, 3), np.uint8)
    assert service.display_size(large).shape == (512, service.DISPLAY_MAX_SIDE, 3)


def test_training_curves_split_losses_from_scores_and_drop_the_learning_rate():

    history = pd.DataFrame({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "stage1_accuracy": [0.6, 0.9],
                            "learning_rate": [1e-3, 1e-4]})
    panels = performance.training_curves(history)  # history.csv has no epoch column: numbered from 1
    assert list(panels) == ["Loss", "Metrics"]
    assert set(panels["Loss"]["metric"]) == {"loss", "val_loss"}
    assert set(panels["Metrics"]["metric"]) == {"stage1_accuracy"}
    assert sorted(panels["Loss"]["epoch"].unique()) == [1, 2]


def test_the_split_table_shows_what_each_split_holds(synthetic_breakhis):
    from core.data.breakhis import index_folder
    from core.data.splits import PATIENT, describe_split, make_split

    split = make_split(index_folder(synthetic_breakhis).images, PATIENT, seed=0)
    table = performance.split_summary(describe_split(split)).set_index("split")
    assert table["images"].sum() == len(split) == 96
    assert table.loc["test", "cases"] == split.loc[split["split"] == "test", "case"].nunique()
    assert (table["synthetic images"] == 0).all()
    assert (table["missing subtypes"] == "none").all()  # 3 cases per subtype: one in every split


def test_a_case_reason_keeps_its_probability_and_threshold_apart():
    """The case's refer reasons print like the images' (core.model.decisions.below): with 2 fixed
    decimals, p 0.9752 under a threshold of 0.9768 read "0.98 below 0.98"."""
    from core.model.decisions import Prediction

    stage1 = {"benign": 0.0248, "malignant": 0.9752}
    stage2 = dict(zip(SUBTYPES_BY_CLASS["malignant"], [0.9761, 0.0139, 0.005, 0.005]))
    other = dict.fromkeys(SUBTYPES_BY_CLASS["benign"], 0.25)
    prediction = Prediction(stage1, "malignant", stage2, other, "ductal_carcinoma", 0.9752 * 0.9761, False, [])
    calls = report.case_calls([service.ImageResult("a.png", "a", prediction=prediction, case="14-1")], 0.9768)
    reasons = calls["reasons"].item()
    assert "p(malignant) 0.975 < 0.9768" in reasons and "p(Ductal carcinoma) 0.976 < 0.9768" in reasons
    assert "0.98" not in reasons


def test_the_case_rule_says_whether_its_threshold_was_validated():
    validated = report.case_rule({"thresholds": {"case_malignant": 0.35}}, 0.35)
    assert "from 0.35 (the threshold this model's evaluation chose; the model card does not say on which" in validated
    assert "from 0.50 (the default: no evaluation chose one for this model)" in report.case_rule({"kind": "ensemble"}, 0.5)


def test_a_model_without_figures_is_told_how_to_evaluate_it_only_where_evaluate_can(tmp_path):
    run = tmp_path / "runs" / "r"
    (run / "model").mkdir(parents=True)
    assert "Run `python -m core evaluate RUN`" in performance.no_evaluation_text({}, str(tmp_path / "loose"))
    (run / "split.csv").write_text("path,split\n")
    assert f"python -m core evaluate {run}`" in performance.no_evaluation_text({}, str(run / "model"))
    ensemble = {"kind": "ensemble", "evaluation": "members held out different cases (e.g. k-fold): no common test set"}
    text = performance.no_evaluation_text(ensemble, str(tmp_path / "models" / "ens"))
    assert "no evaluation of its own: members held out different cases" in text and "core evaluate" not in text


def test_an_ensemble_of_calibrated_members_is_recorded_and_reported_as_calibrated(tmp_path):
    """Its card has no temperatures, but it averages its members' calibrated outputs: the audit row,
    the page and the PDF said "raw softmax outputs (not calibrated)"."""
    from core.app import records
    from core.model.loading import load_predictor
    from core.training.ensemble_run import ensemble_run
    from tests.app_helpers import REPO

    ensemble = load_predictor(ensemble_run([REPO / "models" / "default", REPO / "models" / "small-cnn"], tmp_path / "ens"))
    assert records.calibrated(ensemble) and records.model_identity(ensemble)["calibrated"]
    raw = load_predictor(REPO / "models" / "small-cnn", calibrated=False)
    assert not records.calibrated(raw) and records.calibrated(load_predictor(REPO / "models" / "small-cnn"))


def test_a_probability_just_above_a_validated_threshold_is_not_printed_equal_to_it():
    """The bundled model's stage-1 threshold is 0.9762: the caption said "below 0.98" and an image at
    0.977 read "not referred (p 0.98 >= threshold 0.98)"."""
    from core.model.decisions import Prediction

    referral = {"stage1": {"refer": False, "reasons": [], "threshold": 0.97622},
                "subtype": {"refer": False, "reasons": [], "threshold": 0.2938}}
    p = Prediction({"benign": 0.023, "malignant": 0.977}, "malignant", {"ductal_carcinoma": 0.45, "lobular_carcinoma": 0.2,
                   "mucinous_carcinoma": 0.2, "papillary_carcinoma": 0.15}, {}, "ductal_carcinoma", 0.44, False, [],
                   referral=referral)
    lines = [line for line, _ in report.referral_lines(p)]
    assert lines == ["Stage 1: not referred (p 0.977 >= threshold 0.9762)",  # the threshold as the caption states it
                     "Subtype: not referred (p 0.45 >= threshold 0.2938)"]
    assert [threshold_text(t) for t in (0.97622, 0.2938, 0.7, 0.65)] == ["0.9762", "0.2938", "0.70", "0.65"]
