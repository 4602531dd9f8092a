"""Driving the app without a browser, for the tests and the benchmarks (like streamlit.testing).

A throwaway model folder (an untrained small_cnn, saved the one official way), the environment
that points the app at given model folders, the AppTest patch that makes every run go through
app.py's router as the server's runs do, and signing an AppTest session in through the form.
"""

from __future__ import annotations

import os
from pathlib import Path


def make_model_folder(folder: Path, demo: bool = True, name: str = "tiny-demo", metrics: dict | None = None,
                      hierarchy: str = "hierarchical") -> Path:
    """An untrained small_cnn at input 64, saved the one official way (core.model.folders)."""
    import keras

    from core.model.classifier import build_classifier
    from core.model.folders import save_model_folder

    keras.utils.set_random_seed(0)
    model, weights = build_classifier("small_cnn", hierarchy, weights=None, input_size=64)
    card = {"name": name, "backbone": "small_cnn", "hierarchy": hierarchy, "weights_init": weights,
            "demo": demo, "training": {"data_source": "synthetic test data", "split_protocol": "patient-wise",
                                       "counts": {"train": 60, "val": 18, "test": 18}, "mode": "finetune",
                                       "epochs": 1}}
    if metrics is not None:
        card["metrics"] = metrics
    return save_model_folder(model, folder, card)


def app_environment(models_root: Path, default: Path, runs: Path) -> dict:
    """The app pointed at these models, with its database in a folder next to `runs`, in single-user
    local mode (the sign-in tests switch it off: tests/test_app_signin.py)."""
    return {"BREAKHIS_MODEL_DIRS": f"{models_root}{os.pathsep}{runs}",
            "BREAKHIS_DEFAULT_MODEL": str(default), "BREAKHIS_RUNS_DIR": str(runs),
            "BREAKHIS_DATA_DIR": str(Path(runs).parent / "data"), "BREAKHIS_SINGLE_USER": "1"}


def run_app_like_the_server(patch) -> None:
    """Make AppTest run app.py (the st.navigation router) on every run, as the server does.

    AppTest (streamlit 1.67) resets PagesManager.uses_pages_directory before each run; because
    this repo has a pages/ folder, every run after the first then starts in legacy pages-folder
    mode. The pages recover from that (core.app.session.require_router reruns through app.py),
    but the rerun drops one-shot button clicks. The server keeps the flag False after the first
    st.navigation call; this does the same for AppTest.
    """
    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime.pages_manager import PagesManager

    class ServerLikePagesManager(PagesManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            PagesManager.uses_pages_directory = False

    patch.setattr(app_test, "PagesManager", ServerLikePagesManager)


def app_like_the_server(patch, models_root: Path, default: Path, runs: Path) -> None:
    """The app pointed at these models (app_environment, set on `patch`) and AppTest run as the server
    runs it (run_app_like_the_server): what every AppTest of the whole app starts with."""
    for key, value in app_environment(models_root, default, runs).items():
        patch.setenv(key, value)
    run_app_like_the_server(patch)


def sign_in(app, name: str, password: str):
    """Fill the sign-in form of an AppTest session that shows it, submit it; the app after the rerun."""
    app.text_input(key="sign_in_name").input(name)
    app.text_input(key="sign_in_password").input(password)
    return app.button[0].click().run()  # the form's submit button, the page's only one


def run_apptests_concurrently(patch) -> None:
    """Let several AppTests run at once in threads, as one server's sessions do (bench/app_load.py).

    AppTest (streamlit 1.67) sets the process-wide Runtime._instance to a mock at the start of each
    run and to None at its end. With sessions in threads, the first session to finish clears it
    under the others: runtime.exists() turns False mid-script, st.form gives its submit button no
    form id, and a page with two forms fails with StreamlitDuplicateElementKey. Here the clearing
    waits for the last run that is still going.
    """
    import threading

    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime import Runtime

    lock, running = threading.Lock(), [0]

    class LastOneClears(type(Runtime)):
        def __setattr__(cls, name, value):
            if name != "_instance":
                return super().__setattr__(name, value)
            with lock:
                if value is not None or running[0] <= 1:  # the last run ending clears it
                    Runtime._instance = value

    class SharedRuntime(Runtime, metaclass=LastOneClears):
        pass

    original = app_test.AppTest._run

    def counted_run(self, *args, **kwargs):
        with lock:
            running[0] += 1
        try:
            return original(self, *args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    patch.setattr(app_test, "Runtime", SharedRuntime)
    patch.setattr(app_test.AppTest, "_run", counted_run)
