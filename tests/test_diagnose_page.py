"""The Diagnose page through AppTest (a tiny untrained model at input 64): what it says of the bundled samples,
the captions of its heat maps, and the settings it keeps across a visit to another page."""

import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.app_helpers import APP, APP_TIMEOUT, app_like_the_server, make_model_folder, texts


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    """models/default (DEMO), whose kept split.csv lists two of the bundled samples as training images and a
    third as a test image."""
    from core.app import registry

    root = tmp_path_factory.mktemp("diagnose")
    default = make_model_folder(root / "models" / "default", demo=True)
    samples = list(registry.sample_items().values())
    pd.DataFrame({"path": [f"x/{p.name}" for p in samples[:3]] + ["x/other.png"],
                  "split": ["train", "train", "test", "train"]}).to_csv(default / "split.csv", index=False)
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, root / "models", default, root / "runs")
        yield {"default": default.resolve(), "samples": samples}


@pytest.fixture
def app(environment) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    return app.switch_page("pages/diagnose.py").run()


def test_the_bundled_samples_are_offered_as_training_images_where_the_model_learnt_from_them(app, environment):
    """They were offered as plain 'bundled BreakHis samples': a demo on its training images reads as accuracy."""
    samples = app.multiselect(key="samples")
    marked = [option for option in samples.options if option.endswith(" · training image")]
    assert [m.split(" · ")[1] for m in marked] == [p.name for p in environment["samples"][:2]]
    assert f"2 of the {len(samples.options)} bundled samples are training images of this model" in texts(app.caption)
    assert "not its accuracy" in texts(app.caption)


def test_every_bundled_sample_is_a_training_image_of_the_bundled_model():
    """Read from the data: the bundled cross-validation's final model learnt from every image its pooled
    out-of-fold predictions list, the 22 samples among them."""
    from core.app import registry
    from core.paths import DEFAULT_MODEL_DIR

    samples = registry.sample_items()
    learnt, note = registry.training_samples(samples, DEFAULT_MODEL_DIR)
    assert learnt == list(samples) and note.startswith(f"All {len(samples)} bundled samples are training images")
    assert registry.learnt_from(Path("/nonexistent")) is None


def test_the_stage_2_heat_map_caption_says_when_the_subtype_is_not_reliable(app):
    """It read 'Stage 2 Grad-CAM: Ductal carcinoma' beside a call that says the subtype is not reliable."""
    samples = app.multiselect(key="samples")
    samples.set_value([samples.options[0].removesuffix(" · training image")]).run()
    assert not app.exception
    captions = [caption for image in app.image for caption in image.captions]
    stage2 = [c for c in captions if c.startswith("Stage 2 Grad-CAM")]
    assert stage2 and all(c.startswith("Stage 2 Grad-CAM: subtype not reliable for this model (most probable: ")
                          for c in stage2), captions
    assert any(c.startswith("Stage 1 Grad-CAM: ") and "not reliable" not in c for c in captions), captions


def test_a_visit_to_another_page_keeps_the_referral_threshold_and_report_fields(app):
    """After Dataset and back, the own-threshold toggle was off, Patient id empty, and the results were shown
    with the model's thresholds without a word."""
    samples = app.multiselect(key="samples")
    samples.set_value([samples.options[0].removesuffix(" · training image")]).run()
    app.toggle(key="own_threshold").set_value(True).run()
    assert "The referral rule in force has changed" in texts(app.info)  # the user's own rule is now in force
    app.slider(key="threshold").set_value(0.7).run()
    app.text_input(key="report_patient").set_value("PT-42").run()
    app.text_input(key="report_reviewer").set_value("Dr Smith").run()
    app.slider(key="opacity").set_value(0.8).run()
    app.selectbox(key="method").set_value("gradcam++").run()
    app.selectbox(key="magnification").set_value("400X").run()
    rule = next(c.value for c in app.caption if c.value.startswith("Referral:"))
    assert "0.70" in rule and not app.exception
    app.switch_page("pages/dataset.py").run()
    app.switch_page("pages/diagnose.py").run()
    assert not app.exception
    assert app.toggle(key="own_threshold").value is True and app.slider(key="threshold").value == 0.7
    assert app.text_input(key="report_patient").value == "PT-42"
    assert app.text_input(key="report_reviewer").value == "Dr Smith"
    assert app.slider(key="opacity").value == 0.8 and app.selectbox(key="method").value == "gradcam++"
    assert app.selectbox(key="magnification").value == "400X"
    assert next(c.value for c in app.caption if c.value.startswith("Referral:")) == rule
    assert "The referral rule in force has changed" not in texts(app.info)  # the same rule: nothing to say
    app.toggle(key="own_threshold").set_value(False).run()
    assert "The referral rule in force has changed. Now: Referral:" in texts(app.info)


