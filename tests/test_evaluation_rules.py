"""How the figures are reckoned, without a trained run: the recall-favouring threshold, patient-level averages and
the app's one case rule, the eight-view uncertainty's sample, figures that are undefined rather than zero (absent
classes, never-called subtypes) and how they show, thresholds stated for pooled out-of-fold figures, and a patient
with two tumour types (tests/test_evaluate.py: a whole evaluation of a trained run)."""


import numpy as np
import pandas as pd
import pytest

from core.app.performance import per_magnification_table
from core.data.labels import CLASS_OF_SUBTYPE, CLASSES, SUBTYPES, SUBTYPES_BY_CLASS
from core.data.splits import PATIENT
from core.evaluation.evaluate import predictions_frame
from core.evaluation.metrics import classification_block, magnification_blocks, patient_table
from core.evaluation.thresholds import recall_favouring_threshold


def test_recall_favouring_threshold_is_the_largest_reaching_the_target():
    scores = np.array([0.2, 0.9, 0.7, 0.8])
    assert recall_favouring_threshold(scores, 0.75) == 0.7  # 3 of 4 at >= 0.7
    assert recall_favouring_threshold(scores, 0.5) == 0.8
    assert recall_favouring_threshold(scores, 1.0) == 0.2
    assert recall_favouring_threshold(np.array([]), 0.95) is None


def test_a_case_threshold_is_chosen_only_where_it_beats_chance_on_validation():
    """The midpoints between three validation cases that the model ranks backwards all score below 0.5; the
    best of them (0.25 at 0.15) was chosen over the default, fitting noise. Now: the default, saying why."""
    from core.evaluation.thresholds import case_threshold

    def rows(case, label, p_malignant):
        return {"case": case, "label": label, "subtype": "adenosis" if label == "benign" else "ductal_carcinoma",
                "p_benign": 1 - p_malignant, "p_malignant": p_malignant, "protocol": PATIENT, "pred_label": "x",
                "pred_subtype": "adenosis",
                **{f"p_{s}": 0.1 for s in SUBTYPES}, **{f"w_{s}": 0.25 for s in SUBTYPES}}

    backwards = pd.DataFrame([rows("b", "benign", 0.9), rows("m1", "malignant", 0.1), rows("m2", "malignant", 0.2)])
    chosen = case_threshold(backwards)
    assert chosen["threshold"] == 0.5 and "beats chance" in chosen["reason"]
    right = pd.DataFrame([rows("b", "benign", 0.3), rows("m1", "malignant", 0.4), rows("m2", "malignant", 0.8)])
    assert case_threshold(right)["threshold"] == pytest.approx(0.35)  # separates them: chosen


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



def test_an_image_at_exactly_one_half_is_called_malignant_as_an_image_and_as_a_case():
    """One tie rule: an argmax called p(malignant) = 0.5 benign per image while the case rule and the threshold
    figures (p >= threshold) called the same image malignant, so its recall read 0.5 beside 1.0."""
    from core.evaluation.thresholds import at_threshold
    from core.model.decisions import case_decision, image_calls

    p_class = np.array([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1], [0.5000001, 0.4999999]])
    assert image_calls(p_class).tolist() == ["malignant", "malignant", "benign", "benign"]
    rows = pd.DataFrame({"case": ["14-1", "14-2", "14-3", "14-4"], "label": ["malignant"] * 2 + ["benign"] * 2,
                         "subtype": ["ductal_carcinoma"] * 2 + ["adenosis"] * 2, "protocol": PATIENT,
                         "magnification": "40X"})
    table = predictions_frame(rows, p_class, np.full((4, 8), 0.25))
    assert table["pred_label"].tolist() == ["malignant", "malignant", "benign", "benign"]
    assert case_decision([(p_class[0], np.full(8, 0.25))]).label == table["pred_label"][0]
    malignant = table[table["label"] == "malignant"]
    assert (malignant["pred_label"] == "malignant").mean() == at_threshold(table, 0.5, {})["malignant_recall"] == 1.0

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
    rows = comparison_table(reference, metrics, {"name": "mine"}).set_index("metric")
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


def test_probabilities_that_are_not_numbers_are_refused_before_any_figure():
    """A diverged model's NaN: the AUC ranked it highest, and a referral threshold could become NaN ("coverage 1.0")."""
    rows = pd.DataFrame({"case": ["14-1", "14-2"], "label": ["benign", "malignant"],
                         "subtype": ["adenosis", "ductal_carcinoma"], "protocol": PATIENT})
    with pytest.raises(ValueError, match="1 of 2 images have probabilities that are not numbers"):
        predictions_frame(rows, np.array([[0.6, 0.4], [np.nan, np.nan]]), np.full((2, 8), 0.25))
    within = np.full((2, 8), 0.25)
    within[0, 3] = np.inf
    with pytest.raises(ValueError, match="not numbers"):
        predictions_frame(rows, np.array([[0.6, 0.4], [0.2, 0.8]]), within)
