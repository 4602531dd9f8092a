"""What the Model performance page says beside its figures (core.app.performance): the baselines only where
they were scored, the referral's in-sample figures, per-stage and per-magnification intervals, the uncertainty flag."""

from core.app import performance

HELD_OUT = {"data": {"split": "test", "protocol": "patient-wise", "images": 43, "cases": 7},
            "intervals": {"image": {}, "patient": {}}}


def test_the_baselines_are_named_only_where_they_were_scored():
    """A single-split fields run had no baselines; its page still said 'next to the baselines' and how they
    were fitted, with only a model column."""
    baselines = {"colour_texture": {"name": "colour/texture", "intervals": {}}}
    assert performance.intervals_title({**HELD_OUT, "baselines": baselines}).endswith("next to the baselines")
    assert "baseline" not in performance.intervals_title(HELD_OUT)
    caption = performance.intervals_caption(HELD_OUT)
    assert "no baseline was scored" in caption and "the baselines are" not in caption
    assert "same test cases" in performance.intervals_caption({**HELD_OUT, "baselines": baselines})


def test_the_referral_figures_are_said_to_be_in_sample_with_intervals_and_patients():
    """The bundled model's 98.4% was 61 of 62 images chosen on the same pooled predictions, shown as '98.4% right'
    with no interval, no patients and no word that it is optimistic."""
    from core.app import referral_view
    from core.jsonfile import read_json
    from core.paths import DEFAULT_MODEL_DIR

    referral = read_json(DEFAULT_MODEL_DIR / "card.json")["thresholds"]["referral"]
    kept = referral_view.stored_predictions(DEFAULT_MODEL_DIR)
    caption = referral_view.referral_caption(referral, kept)
    assert "in-sample, so optimistic" in caption and "bootstrap over patients" in caption
    assert "695 of 757 images (92%) referred, the other 62 images, of 12 patients, 98.4% (95% CI " in caption
    counted = referral_view.referral_caption(referral)  # no predictions kept: the card's counts, a Wilson interval
    assert "the other 62 images 98.4% (95% CI 91.4%-99.7%) right" in counted and "Wilson" in counted
    assert "in-sample, so optimistic" in counted


def test_per_stage_and_per_magnification_figures_carry_intervals_and_patients():
    """The per-magnification table had no cases and no interval ('100X stage 1 accuracy 0.0000 ... images 1'),
    the per-stage table point values only. With the run's kept predictions every image-level accuracy is
    bootstrapped over patients; without them a Wilson interval says it takes the rows as independent."""
    from core.app import referral_view
    from core.jsonfile import read_json
    from core.paths import DEFAULT_MODEL_DIR, REPO

    metrics = read_json(DEFAULT_MODEL_DIR / "metrics.json")
    kept = referral_view.stored_predictions(DEFAULT_MODEL_DIR)
    stages = performance.metrics_table(metrics, kept).set_index("what")
    benign = stages.loc["Stage 2: benign subtypes (true class given)"]
    assert benign["accuracy, 95% CI"].startswith(f"{benign['accuracy']:.3f} (95% CI ") and benign["cases"] == 14
    assert (stages["interval"] == "bootstrap over patients").all()  # the per-case-and-type subtype row too (QA:
    # it fell back to a Wilson interval over its rows, said "patients not kept", though they were)
    assert stages.filter(like="Patient level: 8", axis=0)["accuracy, 95% CI"].item() == "0.367 (95% CI 0.240-0.510)"
    assert stages.loc["Stage 1: benign vs malignant", "accuracy, 95% CI"] == "0.848 (95% CI 0.745-0.930)"
    by = performance.per_magnification_table(metrics, kept).set_index("magnification")
    assert by.loc["100X", "images"] == 31 and by.loc["100X", "cases"] == 14
    assert by.loc["100X", "stage 1 accuracy, 95% CI"].startswith("0.710 (95% CI ")
    assert set(by["interval"]) == {"bootstrap over patients"}
    small = REPO / "models" / "small-cnn"
    alone = performance.per_magnification_table(read_json(small / "metrics.json")).set_index("magnification")
    assert alone.loc["100X", "cases"] == 1 and alone.loc["100X", "stage 1 accuracy, 95% CI"] == "0.000 (95% CI 0.000-0.793)"
    assert alone.loc["100X", "interval"].startswith("Wilson")