def test_a_threshold_reads_the_same_on_diagnose_and_model_performance():
    """The bundled stage-1 threshold read 0.9762 on Diagnose, 0.976 in Performance's text and 0.98 in its legend."""
    from core.app import referral_view
    from core.jsonfile import read_json
    from core.model.decisions import referral_rule, threshold_text
    from core.paths import DEFAULT_MODEL_DIR

    card = read_json(DEFAULT_MODEL_DIR / "card.json")
    referral = card["thresholds"]["referral"]
    stage1, subtype = (threshold_text(referral[stage]["threshold"]) for stage in ("stage1", "subtype"))
    assert stage1 == "0.9762" and subtype == "0.2938"
    texts_of_the_pages = [referral_rule(referral["stage1"]["threshold"], referral["subtype"]["threshold"], "card"),
                          referral_view.referral_caption(referral, referral_view.stored_predictions(DEFAULT_MODEL_DIR)),
                          " ".join(point["name"] for point in referral_view.chosen_points(referral))]
    for text in texts_of_the_pages:
        assert f" {stage1}" in text and f" {subtype}" in text, text


def test_the_test_time_augmentation_toggle_counts_the_views_the_uncertainty_is_measured_across(samples_dir):
    """It said 'average of 8 flips/rotations' beside 'spread ... across 24 test-time views' for the bundled model."""
    from core.app import report, service
    from core.model.loading import load_predictor
    from core.paths import DEFAULT_MODEL_DIR

    predictor = load_predictor(DEFAULT_MODEL_DIR)
    label, help_text = report.tta_label(predictor)
    sample = sorted(samples_dir.rglob("*.png"))[0]
    views = service.diagnose_items(predictor, [(sample.name, sample.read_bytes())], tta=True)[0]
    views = views.prediction.uncertainty["views"]
    assert views == 24 and label == f"Test-time augmentation ({views} views)" and f"{views} views averaged" in help_text


def test_the_uncertainty_is_said_in_plain_words_and_its_measures_are_in_the_tooltip(tmp_path, monkeypatch):
    """It read 'Uncertainty: p(malignant) spread 0.0123 across 8 test-time views (mutual information 0.00118 nats)':
    now whether the uncertainty is high or low comes first; the spread's and the mutual information's definitions
    are in the caption's tooltip."""
    folder = make_model_folder(tmp_path / "models" / "flagged", demo=True)
    card = json.loads((folder / "card.json").read_text())
    card["thresholds"] = {"uncertainty": {"p_malignant_spread": 1e-9, "rule": "chosen for this test"}}
    (folder / "card.json").write_text(json.dumps(card))
    app_like_the_server(monkeypatch, tmp_path / "models", folder, tmp_path / "runs")
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/diagnose.py").run()
    app.toggle(key="tta").set_value(True)
    samples = app.multiselect(key="samples")
    samples.set_value([samples.options[0]]).run()
    assert not app.exception
    [caption] = [c for c in app.caption if "uncertainty" in c.value.lower() and "test-time views" in c.value]
    assert caption.value.startswith("Model uncertainty is **high**: its 8 test-time views disagree (spread ")
    assert "chosen for this test" in caption.value
    assert "nats" not in caption.value and "mutual information" not in caption.value.lower()
    assert "standard deviation of p(malignant)" in caption.help and "nats" in caption.help


def test_a_slow_heat_map_method_says_how_slow_beforehand_and_while_it_draws(app, monkeypatch):
    """QA: Score-CAM for 3 images took ~10 s on 2 cores and the whole page greyed out without a word. A method that
    draws each image's maps anew says so under its choice, and a spinner names it while it draws; Grad-CAM, whose
    maps come with the diagnosis, neither."""
    import contextlib

    import streamlit

    said, real = [], streamlit.spinner

    @contextlib.contextmanager
    def spinner(text="", **kwargs):
        said.append(text)
        with real(text, **kwargs):
            yield

    monkeypatch.setattr(streamlit, "spinner", spinner)
    samples = app.multiselect(key="samples")
    samples.set_value([option.removesuffix(" · training image") for option in samples.options[:2]]).run()
    assert not app.exception and not [text for text in said if "heat maps" in text]
    assert "per image on this server" not in texts(app.caption)
    app.selectbox(key="method").set_value("scorecam").run()
    assert not app.exception
    assert ("Score-CAM draws each image's heat maps anew: a few seconds per image on this server, for 2 image(s) "
            "here.") in texts(app.caption)
    drawn = [text for text in said if text.startswith("Drawing the Score-CAM heat maps of ")]
    assert len(drawn) == 2 and all("a few seconds per image on this server" in text for text in drawn), said
    app.selectbox(key="method").set_value("gradcam++").run()
    assert "Grad-CAM++ draws each image's heat maps anew: up to about a second per image" in texts(app.caption)
