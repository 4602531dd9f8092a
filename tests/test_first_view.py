"""What a pathologist sees first on Diagnose must not mislead (issue 20).

A photo gets no call anywhere (page, CLI, CSV, PDF, case call) while real tissue is still analysed;
the uncertainty flag's figures tell its two numbers apart and it flags a stated share of
validation; a subtype head below the colour/texture baseline is demoted; the case table shows its
refer reasons, heat maps carry a colour scale and no padding frame; a corrupt file's row is empty,
not "None"; the PDF has patient, specimen, reviewer and sign-off fields and unbroken headers.
"""

import io
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data as skimage_data
from streamlit.testing.v1 import AppTest

from core.app import pdf_report, registry, report, service
from core.data.histology import NOT_ANALYSED, histology_check
from tests.app_helpers import APP, APP_TIMEOUT, REPO, app_like_the_server, make_model_folder, png_bytes, texts

REAL = REPO.parent / "shared" / "breakhis" / "real"
# The bundled model's measured figures (models/default/card.json): subtype macro-F1 below the
# colour/texture baseline's on the same 188 test images of 9 patients.
WEAK_SUBTYPES = {"subtype_macro_f1": 0.02, "data": {"images": 188, "cases": 9},
                 "baselines": {"colour_texture": {"subtype_macro_f1": 0.17}}}


def astronaut() -> bytes:
    return png_bytes(skimage_data.astronaut())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("first-view") / "weak-subtypes", demo=False,
                             name="weak-subtypes", metrics=WEAK_SUBTYPES)


@pytest.fixture(scope="module")
def predictor(model_dir):
    from core.model.loading import load_predictor

    return load_predictor(model_dir)


@pytest.fixture(scope="module")
def sample(samples_dir):
    path = sorted(samples_dir.rglob("SOB_B_A-14-22549AB-40-*.png"))[0]
    return path.name, path.read_bytes()


# --- a photo is not analysed, real tissue is ----------------------------------------------------

@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea", "immunohistochemistry", "retina"])
def test_photos_and_other_stains_are_not_histology(photo):
    verdict = histology_check(np.asarray(getattr(skimage_data, photo)())[..., :3])
    assert not verdict.analysable, verdict


def test_real_tissue_is_never_refused():
    paths = sorted(REAL.rglob("*.png"))[::8]  # every 8th of the 757 real images, all patients' sources
    assert len(paths) > 80
    refused = {p.name: v.reason for p in paths if not (v := histology_check(np.asarray(Image.open(p).convert("RGB")))).analysable}
    assert refused == {}


def test_a_photo_gets_no_call_no_heat_map_and_no_case_contribution(predictor, sample):
    results = service.diagnose_items(predictor, [sample, ("astronaut.png", astronaut()), ("broken.png", b"x")])
    photo = results[1]
    assert photo.error is None and not photo.ok and photo.prediction is None and photo.gradcam is None
    assert "not H&E pink/purple" in photo.not_histology
    table = report.results_table(results, registry.model_badge(predictor.card))
    row = table.set_index("file").loc["astronaut.png"]
    assert row["call"] == NOT_ANALYSED and row["subtype"] == "" and row["p_malignant"] == ""
    assert row["reasons"] == photo.not_histology
    cases = report.case_calls(results)
    assert cases["images"].sum() == 1  # only the real sample counts