def test_the_uncertainty_caption_states_the_cards_rule_and_when_the_flag_does_not_separate_errors():
    """The bundled small CNN flags 144 of 188 test images, wrong 18% of the time against 36% for the rest: shown
    without comment. The rule text is the card's (the one predictions apply), with the evaluation's figures."""
    from core.app import referral_view
    from core.jsonfile import read_json
    from core.paths import REPO

    small = REPO / "models" / "small-cnn"
    uncertainty = read_json(small / "metrics.json")["uncertainty"]
    in_card = read_json(small / "card.json")["thresholds"]["uncertainty"]
    caption = referral_view.uncertainty_caption({**uncertainty, "rule": "another rule"}, in_card)
    assert in_card["rule"] in caption and "another rule" not in caption
    assert "144 flagged" in caption and "18.1% (95% CI " in caption and "188 images of 9 patients" in caption
    assert "The flag does not separate errors on the test images" in caption
    separating = {**uncertainty, "on_split": {**uncertainty["on_split"], "stage1_error_rate_flagged": 0.5}}
    assert "does not separate" not in referral_view.uncertainty_caption(separating, in_card)


def test_a_chart_title_is_short_and_its_data_size_is_a_wrapped_subtitle():
    """The confusion-matrix and ROC titles were cut off exactly where the data size is ('Stage 1 (out-of-fold,
    patient-wise 5-fold cross-validation, pooled o...')."""
    from core.app import performance
    from core.jsonfile import read_json
    from core.paths import DEFAULT_MODEL_DIR

    metrics = read_json(DEFAULT_MODEL_DIR / "metrics.json")
    title = performance.chart_title("Stage 1", metrics["stage1"])
    lines = title["subtitle"]["text"].split("<br>")
    assert title["text"] == "Stage 1" and "757 images, 46 cases" in " ".join(lines)
    assert len(lines) > 1 and all(len(line) <= performance.SUBTITLE_CHARACTERS for line in lines)


def test_a_wide_table_gives_each_text_column_room_for_its_longest_entry():
    """The headline's 'computed on', the calibration 'protocol' and the published results' 'value' with its 95%
    interval were cut: the widget sizes a column from its first rows."""
    from core.app import performance
    from core.jsonfile import read_json
    from core.paths import DEFAULT_MODEL_DIR, REFERENCE_RESULTS

    metrics = read_json(DEFAULT_MODEL_DIR / "metrics.json")
    reference, _ = performance.reference_results(REFERENCE_RESULTS)
    for frame in (performance.intervals_table(metrics), performance.comparison_table(reference, metrics, {"name": "m"})):
        widths = performance.text_widths(frame)
        for column, width in widths.items():
            longest = max(len(str(column)), *(len(str(v)) for v in frame[column]))
            assert width >= min(performance.WIDEST_COLUMN, performance.PIXELS_PER_CHARACTER * longest), column
    assert {"computed on", "model"} <= set(performance.text_widths(performance.intervals_table(metrics)))
    assert "value" in performance.text_widths(performance.comparison_table(reference, metrics, {"name": "m"}))


