"""Training jobs when the runs folder or the job file is unusable: a JobError to show, never a traceback
or a training process that no page can see, follow or cancel."""

import json
import subprocess
import sys

import pytest

from core.app import jobs
from core.errors import JobError

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def started(monkeypatch):
    """Every process start_job launches, so a test can check none is left running (and stop any that is)."""
    processes = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            processes.append(self)

    monkeypatch.setattr(jobs.subprocess, "Popen", Recorded)
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("where", ["a file", "inside a file"])
def test_a_runs_folder_that_cannot_be_made_is_a_job_error_and_nothing_starts(tmp_path, started, where):
    blocker = tmp_path / "runs"
    blocker.write_text("x")
    root = blocker if where == "a file" else blocker / "runs"
    with pytest.raises(JobError, match=r"The runs folder .* cannot be written .*BREAKHIS_RUNS_DIR.*no training"):
        jobs.start_job(SLEEPER, root / "run1", {}, root=root)
    assert started == []
    assert jobs.read_job(root) is None


def test_a_job_file_that_cannot_be_written_stops_the_training_it_started(tmp_path, started):
    (tmp_path / jobs.JOB_FILE_NAME).mkdir()  # as a full disk or an unwritable file would: the write fails
    with pytest.raises(JobError, match=r"cannot be written .*so the training was stopped"):
        jobs.start_job(SLEEPER, tmp_path / "run1", {}, root=tmp_path)
    assert len(started) == 1 and started[0].poll() is not None  # killed and reaped, not running untracked
    assert started[0].pid not in jobs._CHILDREN


def test_forgetting_a_job_in_a_runs_folder_that_became_a_file_is_a_job_error(tmp_path):
    root = tmp_path / "runs"
    root.write_text("x")
    with pytest.raises(JobError, match="the finished job is still shown"):
        jobs.clear_job(root)


GOOD = {"pid": 999999, "run_dir": "/runs/r", "started": 1, "command": ["python"], "log": "/runs/r.log",
        "settings": {"epochs": 1}}


@pytest.mark.parametrize("damage, why", [
    ({"settings": ["a"]}, "settings is list, not dict"),
    ({"command": [1]}, "command is list, not list[str]"),
    ({"started": "x", "cancel_requested": "y"}, "started is str, not float; cancel_requested is str, not float | None"),
    ({"pid": None}, "pid is null, not int"),
    ({"pid": 0}, "pid 0 is not a process id"),  # os.killpg(0) would stop the server's own process group
    ({"unknown": 1}, "got an unexpected keyword argument 'unknown'"),
])
def test_a_job_file_with_fields_of_the_wrong_type_is_damaged_not_a_job(tmp_path, damage, why):
    (tmp_path / jobs.JOB_FILE_NAME).write_text(json.dumps({**GOOD, **damage}))
    assert jobs.load_job(tmp_path) == (None, f"{tmp_path / jobs.JOB_FILE_NAME} is damaged ({why})")
    assert jobs.read_job(tmp_path) is None


def test_a_sound_job_file_is_read_and_a_missing_one_is_no_job(tmp_path):
    assert jobs.load_job(tmp_path) == (None, None)
    (tmp_path / jobs.JOB_FILE_NAME).write_text(json.dumps({**GOOD, "proc_start": None, "cancel_requested": 2.5}))
    job, problem = jobs.load_job(tmp_path)
    assert problem is None and job.settings == {"epochs": 1} and job.started == 1 and job.cancel_requested == 2.5


def test_a_launch_the_audit_trail_cannot_record_starts_nothing(tmp_path, started):
    """qa-retrain #3: the launch's audit row is written first; when it cannot be, no training runs."""
    from core.store.db import StoreError

    def busy(job_id):
        raise StoreError("the database is busy or unavailable; try again")

    with pytest.raises(StoreError, match="busy"):
        jobs.start_job(SLEEPER, tmp_path / "run1", {}, root=tmp_path, record_launch=busy)
    assert started == [] and jobs.read_job(tmp_path) is None
    recorded = []
    job = jobs.start_job(SLEEPER, tmp_path / "run1", {}, root=tmp_path, record_launch=recorded.append)
    assert recorded == [job.job_id] and len(started) == 1  # recorded, then started, under one id
