"""Bootstrap intervals over cases: the vectorised metrics equal scikit-learn's, resampling is by
whole cases, and the intervals cover what they should."""

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from core.data.labels import SUBTYPES
from core.evaluation.intervals import HEADLINE_METRICS, _arrays, fold_summary, format_interval, headline_intervals


def _table(n_cases=12, per_case=5, skill=0.8, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for case in range(n_cases):
        subtype = SUBTYPES[case % len(SUBTYPES)]
        label = "malignant" if SUBTYPES.index(subtype) >= 4 else "benign"
        for _ in range(per_case):
            right = rng.random() < skill
            p = rng.uniform(0.55, 1.0) if right else rng.uniform(0.0, 0.45)
            p_malignant = round(p if label == "malignant" else 1 - p, 1)  # rounding makes ties
            pred_label = "malignant" if p_malignant >= 0.5 else "benign"
            pred_subtype = subtype if rng.random() < skill else SUBTYPES[rng.integers(len(SUBTYPES))]
            rows.append({"case": f"c{case}", "label": label, "pred_label": pred_label, "p_malignant": p_malignant,
                         "subtype": subtype, "pred_subtype": pred_subtype})
    return pd.DataFrame(rows)


def test_weighted_metrics_equal_scikit_learn_on_an_explicit_resample():
    table = _table()
    rng = np.random.default_rng(1)
    counts = np.bincount(rng.integers(0, 12, 12), minlength=12).astype(float)
    weights = counts[pd.factorize(table["case"])[0]][None]
    resampled = table.loc[table.index.repeat(weights[0].astype(int))]  # the same resample, written out
    arrays = _arrays(table)
    truth_m = resampled["label"] == "malignant"
    expected = {
        "stage1_accuracy": skm.accuracy_score(resampled["label"], resampled["pred_label"]),
        "stage1_balanced_accuracy": skm.balanced_accuracy_score(resampled["label"], resampled["pred_label"]),
        "malignant_recall": skm.recall_score(truth_m, resampled["pred_label"] == "malignant"),
        "stage1_auc": skm.roc_auc_score(truth_m, resampled["p_malignant"]),
        "subtype_macro_f1": skm.f1_score(resampled["subtype"], resampled["pred_subtype"], average="macro",
                                         labels=sorted(set(resampled["subtype"])), zero_division=0),
    }
    for name, metric in HEADLINE_METRICS.items():
        assert metric(weights, arrays)[0] == pytest.approx(expected[name], abs=1e-9), name


def test_intervals_resample_cases_and_narrow_with_more_of_them():
    small, large = headline_intervals(_table(n_cases=8), "image"), headline_intervals(_table(n_cases=64), "image")
    for name in HEADLINE_METRICS:
        block = small[name]
        assert block["low"] <= block["value"] <= block["high"], name
        assert block["resamples"] + block["undefined"] == 2000
    width = lambda block: block["high"] - block["low"]  # noqa: E731
    assert width(large["stage1_accuracy"]) < 0.6 * width(small["stage1_accuracy"])
    assert small["cases"] == 8 and small["rows"] == 40
    one_case = headline_intervals(_table(n_cases=1), "patient")
    assert one_case["stage1_accuracy"]["low"] is None and one_case["stage1_accuracy"]["value"] is not None
    assert format_interval(small["stage1_accuracy"]).count("95% CI") == 1


def test_an_undefined_auc_is_skipped_and_counted():
    table = _table(n_cases=3)  # cases 0-2: benign subtypes only -> no AUC anywhere
    block = headline_intervals(table, "image")["stage1_auc"]
    assert block["value"] is None and block["resamples"] == 0 and block["undefined"] == 2000


def test_a_resample_without_one_class_gives_no_balanced_or_macro_figure():
    """Three malignant patients called right and one benign patient called malignant: a resample without the
    benign patient has no balanced accuracy (its malignant recall alone read 1.0 and made the interval 0.50-1.00
    for a model that calls everything malignant); it is skipped and counted, as an undefined AUC is."""
    rows = [{"case": case, "label": label, "pred_label": "malignant", "p_malignant": 0.9 if label == "malignant" else 0.8,
             "subtype": "ductal_carcinoma" if label == "malignant" else "adenosis", "pred_subtype": "ductal_carcinoma"}
            for case, label in [("m1", "malignant"), ("m2", "malignant"), ("m3", "malignant"), ("b1", "benign")]
            for _ in range(10)]
    out = headline_intervals(pd.DataFrame(rows), "image")
    auc_undefined = out["stage1_auc"]["undefined"]
    assert 0 < auc_undefined < 2000
    for name in ("stage1_balanced_accuracy", "subtype_macro_f1"):
        assert out[name]["undefined"] == auc_undefined, name  # the same resamples lack benign tissue
    macro = out["subtype_macro_f1"]
    assert macro["low"] <= macro["value"] <= macro["high"]
    balanced = out["stage1_balanced_accuracy"]  # 0.5 in every resample that has both classes: never better
    assert balanced["value"] == 0.5 and balanced["low"] is None and balanced["method"].startswith("no interval")


def test_fold_summary_is_mean_and_sample_std():
    summary = fold_summary([{"acc": 0.5, "n": 3, "flag": True}, {"acc": 0.7, "n": 5, "flag": False}])
    assert summary["acc"]["mean"] == pytest.approx(0.6) and summary["acc"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert "flag" not in summary and summary["n"]["folds"] == 2


def test_a_one_class_split_has_no_balanced_or_macro_figure_from_any_caller(monkeypatch, tmp_path):
    """Only evaluate.score blanked the figures a one-class split leaves undefined: the GAN-fill ablation
    (headline_intervals on its arms' predictions) published "balanced accuracy 1.0" for a benign-only split."""
    from core.evaluation.intervals import patient_intervals, point_metrics
    from core.gan import ablation
    from core.gan.gallery import ablation_sentence

    table = _table(n_cases=3, skill=1.0)  # benign subtypes only, every call right
    assert set(table["label"]) == {"benign"}
    run = tmp_path / "none"
    run.mkdir()
    table.to_csv(run / "predictions.csv", index=False)
    monkeypatch.setattr(ablation, "read_card", lambda folder: {"training": {"seconds": 1.0}})
    arm = ablation._fields_summary(run)
    for block in (arm["headline"], headline_intervals(table, "image", n_resamples=50),
                  patient_intervals(table, table, n_resamples=50)):
        for name in ("stage1_balanced_accuracy", "subtype_macro_f1"):
            assert block[name]["value"] is None and block[name]["low"] is None and block[name]["high"] is None, name
            assert block[name]["not_applicable"].startswith("n/a: no malignant images in this split"), name
        assert block["stage1_accuracy"]["value"] == 1.0  # a share of images right: still defined
    point = point_metrics(table)
    assert point["stage1_balanced_accuracy"] is None and point["subtype_macro_f1"] is None
    assert set(point["not_applicable"]) == {"stage1_balanced_accuracy", "subtype_macro_f1"}
    result = {"filled_subtypes": ["adenosis"], "gan": "g", "gan_leak": None, "same_split": True,
              "runs": {"none": arm, "synthetic": arm}}
    helped, text = ablation_sentence(result)  # the gallery's words: n/a, no crash, no claim
    assert not helped and "macro-F1 n/a without, n/a with" in text and "no malignant images" in text
    assert "| subtype macro-F1 (8 classes) | n/a | n/a |" in ablation.format_fields_ablation(result)


def test_a_perfect_or_null_share_of_few_patients_gets_a_wilson_interval_not_a_zero_width_one():
    """QA retrain #5: 4 of 4 test patients right read "95% CI 1.00-1.00" (every bootstrap resample is 1.0). A
    share (accuracy, malignant recall, a share of images) whose bootstrap has no spread takes the Wilson score
    interval over the patients resampled, and says so; a figure with spread keeps its bootstrap."""
    from core.evaluation.intervals import share_interval

    four = headline_intervals(_table(n_cases=4, per_case=1, skill=1.0), "patient")["stage1_accuracy"]
    assert four["value"] == 1.0 and four["high"] == 1.0
    assert four["low"] == pytest.approx(0.5101, abs=1e-4)  # Wilson, 4 of 4
    assert four["method"].startswith("Wilson score interval over 4 patients")
    assert format_interval(four, 2) == "1.00 (95% CI 0.51-1.00)"
    from core.app.registry import measured_accuracy  # the sidebar badge and every prediction carry it

    patient = headline_intervals(_table(n_cases=4, per_case=1, skill=1.0), "patient")
    assert measured_accuracy({"metrics": {"split": "test", "intervals": {"patient": patient}}}) == (
        "patient-level stage-1 accuracy 1.00 (95% CI 0.51-1.00, 4 test patients)")
    perfect = headline_intervals(_table(n_cases=8, skill=1.0), "image")  # 40 images of 8 patients, all right
    assert perfect["stage1_accuracy"]["low"] == pytest.approx(0.6756, abs=1e-4)  # over the 8 patients, not 40 images
    assert perfect["malignant_recall"]["low"] == pytest.approx(0.5101, abs=1e-4)  # its 4 malignant patients
    auc = perfect["stage1_auc"]  # not a share, and every resample 1.0: no interval rather than "1.000-1.000"
    assert auc["low"] is None and auc["method"].startswith("no interval: all ") and "gave the same value" in auc["method"]
    assert format_interval(auc) == "1.000 (no spread over the patient resamples)"
    wrong = share_interval(_table(n_cases=4), np.zeros(20, bool))
    assert (wrong["value"], wrong["low"]) == (0.0, 0.0) and wrong["high"] == pytest.approx(0.4899, abs=1e-4)
    assert wrong["method"].startswith("Wilson score interval over 4 patients")
    spread = headline_intervals(_table(n_cases=12), "image")["stage1_accuracy"]
    assert spread["low"] < spread["value"] < spread["high"] and spread["method"].startswith("percentile bootstrap")