def test_an_accuracy_whose_bootstrap_had_no_spread_says_it_is_a_wilson_interval_over_its_patients():
    """QA retrain #5: the Retrain table read "Stage 1 ... 1.000 (95% CI 1.000-1.000)" for 8 of 8 patients right,
    labelled "bootstrap over patients". The interval is now Wilson's over those patients, and the table says so."""
    import pandas as pd

    from core.evaluation.intervals import headline_intervals

    patients = pd.DataFrame({"case": [f"c{i}" for i in range(8)], "label": ["benign", "malignant"] * 4,
                             "p_malignant": [0.1, 0.9] * 4, "subtype": ["adenosis", "ductal_carcinoma"] * 4})
    patients = patients.assign(pred_label=patients["label"], pred_subtype=patients["subtype"])
    data = {**HELD_OUT["data"], "level": "patient"}
    metrics = {**HELD_OUT, "intervals": {"image": {}, "patient": headline_intervals(patients, "patient")},
               "patient": {"stage1": {"accuracy": 1.0, "data": data}}}
    row = performance.metrics_table(metrics).set_index("what").loc["Patient level: benign vs malignant"]
    assert row["accuracy, 95% CI"] == "1.000 (95% CI 0.676-1.000)"
    assert row["interval"].startswith("Wilson score interval over 8 patients")


def test_the_referral_caption_names_the_interval_that_was_given():
    """Its intervals were always said to be a bootstrap over patients, also where every resample agreed and the
    interval functions gave a Wilson interval over the patients instead."""
    from core.app import referral_view
    from core.jsonfile import read_json
    from core.paths import DEFAULT_MODEL_DIR

    referral = read_json(DEFAULT_MODEL_DIR / "card.json")["thresholds"]["referral"]
    kept = referral_view.stored_predictions(DEFAULT_MODEL_DIR)
    conf1, *_ = referral_view.stage_confidences(kept)
    perfect = kept.copy()  # every unreferred stage-1 call made right: its bootstrap over patients has no spread
    unreferred = conf1 >= referral["stage1"]["threshold"]
    perfect.loc[unreferred, "pred_label"] = perfect.loc[unreferred, "label"]
    caption = referral_view.referral_caption(referral, perfect)
    assert "95% intervals: " in caption and "Wilson score interval over" in caption.split("95% intervals: ")[1]


def test_a_rule_that_refers_every_image_names_no_interval_and_says_so_plainly():
    """QA stats 7c: with every image referred the caption read "the other 0 images, of 0 patients, n/a right"
    and still named "95% intervals: bootstrap over patients" for intervals that did not exist."""
    from core.app import referral_view
    from core.evaluation.referral import REFER_ALL
    from core.jsonfile import read_json
    from core.paths import DEFAULT_MODEL_DIR

    referral = read_json(DEFAULT_MODEL_DIR / "card.json")["thresholds"]["referral"]
    every = {**referral, **{stage: {**referral[stage], "threshold": REFER_ALL} for stage in ("stage1", "subtype")}}
    caption = referral_view.referral_caption(every, referral_view.stored_predictions(DEFAULT_MODEL_DIR))
    assert "stage 1: every one of the 757 images referred" in caption and "95% intervals" not in caption
    assert "0 patients" not in caption and "n/a right" not in caption


def _called(case: str, subtype: str, p_malignant: list[float]) -> list[dict]:
    """Held-out rows of one patient's images of `subtype`, stage 1 called at 0.5 (the other columns uniform)."""
    from core.data.labels import CLASS_OF_SUBTYPE, SUBTYPES

    return [{"case": case, "subtype": subtype, "label": CLASS_OF_SUBTYPE[subtype], "protocol": "patient-wise",
             "pred_label": "malignant" if p >= 0.5 else "benign", "pred_subtype": subtype, "split": "test",
             "p_malignant": p, "p_benign": 1 - p, **{f"{k}_{s}": 1 / 8 for s in SUBTYPES for k in ("p", "w")}}
            for p in p_malignant]


