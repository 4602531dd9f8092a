"""The app's model setup when the environment is wrong (QA resil #4, #14): a GAN generator named as the
default model, a default or a model folder that is missing, and the Model performance page on such cards."""

import json

import pytest
from streamlit.testing.v1 import AppTest

from core.app import registry
from tests.app_helpers import (
    APP,
    APP_TIMEOUT,
    REPO,
    app_environment,
    app_like_the_server,
    app_on_bundled_models,
    app_with_models,
)


def card(folder, **fields):
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps({"name": folder.name, **fields}))
    return folder


@pytest.fixture
def roots(tmp_path, monkeypatch):
    models = tmp_path / "models"
    classifier = card(models / "cnn", backbone="small_cnn", hierarchy="hierarchical", input_size=64, sha256="0")
    generator = card(models / "gan", kind="gan_generator", image_size=64, latent_dim=8, subtypes=[], sha256="0")
    for key, value in app_environment(models, generator, tmp_path / "runs").items():
        monkeypatch.setenv(key, value)
    return {"models": models, "classifier": classifier, "generator": generator, "tmp": tmp_path}


def test_a_generator_as_the_default_model_is_never_offered_as_a_classifier(roots):
    assert registry.available_models() == [str(roots["classifier"].resolve())]
    [problem] = registry.model_setup_problems()
    assert "BREAKHIS_DEFAULT_MODEL" in problem and "points to a GAN generator" in problem


@pytest.mark.parametrize("default, said", [("missing", "Model folder not found"),
                                           ("cnn/card.json", "is a file of a model folder: pass its folder")])
def test_a_default_model_that_cannot_be_used_is_said_not_silently_replaced(roots, monkeypatch, default, said):
    monkeypatch.setenv("BREAKHIS_DEFAULT_MODEL", str(roots["models"] / default))
    assert registry.available_models() == [str(roots["classifier"].resolve())]
    [problem] = registry.model_setup_problems()
    assert problem.startswith("BREAKHIS_DEFAULT_MODEL") and said in problem


def test_model_folders_that_are_missing_or_a_file_are_said(roots, monkeypatch):
    (roots["tmp"] / "afile").write_text("x")
    monkeypatch.setenv("BREAKHIS_DEFAULT_MODEL", str(roots["classifier"]))
    monkeypatch.setenv("BREAKHIS_MODEL_DIRS", f"{roots['models']}:{roots['tmp'] / 'gone'}:{roots['tmp'] / 'afile'}")
    assert registry.model_setup_problems() == [
        f"BREAKHIS_MODEL_DIRS names a folder that was not found: {roots['tmp'] / 'gone'}",
        f"BREAKHIS_MODEL_DIRS names a file, not a folder: {roots['tmp'] / 'afile'}"]
    assert str(roots["tmp"] / "gone") in registry.no_model_text()


def test_model_performance_does_not_crash_on_a_generator_default(tmp_path, monkeypatch):
    """The bundled GAN as BREAKHIS_DEFAULT_MODEL: the page showed a traceback (training.split is a string)."""
    app = app_on_bundled_models(monkeypatch, tmp_path / "runs", "gan-default")
    app.switch_page("pages/performance.py").run()
    assert not app.exception, app.exception
    assert app.session_state["active_model"] != str((REPO / "models" / "gan-default").resolve())


@pytest.mark.parametrize("content", [None, b"\xff\xfe\x00garbage\x80" * 40, b"a,b\n1,2\n"])
def test_a_missing_or_damaged_reference_table_is_a_message(tmp_path, content):
    from core.app.performance import reference_results

    path = tmp_path / "reference_results.csv"
    if content is not None:
        path.write_bytes(content)
    table, problem = reference_results(path)
    assert table is None and problem.startswith("The published results table cannot be shown") and str(path) in problem
    assert reference_results(REPO / "assets" / "reference_results.csv")[1] is None


def test_model_performance_without_the_reference_table_shows_the_rest(tmp_path, monkeypatch):
    """assets/reference_results.csv missing: the page was a traceback below the model's figures."""
    app_like_the_server(monkeypatch, REPO / "models", REPO / "models" / "small-cnn", tmp_path / "runs")
    monkeypatch.setattr("core.paths.REFERENCE_RESULTS", tmp_path / "gone.csv")
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/performance.py").run()
    assert not app.exception, app.exception
    assert any("The published results table cannot be shown" in w.value for w in app.warning)
    assert any(h.value == "Metrics per stage and end to end" for h in app.subheader)


def test_run_files_of_another_shape_are_named_and_the_pages_keep_serving(tmp_path, monkeypatch):
    """QA resil #9: valid JSON of another shape in metrics.json / cv.json crashed Model performance and Compare."""
    import shutil

    bad = tmp_path / "models" / "bad"
    shutil.copytree(REPO / "models" / "small-cnn", bad)
    metrics = json.loads((bad / "metrics.json").read_text())
    broken = ("calibration", "data", "per_magnification", "uncertainty", "baselines", "intervals", "test_set")
    (bad / "metrics.json").write_text(json.dumps({**metrics, **dict.fromkeys(broken, "x")}))
    (bad / "cv.json").write_text(json.dumps({"protocol": 1, "folds": "x"}))
    shutil.copytree(REPO / "models" / "small-cnn", tmp_path / "models" / "good")
    app = app_with_models(monkeypatch, tmp_path / "models", bad, tmp_path / "runs")
    app.switch_page("pages/performance.py").run()
    assert not app.exception, app.exception
    warnings = "\n".join(w.value for w in app.warning)
    assert f"{bad / 'metrics.json'} has blocks of an unexpected shape" in warnings
    assert f"{bad / 'cv.json'} could not be used" in warnings
    assert any(h.value == "Metrics per stage and end to end" for h in app.subheader)
    app.switch_page("pages/compare.py").run()
    app.multiselect(key="compare_models").set_value(registry.available_models()).run()
    assert not app.exception, app.exception
    assert any("metrics.json has blocks of an unexpected shape" in w.value for w in app.warning)


def test_slide_folders_that_cannot_be_listed_are_said_on_the_slide_page(tmp_path, monkeypatch):
    """QA resil #14: a missing BREAKHIS_SLIDE_DIRS folder or a file there only reached the server log."""
    from core.app import slides

    (tmp_path / "afile").write_text("x")
    (tmp_path / "ok").mkdir()
    monkeypatch.setenv("BREAKHIS_SLIDE_DIRS", f"{tmp_path / 'gone'}:{tmp_path / 'afile'}:{tmp_path / 'ok'}")
    assert slides.slide_folder_problems() == [
        f"BREAKHIS_SLIDE_DIRS names a folder that was not found: {tmp_path / 'gone'}",
        f"BREAKHIS_SLIDE_DIRS names a file, not a folder: {tmp_path / 'afile'}"]
    assert slides.server_slides() == {}
    app = app_on_bundled_models(monkeypatch, tmp_path / "runs", "small-cnn")
    app.switch_page("pages/slide.py").run()
    assert not app.exception, app.exception
    assert any("names a folder that was not found" in w.value for w in app.warning)


def test_the_sidebar_says_the_default_model_setting_cannot_be_used(tmp_path, monkeypatch):
    """A generator (or a missing folder) as BREAKHIS_DEFAULT_MODEL: the app silently used another model."""
    app = app_on_bundled_models(monkeypatch, tmp_path / "runs", "gan-default")
    assert not app.exception, app.exception
    said = " ".join(w.value for w in app.sidebar.warning)
    assert "gan-default" in said  # single-user mode is the admin: the folder is named
