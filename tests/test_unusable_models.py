"""Model folders the app cannot use (QA pages #1, #2): a card that is valid JSON with one field of the wrong type,
and a model.keras missing or not matching its card. Neither may be made the active model, and no page crashes
on one that is already active (a saved setting, the default picked for a new session)."""

import json
import shutil

import pytest

from core.app import registry
from core.errors import ModelFolderError
from core.model.folders import card_untaught_classes, read_card
from tests.app_helpers import REPO, app_with_models, texts

PAGES = ("pages/performance.py", "pages/dataset.py", "pages/diagnose.py", "pages/compare.py")
WRONG = {"training": "oops", "evidence": 5, "metrics": [1], "calibration": "x", "thresholds": "x"}


def copy_with(folder, **fields):
    """A copy of the bundled small-cnn whose card has `fields` replaced (still valid JSON)."""
    shutil.copytree(REPO / "models" / "small-cnn", folder)
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps({**card, **fields}))
    return folder


@pytest.mark.parametrize("field, value", [*WRONG.items(), ("thresholds", {"uncertainty": "x"}),
                                          ("thresholds", {"case_malignant": "high"})])
def test_a_card_with_a_field_of_the_wrong_type_is_refused_naming_the_field(tmp_path, field, value):
    """read_card took any JSON object with the required keys: "training": "oops" passed, and the sidebar, Model
    performance, Dataset and Diagnose then crashed on it ('str' object has no attribute 'get')."""
    folder = copy_with(tmp_path / "m", **{field: value})
    with pytest.raises(ModelFolderError, match=f"wrong type \\('{field}"):
        read_card(folder)


@pytest.mark.parametrize("field, value", [(k, v) for k, v in WRONG.items() if k != "thresholds"])
def test_the_card_readers_do_not_crash_on_a_wrongly_typed_block(field, value):
    """describe_model and card_untaught_classes called .get on whatever the block held: a card made active
    before the check (a saved setting) crashed every page. The block now reads as not recorded."""
    card = {**json.loads((REPO / "models" / "small-cnn" / "card.json").read_text()), field: value}
    info = registry.describe_model(card)
    assert info["name"] == card["name"] and isinstance(registry.model_badge(card), str)
    assert card_untaught_classes(card) == card_untaught_classes({**card, field: None})


def test_a_wrongly_typed_card_is_not_made_active_and_no_page_crashes_on_it(tmp_path, monkeypatch):
    """Choosing such a model said 'cannot be used' but made it active anyway; Model performance, Dataset and
    Diagnose then showed Streamlit's error page until another model was chosen."""
    models = tmp_path / "models"
    good = copy_with(models / "good")
    bad = copy_with(models / "wrongtypes", training="oops", name="wrongtypes")
    app = app_with_models(monkeypatch, models, good, tmp_path / "runs")
    label = app.selectbox(key="model_picker").format_func(str(bad.resolve()))
    assert "(unusable: " in label and "'training' is text, not an object" in label
    app.selectbox(key="model_picker").set_value(str(bad.resolve())).run()
    assert not app.exception, app.exception
    assert app.session_state["active_model"] == str(good.resolve())
    said = texts(app.sidebar.error)
    assert "'training' is text, not an object" in said and "The active model was not changed" in said
    app.session_state["active_model"] = str(bad.resolve())  # made active before the check
    for page in PAGES:
        app.switch_page(page).run()
        assert not app.exception, (page, app.exception)
    app.switch_page("pages/performance.py").run()
    assert "'training' is text, not an object" in texts(app.error)


def test_a_model_with_missing_or_corrupt_weights_is_marked_unusable_and_not_made_active(tmp_path, monkeypatch):
    """Such a folder had the healthy copy's label and was made active without a word, Model performance showing
    its figures, while Compare and the README said it is not offered as the active model. The sidebar now makes
    Compare's check (core.model.folders.files_problem): labelled unusable, refused, never picked for a new session,
    and Model performance says so when it is already active."""
    models = tmp_path / "models"
    missing, truncated, good = (copy_with(models / name) for name in ("a-missing", "b-truncated", "c-good"))
    (missing / "model.keras").unlink()
    (truncated / "model.keras").write_bytes((good / "model.keras").read_bytes()[:1000])
    app = app_with_models(monkeypatch, models, missing, tmp_path / "runs")
    assert not app.exception, app.exception
    assert app.session_state["active_model"] == str(good.resolve())  # the default (missing) is skipped
    picker = app.selectbox(key="model_picker")
    assert picker.format_func(str(missing.resolve())).endswith(f"(unusable: {missing.resolve()} has a card but no "
                                                               "model.keras)")
    assert "model file does not match its card" in picker.format_func(str(truncated.resolve()))
    assert "unusable" not in picker.format_func(str(good.resolve()))
    for broken in (missing, truncated):
        app.selectbox(key="model_picker").set_value(str(broken.resolve())).run()
        assert not app.exception and app.session_state["active_model"] == str(good.resolve())
        assert "The active model was not changed" in texts(app.sidebar.error)
    app.session_state["active_model"] = str(truncated.resolve())  # e.g. truncated while it was active
    app.switch_page("pages/performance.py").run()
    assert not app.exception, app.exception
    assert "cannot be made active: " in texts(app.error) and "does not match its card" in texts(app.error)


def test_a_folder_with_an_unreadable_card_is_offered_as_a_classifier_only(tmp_path, monkeypatch):
    """QA pages #10: find_model_folders kept a folder whose card cannot be read for every kind asked, so the GAN
    gallery offered broken classifier folders as generators. Such a card counts as a classifier (a card that
    states no kind is one): listed once, in the sidebar, where it is labelled unusable."""
    from core.model.folders import CLASSIFIER, GENERATOR, find_model_folders
    from core.testing.apptest import app_environment

    models = tmp_path / "models"
    for name, text in {"gan": {"kind": "gan_generator"}, "cnn": {"kind": "classifier"}, "bad-card": "{broken",
                       "card-list": []}.items():
        (models / name).mkdir(parents=True)
        (models / name / "card.json").write_text(text if isinstance(text, str) else json.dumps(text))
    broken = [models / "bad-card", models / "card-list"]
    assert find_model_folders(models, kind=GENERATOR) == [models / "gan"]
    assert find_model_folders(models, kind=CLASSIFIER) == [*broken, models / "cnn"]
    assert find_model_folders(models) == [*broken, models / "cnn", models / "gan"]
    for key, value in app_environment(models, models / "cnn", tmp_path / "runs").items():
        monkeypatch.setenv(key, value)
    assert registry.generator_folders() == [str((models / "gan").resolve())]
    assert set(registry.available_models()) == {str(f.resolve()) for f in (*broken, models / "cnn")}