def test_the_cli_prints_not_analysed_for_a_photo(tmp_path, model_dir):
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(astronaut())
    done = subprocess.run([sys.executable, "-m", "core", "predict", str(photo), "--model", str(model_dir)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 3, done.stderr[-2000:]  # no input got a call; not H&E is no failure
    line = [l for l in done.stdout.splitlines() if l.startswith(f"{photo}\t")][0]
    assert f"\t{NOT_ANALYSED} (colours are not H&E" in line
    assert "benign" not in line and "malignant" not in line and "confidence" not in line


# --- uncertainty figures and their threshold ----------------------------------------------------

def test_the_uncertainty_threshold_flags_a_stated_share_of_validation():
    from core.evaluation.thresholds import UNCERTAIN_SHARE, uncertainty_threshold

    rng = np.random.default_rng(0)
    spread = rng.exponential(0.002, 400)
    wrong = rng.random(400) < 0.3  # errors everywhere: Youden's J picked a tiny spread here
    table = pd.DataFrame({"uncertainty": spread, "label": "benign",
                          "pred_label": np.where(wrong, "malignant", "benign"), "case": "1-1", "protocol": "patient-wise"})
    rule = uncertainty_threshold(table, "test-time views")
    flagged = (spread > rule["p_malignant_spread"]).mean()
    assert abs(flagged - UNCERTAIN_SHARE) < 0.01 and rule["flagged_share_on_validation"] == pytest.approx(flagged)
    assert f"{UNCERTAIN_SHARE:.0%} most uncertain validation images" in rule["rule"]


def test_an_uncertainty_refer_reason_tells_its_two_figures_apart(predictor, sample):
    rgb = np.asarray(Image.open(io.BytesIO(sample[1])).convert("RGB"))
    outputs = predictor.probabilities([rgb], tta=True)
    spread = predictor.interpret(outputs, 0.5, tta=True)[0].uncertainty["p_malignant_spread"]
    assert 0 < spread < 0.05  # an untrained model: tiny spreads, the case the issue saw
    kept = predictor.uncertainty_threshold
    try:
        predictor.uncertainty_threshold = spread * 0.9
        reasons = predictor.interpret(outputs, 0.5, tta=True)[0].refer_reasons
    finally:
        predictor.uncertainty_threshold = kept
    [reason] = [r for r in reasons if "spread" in r]
    shown, limit = map(float, re.search(r"spread ([0-9.e-]+) > ([0-9.e-]+)", reason).groups())
    assert shown > limit and shown == pytest.approx(spread, rel=0.01)


def test_an_uncertainty_refer_reason_says_what_disagrees_in_plain_words_first(predictor, sample):
    """It read "test-time views disagree (p(malignant) spread 0.0123 > 0.0110)": the views are counted and said
    to be the model's views of this image, disagreeing about malignancy; the figures follow, unchanged."""
    rgb = np.asarray(Image.open(io.BytesIO(sample[1])).convert("RGB"))
    outputs = predictor.probabilities([rgb], tta=True)
    uncertainty = predictor.interpret(outputs, 0.5, tta=True)[0].uncertainty
    kept = predictor.uncertainty_threshold
    try:
        predictor.uncertainty_threshold = uncertainty["p_malignant_spread"] * 0.9
        reasons = predictor.interpret(outputs, 0.5, tta=True)[0].refer_reasons
    finally:
        predictor.uncertainty_threshold = kept
    [reason] = [r for r in reasons if "spread" in r]
    assert reason.startswith(f"the model's {uncertainty['views']} views of this image disagree about malignancy (")
    assert uncertainty["views"] > 1 and "test-time views" not in reason
    assert re.search(r"\(p\(malignant\) spread [0-9.e-]+ > [0-9.e-]+\)$", reason)
    from core.model.predict import disagreeing

    assert disagreeing({"source": "ensemble members", "views": 3}) == "the ensemble's 3 models"


# --- subtype demotion ---------------------------------------------------------------------------

def test_a_subtype_head_below_the_baseline_is_demoted_everywhere(predictor, sample):
    reliable, note = registry.subtype_reliability(predictor.card)
    assert not reliable and "0.02" in note and "0.17" in note and "188 test images of 9 patients" in note
    # A cross-validated card's figures are out-of-fold, and say so (not "test").
    from core.jsonfile import read_json
    from core.paths import DEFAULT_MODEL_DIR

    bundled = read_json(DEFAULT_MODEL_DIR / "card.json")
    assert "out-of-fold images of" in registry.subtype_reliability(bundled)[1]
    assert registry.measured_accuracy(bundled).endswith("patients, each tested out of fold)")
    assert registry.subtype_reliability({"metrics": {**WEAK_SUBTYPES, "subtype_macro_f1": 0.3}})[0]
    results = service.diagnose_items(predictor, [sample])
    table = report.results_table(results, "badge", subtype_reliable=False)
    assert table["subtype"].iloc[0].startswith("not reliable for this model (most probable: ")
    cases = report.case_calls(results, subtype_reliable=False)
    assert cases["subtype"].iloc[0].startswith("not reliable for this model")
    line = results[0].prediction.summary(subtype_reliable=False)
    # The joint figure of an unreliable subtype beside the call ("confidence 0.33" by a 0.94 call) is left out;
    # of a reliable one it is named as what it is.
    assert "subtype not reliable for this model" in line and "confidence" not in line and "p(class and" not in line
    assert "| p(class and subtype) " in results[0].prediction.summary(subtype_reliable=True)


def test_an_ensemble_of_members_with_unreliable_subtypes_does_not_show_its_subtype_as_a_finding(tmp_path):
    """An ensemble of members evaluated on different patients has no evaluation of its own: its subtype
    was shown as a finding ('Adenosis (p 0.30 within benign)') although both members' subtype heads
    score below the colour/texture baseline. It keeps their figures and is demoted like them."""
    from core.model.folders import save_ensemble
    from core.paths import DEFAULT_MODEL_DIR
    from tests.conftest import WHOLE_FIELD_MODEL

    card = json.loads((save_ensemble([DEFAULT_MODEL_DIR, WHOLE_FIELD_MODEL], tmp_path / "ens") / "card.json").read_text())
    assert all(m["subtype_figures"]["model"] < m["subtype_figures"]["colour_texture_baseline"] for m in card["members"])
    reliable, note = registry.subtype_reliability(card)
    assert not reliable and "a member's subtype macro-F1 is below its colour/texture baseline" in note
    mixed = {**card, "members": [card["members"][0], {**card["members"][1], "subtype_figures": {}}]}
    assert not registry.subtype_reliability(mixed)[0]  # a member not compared: nothing shows the ensemble's is better
    better = [{**m, "subtype_figures": {"model": 0.4, "colour_texture_baseline": 0.2}} for m in card["members"]]
    assert registry.subtype_reliability({**card, "members": better})[0]


def test_a_subtype_never_compared_with_the_baseline_is_not_shown_as_a_finding():
    """A card without the colour/texture baseline's figures (a single-split fields run had none) was shown as
    reliable ('subtype accuracy not compared with a baseline'): its subtype printed as the finding at macro-F1 0.03."""
    reliable, note = registry.subtype_reliability({"metrics": {"subtype_macro_f1": 0.031, "data": {"images": 43}}})
    assert not reliable and note.startswith("subtype: not reliable for this model") and "not compared" in note
    assert not registry.subtype_reliability({})[0]


def test_the_performance_page_calls_cross_validated_figures_out_of_fold_not_test():
    """The bundled model's metrics are pooled out-of-fold predictions stored with split 'test': every
    caption, table and figure title of the Model performance page says out-of-fold; a stage-1 patient row is a
    patient (46 of 46, as the app calls a case), the patient subtype row a case and tumour type (49 of 46 cases)."""
    from core.app import performance, registry
    from core.evaluation.figures import confusion_figure
    from core.jsonfile import read_json
    from core.paths import DEFAULT_MODEL_DIR

    metrics = read_json(DEFAULT_MODEL_DIR / "metrics.json")
    assert metrics["data"]["split"] == "test" and "out-of-fold" in metrics["data"]["protocol"]
    line = performance.protocol_line(metrics)
    assert line.startswith("Measured on patients each model never saw during training (") and "test split" not in line
    assert "pooled out-of-fold" in line and "757 images from 46 cases" in line
    assert "each fold's training patients" in performance.intervals_caption(metrics)
    assert set(performance.metrics_table(metrics)["split"]) == {"out-of-fold"}
    title = confusion_figure(metrics["stage1"], "Stage 1").layout.title.text
    assert "out-of-fold" in title and "test split" not in title
    table = performance.intervals_table(metrics).set_index(["level", "metric"])["computed on"]
    assert table["patient", "stage-1 accuracy"] == "46 patients (one row each)"
    assert table["patient", "subtype macro-F1 (8 classes)"] == "46 patients (49 patient-and-tumour-type groups)"
    assert metrics["intervals"]["patient"]["stage1_accuracy"]["value"] == 39 / 46
    assert "(95% CI 0.74-0.93, 46 patients, each tested out of fold)" in registry.measured_accuracy(
        read_json(DEFAULT_MODEL_DIR / "card.json"))
    held_out = {"data": {"split": "test", "protocol": "patient-wise", "images": 9, "cases": 2}}
    assert performance.protocol_line(held_out).startswith("Measured on the test split, patient-wise protocol,")
    assert "same test cases" in performance.intervals_caption({**held_out, "baselines": metrics["baselines"]})


# --- heat maps ----------------------------------------------------------------------------------

def test_a_padding_frame_is_left_out_of_the_heat_map_and_said():
    from core.model.heatmap import to_heatmap

    cam = np.zeros((16, 16), np.float32)
    cam[:, 0] = cam[:, -1] = 5.0  # a frame, as zero padding draws on real stage-2 maps
    cam[6:9, 6:9] = 1.0  # a weak tissue finding
    heatmap, note = to_heatmap(cam, (160, 160))
    assert "bright frame along the image border" in note
    assert heatmap[:, :8].max() < heatmap[70:90, 70:90].max()  # the finding, not the border, is brightest
    inner = np.zeros((16, 16), np.float32)
    inner[3:6, 10:13] = 1.0
    unchanged, note = to_heatmap(inner, (160, 160))
    assert note == "" and unchanged.max() == pytest.approx(1.0)


def test_the_colour_bar_runs_from_the_low_to_the_high_colour():
    from core.model.heatmap import colorize, colour_bar

    bar = colour_bar(256, 10)
    assert bar.shape == (10, 256, 3)
    assert (bar[0, 0] == colorize(np.zeros((1, 1)))[0, 0]).all() and (bar[0, -1] == colorize(np.ones((1, 1)))[0, 0]).all()


# --- the PDF ------------------------------------------------------------------------------------

def test_the_pdf_has_identification_and_sign_off_fields_and_whole_headers(predictor, sample):
    from pypdf import PdfReader

    results = service.diagnose_items(predictor, [sample, ("astronaut.png", astronaut())])
    overlays = {results[0].digest: (results[0].display, results[0].display)}
    cases = report.case_calls(results)
    details = pdf_report.ReportDetails(patient_id="P-0042", specimen_id="S-17-0311", reviewer="Dr. Ana Lima")
    pdf = pdf_report.build_report(results, overlays, cases, registry.describe_model(predictor.card), details)
    first = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    assert "P-0042" in first and "S-17-0311" in first and "Dr. Ana Lima" in first
    assert "sign-off" in first and "Signed:" in first and "Date:" in first
    header = next(line for line in first.splitlines() if line.startswith("case images"))
    assert header.split() == ["case", "images", "call", "subtype", "p_malignant", "confidence", "refer", "for",
                              "review", "reasons"]  # no word broken across lines ("p_malignan t")
    assert f"astronaut.png: {NOT_ANALYSED}" in first
    blank = pdf_report.build_report(results, overlays, cases, registry.describe_model(predictor.card))
    assert "patient id ____" in PdfReader(io.BytesIO(blank)).pages[0].extract_text()


# --- the page -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app_env(model_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, model_dir.parent, model_dir, runs)
        yield


def test_the_diagnose_page_first_view(app_env, sample):
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/diagnose.py").run()
    files = [(sample[0], sample[1], "image/png"), ("astronaut.png", astronaut(), "image/png"),
             ("broken.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")]
    app.file_uploader(key="uploads").set_value(files).run()
    assert not app.exception
    assert f"astronaut.png: {NOT_ANALYSED}" in texts(app.warning)
    headlines = [m for m in texts(app.markdown).splitlines() if " · magnification " in m]
    assert len(headlines) == 1 and "subtype not reliable for this model" in headlines[0]  # the photo has none
    # each stage with its own probability, not p(class) x p(subtype | class) beside the class call
    assert re.search(r"\*\*(Benign|Malignant) \(p 0\.\d\d\)\*\*", headlines[0]) and "confidence" not in headlines[0]
    assert "astronaut.png" not in texts(app.markdown)  # no result card, no heat map for the photo
    table = next(frame.value for frame in app.dataframe if "file" in frame.value.columns)
    assert list(table.columns[:len(report.SHOWN_FIRST)]) == report.SHOWN_FIRST  # refer reasons not off-screen
    assert not table.isna().any().any() and "None" not in table.astype(str).to_numpy()
    assert "Heat-map colour scale" in texts(app.caption)


def test_the_performance_page_shows_the_calibrations_measured_in_sample_effect_or_says_it_was_not_measured(
        monkeypatch, tmp_path):
    """The bundled model's temperatures were fitted on its pooled out-of-fold predictions: the page shows ECE and
    Brier before and after per head (measured on those same predictions, and says so), names the temperature at
    the search cap, and a model whose calibration was not measured gets a sentence, not a missing section."""
    from core.app import performance
    from core.jsonfile import read_json
    from core.paths import DEFAULT_MODEL_DIR
    from tests.app_helpers import app_on_bundled_models, tables, texts

    calibration = read_json(DEFAULT_MODEL_DIR / "card.json")["calibration"]
    table = performance.calibration_table(calibration).set_index("head")
    assert set(table["split"]) == {"out-of-fold"} and table.loc["stage1", "images"] == 757
    assert (table.loc["stage1", "ECE before"], table.loc["stage1", "ECE after"]) == (0.0669, 0.0464)
    assert (table.loc["stage1", "Brier before"], table.loc["stage1", "Brier after"]) == (0.2521, 0.2484)
    assert table.loc["benign_subtype", "temperature"] == 20.0 and table.loc["benign_subtype", "images"] == 206
    app = app_on_bundled_models(monkeypatch, tmp_path / "runs", "default")
    app.switch_page("pages/performance.py").run()
    assert not app.exception and "Calibration" in texts(app.subheader)
    caption = texts(app.caption)
    assert "in-sample: measured on the same pooled out-of-fold" in caption.lower() and "benign_subtype at the edge of the search range 0.05-20" in caption
    assert any("Reliability (out-of-fold" in chart.proto.spec for chart in app.get("plotly_chart"))
    [by_subtype] = tables(app, "true subtype")  # stage 1 per true subtype, from the kept out-of-fold predictions
    assert len(by_subtype) == 8 and by_subtype["images"].sum() == 757 and "Most often missed: " in caption
    unmeasured = {k: v for k, v in calibration.items() if k not in ("measured", "measured_note")}
    assert "was not measured for this model" in performance.calibration_caption(unmeasured)


def test_readme_does_not_say_the_subtype_refit_cured_a_head_whose_temperature_is_still_at_the_cap():
    """README's 'Subtype refit' said the refitted heads are not confidently wrong (the old ones' temperature was
    20); the bundled benign head's fitted temperature is still the search cap, and README must say so."""
    from core.jsonfile import read_json
    from core.model.calibration import TEMPERATURE_RANGE
    from core.paths import DEFAULT_MODEL_DIR, REPO

    benign = read_json(DEFAULT_MODEL_DIR / "card.json")["calibration"]["temperatures"]["benign_subtype"]
    assert benign >= 0.999 * TEMPERATURE_RANGE[1]
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "a convex, regularised, class-balanced fit on the same features is not." not in readme
    assert f"its temperature is still at the search cap of {TEMPERATURE_RANGE[1]:g}" in readme


def test_the_cross_validation_table_states_its_data_size_and_the_stored_predictions_name_their_fold():
    """The CV table's caption names the images and patients, per fold; the bundled model's out-of-fold predictions
    carry the fold that predicted them, agreeing with cv.json's per-fold sizes (so per-fold figures can be checked)."""
    from core.app import performance
    from core.jsonfile import read_json
    from core.paths import DEFAULT_MODEL_DIR

    cv = read_json(DEFAULT_MODEL_DIR / "cv.json")
    caption = performance.cross_validation_caption(cv)
    assert "5 folds, 757 images of 46 patients" in caption and "134 images / 10 patients" in caption
    assert "not recorded" in performance.cross_validation_caption({"mean_std": cv["mean_std"]})
    oof = pd.read_csv(DEFAULT_MODEL_DIR / "oof_predictions.csv")
    per_fold = cv["per_fold"]["model"]
    assert oof["fold"].value_counts().sort_index().tolist() == [f["test_images"] for f in per_fold]
    assert oof.groupby("fold")["case"].nunique().tolist() == [f["test_cases"] for f in per_fold]


def test_the_risk_coverage_plot_puts_the_subtype_on_the_share_of_all_images():
    """The subtype's threshold is chosen among the 62 images stage 1 does not refer: on the plot's one axis (share
    of all 757 images not referred) its chosen point is 62/757, not 1.0, and the legend says so; a card without
    the counts keeps the curve's own basis and says which."""
    from core.app import referral_view
    from core.jsonfile import read_json
    from core.paths import DEFAULT_MODEL_DIR

    referral = read_json(DEFAULT_MODEL_DIR / "card.json")["thresholds"]["referral"]
    points = {p["stage"]: p for p in referral_view.chosen_points(referral)}
    assert points["subtype"]["x"] == pytest.approx(62 / 757) == pytest.approx(points["stage1"]["x"])
    assert points["subtype"]["y"] == pytest.approx(50 / 62)
    assert points["subtype"]["name"] == "chosen subtype threshold 0.2938 (8.2% of all images kept)"
    curves = referral_view.risk_coverage_frame(referral)
    subtype = curves[curves["stage"].str.startswith("subtype")]
    assert subtype[referral_view.RISK_X].max() == pytest.approx(62 / 757)
    assert set(curves["stage"]) == {"stage 1", "subtype (stage 1 and subtype not referred)"}
    older = {**referral, "subtype": {k: v for k, v in referral["subtype"].items() if k != "images"}}
    assert any("not of all" in stage for stage in referral_view.risk_coverage_frame(older)["stage"])
    assert "of the stage-1 unreferred" in {p["stage"]: p for p in referral_view.chosen_points(older)}["subtype"]["name"]
