"""Retrain's "active model" is the admin's own session's: the button and its message say so, and name the way
to the server's default (make-default, README "Promoting a trained model")."""

import pytest
from streamlit.testing.v1 import AppTest

from core.app import jobs
from tests.app_helpers import (
    APP,
    APP_TIMEOUT,
    app_like_the_server,
    finished_job,
    make_model_folder,
    open_retrain,
    texts,
)


@pytest.fixture
def app(tmp_path, monkeypatch):
    default = make_model_folder(tmp_path / "models" / "default", demo=True)
    app_like_the_server(monkeypatch, tmp_path / "models", default, tmp_path / "runs")
    run = finished_job(tmp_path / "runs", "candidate", {"status": "completed"})
    make_model_folder(run / "model", demo=False, name="candidate")
    yield open_retrain(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run())
    jobs.clear_job(tmp_path / "runs")


def test_making_a_run_the_active_model_says_it_is_for_this_session_only(app):
    """"Make this the active model" changed only the admin's session and said "This model is the active model."
    as if the pathologists now used it; nothing said how a run reaches them."""
    [button] = [b for b in app.button if b.key == "adopt_model"]
    assert "my session" in button.label
    assert button.help.startswith("For your session only: other users, and every session that starts later, keep "
                                  "the server's default model.")
    assert "`python -m core make-default --from-run runs/NAME-cv --force`" in button.help
    assert "--pipeline fields --folds 5" in button.help  # make-default installs a cross-validation's final model
    button.click().run()
    assert not app.exception
    assert "Your session's only: other users and new sessions keep the server's default model" in texts(app.success)


def test_a_cross_validated_run_is_named_as_the_one_make_default_installs(tmp_path, monkeypatch):
    """A cross-validation started on Retrain (k fold models, then one on every patient) is what make-default
    installs: the help names this run, not a second cross-validation to run first."""
    default = make_model_folder(tmp_path / "models" / "default", demo=True)
    app_like_the_server(monkeypatch, tmp_path / "models", default, tmp_path / "runs")
    run = finished_job(tmp_path / "runs", "cv-run", {"status": "completed"})
    make_model_folder(run / "model", demo=False, name="cv-run")
    (run / "cv.json").write_text("{}")
    app = open_retrain(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run())
    try:
        [button] = [b for b in app.button if b.key == "adopt_model"]
        assert f"`python -m core make-default --from-run {run} --force`" in button.help
        assert "--folds 5" not in button.help
    finally:
        jobs.clear_job(tmp_path / "runs")