def test_stage_one_by_true_subtype_names_the_cancers_called_benign():
    """The headline figures average over subtypes, so a model that calls a mucinous carcinoma benign can still
    look good; the page lists stage 1's calls per true subtype, images and patients, and names the cancers
    it misses most."""
    import pandas as pd

    from core.app import held_out

    rows = pd.DataFrame(_called("1-1", "ductal_carcinoma", [0.9, 0.8, 0.7]) + _called("1-2", "ductal_carcinoma", [0.6, 0.9])
                        + _called("1-3", "mucinous_carcinoma", [0.2, 0.3, 0.1, 0.9]) + _called("1-4", "fibroadenoma", [0.4, 0.7]))
    table = held_out.stage1_by_subtype(rows).set_index("true subtype")
    assert list(table.index) == ["fibroadenoma", "ductal carcinoma", "mucinous carcinoma"]  # the labels' order
    assert table.loc["mucinous carcinoma", "images called the other class"] == 3
    assert table.loc["mucinous carcinoma", "patients called its class"] == "0 of 1"  # mean p(malignant) 0.375
    assert table.loc["ductal carcinoma", "patients called its class"] == "2 of 2"
    assert table.loc["ductal carcinoma", "images called its class, 95% CI"].startswith("100.0%")
    assert table.loc["fibroadenoma", "images called the other class"] == 1 and set(table["protocol"]) == {"patient-wise"}
    caption = held_out.stage1_by_subtype_caption(table.reset_index(), {"data": {"protocol": "patient-wise", "images": 11,
                                                                               "cases": 4}})
    assert "(patient-wise, 11 images of 4 patients)" in caption
    assert caption.endswith("Most often missed: mucinous carcinoma (3 of 4 images).")  # not the benign fibroadenoma
    assert held_out.stage1_by_subtype(None) is None


def test_the_headline_table_says_where_a_figure_has_no_interval_or_a_wilson_one():
    """The table's caption names the patient bootstrap for every figure; an AUC of 1.0 on four patients read
    "1.000 (95% CI 1.000-1.000)" under it. Each row now says which interval the model's figure has."""
    import pandas as pd

    from core.evaluation.intervals import headline_intervals

    patients = pd.DataFrame({"case": [f"c{i}" for i in range(4)], "label": ["benign", "malignant"] * 2,
                             "p_malignant": [0.1, 0.9] * 2, "subtype": ["adenosis", "ductal_carcinoma"] * 2})
    patients = patients.assign(pred_label=patients["label"], pred_subtype=patients["subtype"])
    metrics = {**HELD_OUT, "intervals": {"image": {}, "patient": headline_intervals(patients, "patient")}}
    table = performance.intervals_table(metrics).set_index(["level", "metric"])
    auc = table.loc[("patient", "stage-1 ROC AUC")]
    assert auc["model"] == "1.000 (no spread over the patient resamples)"
    assert auc["model's interval"].startswith("no interval: all ")
    assert table.loc[("patient", "stage-1 accuracy"), "model's interval"].startswith("Wilson score interval over 4")
    assert table.loc[("image", "stage-1 accuracy"), "model's interval"] == ""  # no figure: no method claimed


def test_the_apps_rows_beside_the_published_results_carry_the_limited_data_badge():
    """The app's own rows sat above the papers' 0.93 and "up to 97%" named by the bare model name: no LIMITED DATA
    label, no patient count. They now carry the badge every prediction carries (registry.model_badge)."""
    from core.app.registry import model_badge
    from core.jsonfile import read_json
    from core.model.folders import read_card
    from core.paths import DEFAULT_MODEL_DIR, REFERENCE_RESULTS

    card = read_card(DEFAULT_MODEL_DIR)
    reference, _ = performance.reference_results(REFERENCE_RESULTS)
    table = performance.comparison_table(reference, read_json(DEFAULT_MODEL_DIR / "metrics.json"), card)
    ours = table[table["source"] == "this app (active model)"]
    assert len(ours) >= 4 and set(ours["model"]) == {model_badge(card)}
    assert ours["model"].iloc[0].startswith("LIMITED DATA · ") and "46 patients" in ours["model"].iloc[0]
    assert not table[table["source"] != "this app (active model)"]["model"].str.contains("LIMITED DATA").any()
