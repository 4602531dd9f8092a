"""A training started from the command line counts toward the server's one training at a time: the Retrain page
says it is running, with its progress (it cannot cancel it), and starts no other until it ends
(core.paths.claimed_folders)."""

import json

import pytest
from streamlit.testing.v1 import AppTest

from core.app import jobs
from core.errors import JobError
from core.paths import claim_run, claimed_folders
from tests.app_helpers import APP, APP_TIMEOUT, SLEEPER, app_like_the_server, make_model_folder, open_retrain


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
        assert not app.get("progress")  # no event yet: nothing to say of its progress
        # its progress stream, as the run writes it: the page follows it (the page could only say it was running)
        events = [{"event": "start", "time": 1.0, "epochs": 5},
                  {"event": "epoch_begin", "time": 2.0, "epoch": 1, "epochs": 5, "steps": 4, "message": "training"},
                  {"event": "epoch_end", "time": 3.0, "epoch": 1, "epochs": 5, "metrics": {"loss": 1.0}},
                  {"event": "epoch_begin", "time": 4.0, "epoch": 2, "epochs": 5, "steps": 4, "message": "training"}]
        (runs / "cli-run" / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        app.run()
        [bar] = app.get("progress")
        assert bar.proto.text == "Training: epoch 2 of 5, step 0 of 4" and bar.value == 20
    finally:
        held.close()
    assert claimed_folders(runs) == []  # it ended: nothing claimed, the page starts trainings again


def test_a_command_line_run_outside_the_runs_folder_is_seen_too(tmp_path, monkeypatch):
    """The page scans its runs folder, so a training given --out elsewhere (/data/experiments/x) ran beside a
    Retrain job unseen. Its claim leaves its path in the runs folder; once it ends, the pointer is forgotten."""
    from core.paths import CLAIMED_ELSEWHERE

    runs = tmp_path / "runs"
    monkeypatch.setenv("BREAKHIS_RUNS_DIR", str(runs))
    held = claim_run(tmp_path / "elsewhere" / "experiment")
    try:
        assert claimed_folders(runs) == [(tmp_path / "elsewhere" / "experiment").resolve()]
        with pytest.raises(JobError, match="started outside this page is writing .*elsewhere/experiment"):
            jobs.start_job(SLEEPER, runs / "mine", {}, root=runs)
        assert not (runs / "mine").exists()
    finally:
        held.close()
    assert claimed_folders(runs) == [] and not list((runs / CLAIMED_ELSEWHERE).iterdir())
    claim_run(runs / "inside").close()  # a run in the runs folder is found by the scan: no pointer
    assert not list((runs / CLAIMED_ELSEWHERE).iterdir())


def test_probing_a_pointed_to_run_whose_lock_was_deleted_makes_no_lock(tmp_path, monkeypatch):
    """The probe opened the pointed-to RUN_CLAIM for append, so a lock file deleted by hand came back."""
    from core.paths import CLAIMED_ELSEWHERE, RUN_CLAIM

    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere" / "experiment"
    monkeypatch.setenv("BREAKHIS_RUNS_DIR", str(runs))
    held = claim_run(elsewhere)
    try:
        (elsewhere / RUN_CLAIM).unlink()  # by hand, while it runs: nothing holds that path any more
        assert claimed_folders(runs) == []
        assert not (elsewhere / RUN_CLAIM).exists() and not list((runs / CLAIMED_ELSEWHERE).iterdir())
    finally:
        held.close()
