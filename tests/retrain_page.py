"""What the Retrain page tests share: a models folder with a demo default, the page opened on it (no job left
behind after a test), and launching and polling a small job from the form. The two Retrain test modules each wrap
the two generators in four lines of fixtures (module-scoped environment, per-test app): pytest finds fixtures only
in the module or a conftest, fixtures imported into a module trip ruff's F811 at every test that names them, and
tests/conftest.py would offer `app` and `environment` to every file, where other modules define their own."""

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.app import jobs
from tests.app_helpers import APP, APP_TIMEOUT, app_like_the_server, make_model_folder, open_retrain

START = "FormSubmitter:retrain-Start training"


def retrain_environment(tmp_path_factory):
    """Yields {default, runs, root}: a demo default model, the app's environment pointed at it."""
    root = tmp_path_factory.mktemp("retrain")
    default = make_model_folder(root / "models" / "default", demo=True)
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, root / "models", default, root / "runs")
        yield {"default": str(default.resolve()), "runs": root / "runs", "root": root}


def retrain_app(environment):
    """Yields the Retrain page; afterwards no job is left running or recorded."""
    app = open_retrain(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run())
    yield app
    job = jobs.read_job(environment["runs"])
    if job is not None:  # never leave a training process behind, nor a job for the next test
        jobs.cancel_job(job, environment["runs"], force=True)
        deadline = time.time() + 30
        while jobs.is_alive(job) and time.time() < deadline:
            time.sleep(0.2)
        jobs.clear_job(environment["runs"])


def texts(elements) -> str:
    """The elements' text as the page wrote it, its escapes kept: these tests compare it with
    core.app.audit_glue.plain(...) of the expected words (tests.app_helpers.texts removes the escapes)."""
    return "\n".join(str(e.value) for e in elements)


def launch(app, data: Path, name: str, epochs: int) -> None:
    """A small whole-field run (the job's mechanics are under test, not a recipe)."""
    app.text_input(key="train_data").set_value(str(data))
    app.radio(key="train_pipeline").set_value("tfdata")
    app.selectbox(key="train_backbone").set_value("small_cnn")
    app.number_input(key="train_epochs").set_value(epochs)
    app.number_input(key="train_input_size").set_value(64)
    app.number_input(key="train_batch_size").set_value(16)
    app.selectbox(key="train_weights").set_value("none")
    app.text_input(key="train_name").set_value(name)
    app.button(key=START).click().run()
    assert not app.exception


def poll(app, condition, timeout: float = 240.0) -> None:
    """Rerun the page (as the fragment's timer would) until `condition()` holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            app.run()  # render the state the condition saw
            assert not app.exception
            return
        app.run()
        assert not app.exception
        time.sleep(1.0)
    pytest.fail(f"timed out; log:\n{jobs.log_tail(jobs.read_job()) if jobs.read_job() else ''}")
