"""A training started from the command line counts toward the server's one training at a time: the Retrain page
says it is running (it cannot follow or cancel it) and starts no other until it ends (core.paths.claimed_folders)."""

import sys

import pytest
from streamlit.testing.v1 import AppTest

from core.app import jobs
from core.errors import JobError
from core.paths import claim_run, claimed_folders
from tests.app_helpers import APP, APP_TIMEOUT, app_like_the_server, make_model_folder, open_retrain

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


def test_a_command_line_run_is_seen_and_blocks_a_second_training(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    default = make_model_folder(tmp_path / "models" / "default", demo=True)
    app_like_the_server(monkeypatch, tmp_path / "models", default, runs)
    (runs / "finished").mkdir(parents=True)
    claim_run(runs / "finished").close()  # a run that ended: its lock file stays, free
    held = claim_run(runs / "cli-run")  # what `python -m core train --out runs/cli-run` holds while it trains
    try:
        assert claimed_folders(runs) == [runs / "cli-run"]
        with pytest.raises(JobError, match="started outside this page is writing .*cli-run"):
            jobs.start_job(SLEEPER, runs / "mine", {}, root=runs)
        assert jobs.read_job(runs) is None and not (runs / "mine").exists()
        app = open_retrain(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run())
        assert not app.exception
        assert any("A training started outside this page (from the command line) is writing" in i.value
                   and "cli-run" in i.value for i in app.info)
    finally:
        held.close()
    assert claimed_folders(runs) == []  # it ended: nothing claimed, the page starts trainings again
