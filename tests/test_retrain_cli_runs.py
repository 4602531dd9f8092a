"""A training started from the command line counts toward the server's one training at a time: the Retrain page
says it is running, with its progress, starts no other until it ends (core.paths.claimed_folders), and can stop
it (core.paths.claim_owner names its process)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from streamlit.testing.v1 import AppTest

from core.app import jobs
from core.errors import JobError
from core.paths import RUN_CLAIM, claim_owner, claim_run, claimed_folders
from tests.app_helpers import (
    APP,
    APP_TIMEOUT,
    PASSWORD,
    REPO,
    SLEEPER,
    app_like_the_server,
    make_model_folder,
    open_retrain,
    signed_in_app,
    texts,
)


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


CLI_RUN = """
import sys, time
from core.paths import claim_run
held = claim_run(sys.argv[1])  # what `python -m core train --out FOLDER` holds while it trains
print("claimed", flush=True)
time.sleep(300)
"""


def test_an_admin_stops_a_command_line_run_from_the_page_and_the_stop_is_audited(tmp_path):
    """The page could only say that a command-line training was running: the admin had to find a shell. The claim
    names its process (pid and start time), the page's button sends that process SIGTERM, and the audit trail
    says who stopped which run."""
    from core.testing.apptest import sign_in

    with signed_in_app(tmp_path, {"chief": "admin"}) as (store, _):
        folder = tmp_path / "runs" / "cli-run"
        process = subprocess.Popen([sys.executable, "-c", CLI_RUN, str(folder)], stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            assert process.stdout.readline().strip() == "claimed"
            assert claim_owner(folder) == process.pid
            app = open_retrain(sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), "chief", PASSWORD))
            assert "is writing" in texts(app.info) and "cli-run" in texts(app.info)
            key = f"stop_outside_{folder}"
            app.button(key=key).click().run()  # asked first: someone else's training may end on one click
            assert "Stop the training writing" in texts(app.warning) and process.poll() is None
            app.button(key=f"{key}_keep").click().run()
            assert not app.warning and process.poll() is None and not store.events(kinds="retrain_cancelled")
            app.button(key=key).click().run()
            app.button(key=f"{key}_yes").click().run()
            assert not app.exception and f"SIGTERM to process {process.pid}" in texts(app.info) and not app.warning
            assert process.wait(timeout=30) == -signal.SIGTERM
        finally:
            process.kill()
            process.wait()
        [event] = store.events(kinds="retrain_cancelled")
        assert event["user"] == "chief" and event["subject"] == str(folder)
        assert event["details"] == {"force": False, "outside": True, "pid": process.pid}
        assert claimed_folders(tmp_path / "runs") == []


def test_a_claim_that_names_no_running_process_of_its_own_is_not_signalled(tmp_path):
    """A pid is only signalled while the claim is held and the process it names started when the claim says: a
    stale or edited record (a reused pid), an unreadable one, or this server's own claim stops nothing."""
    held = claim_run(tmp_path / "run")
    try:
        assert claim_owner(tmp_path / "run") == os.getpid()
        with pytest.raises(JobError, match="held by this server itself"):
            jobs.stop_outside_run(tmp_path / "run")
        sleeper = subprocess.Popen(SLEEPER)
        try:
            lock = tmp_path / "run" / RUN_CLAIM
            record = json.loads(lock.read_text())
            lock.write_text(json.dumps({"pid": sleeper.pid, "started": record["started"]}))  # not its start time
            assert claim_owner(tmp_path / "run") is None
            with pytest.raises(JobError, match="No process on this machine can be found writing"):
                jobs.stop_outside_run(tmp_path / "run")
            time.sleep(0.2)
            assert sleeper.poll() is None  # not signalled
            lock.write_text("not json")
            assert claim_owner(tmp_path / "run") is None
        finally:
            sleeper.kill()
            sleeper.wait()
    finally:
        held.close()
    assert claim_owner(tmp_path / "run") is None  # ended: the record stays, the claim is free
