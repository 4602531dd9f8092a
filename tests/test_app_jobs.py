"""Background training jobs: one at a time, state on disk, stale pids detected, cancel by group."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

from core.app import job_end, jobs
from core.cli import build_parser
from core.errors import JobError
from core.options import from_args
from core.paths import process_start_time
from core.training.config import TrainConfig
from core.training.progress import ProgressWriter

SLEEPER = [sys.executable, "-c", "import time; print('working', flush=True); time.sleep(120)"]


def wait_until(condition, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_the_command_is_what_core_train_parses(tmp_path):
    wanted = TrainConfig(data="/data/breakhis", out=str(tmp_path / "run"), backbone="small_cnn", mode="fast",
                         epochs=3, balance="oversample", split="image-level", batch_size=8,
                         input_size=64, weights="none", magnification="40X", seed=5, evaluate=False)
    command = jobs.build_command(wanted)
    assert command[:4] == [sys.executable, "-m", "core", "train"]
    config = from_args(TrainConfig, build_parser().parse_args(command[3:]))
    assert config == wanted  # every option survives the trip through the command line
    assert (config.data, config.out, config.backbone, config.mode) == ("/data/breakhis", str(tmp_path / "run"),
                                                                       "small_cnn", "fast")
    assert (config.epochs, config.balance, config.split, config.batch_size) == (3, "oversample", "image-level", 8)
    assert (config.input_size, config.weights, config.magnification, config.seed) == (64, "none", "40X", 5)


def test_one_job_at_a_time_and_cancel_stops_the_process_group(tmp_path):
    job = jobs.start_job(SLEEPER, tmp_path / "run1", {"what": "sleeper"}, root=tmp_path)
    try:
        on_disk = json.loads((tmp_path / jobs.JOB_FILE_NAME).read_text())
        assert on_disk["pid"] == job.pid and on_disk["run_dir"] == str(tmp_path / "run1")
        assert jobs.is_alive(jobs.read_job(tmp_path))
        assert jobs.job_status(job, {"status": "not started"})[0] == jobs.RUNNING
        with pytest.raises(JobError, match="already running"):
            jobs.start_job(SLEEPER, tmp_path / "run2", {}, root=tmp_path)
        with pytest.raises(JobError, match="still running"):
            jobs.clear_job(tmp_path)
        assert wait_until(lambda: "working" in jobs.log_tail(job))
        jobs.cancel_job(job, root=tmp_path)
        assert wait_until(lambda: not jobs.is_alive(job))
        reread = jobs.read_job(tmp_path)
        assert reread.cancel_requested is not None
        status, message = jobs.job_status(reread, {"status": "not started"})
        assert status == jobs.CANCELLED and "cancelled" in message
        jobs.clear_job(tmp_path)
        assert jobs.read_job(tmp_path) is None
    finally:
        jobs.cancel_job(job, root=tmp_path, force=True)


def test_a_dead_pid_without_an_end_event_is_stale_not_running(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    job = jobs.Job(pid=finished.pid, run_dir=str(tmp_path / "run"), started=time.time(), command=[],
                   log=str(tmp_path / "none.log"), settings={})
    assert not jobs.is_alive(job)
    status, message = jobs.job_status(job, {"status": "running"})
    assert status == jobs.STALE and "never reported an end" in message


def test_a_reused_pid_is_not_mistaken_for_the_job(tmp_path):
    other = subprocess.Popen(SLEEPER)
    try:
        job = jobs.Job(pid=other.pid, run_dir=str(tmp_path), started=time.time(), command=[], log="",
                       settings={}, proc_start="1")  # the job's process started at another time
        assert not jobs.is_alive(job)
        job.proc_start = process_start_time(other.pid)
        assert jobs.is_alive(job)
    finally:
        other.kill()
        other.wait()


def test_status_comes_from_the_runs_progress_stream(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    run = tmp_path / "run"
    job = jobs.Job(pid=finished.pid, run_dir=str(run), started=time.time(), command=[], log="", settings={})
    writer = ProgressWriter(run / "progress.jsonl", echo_stdout=False)
    writer.emit("start", epochs=2, steps=3)
    writer.emit("epoch_end", epoch=1, epochs=2, metrics={"loss": 0.5})
    assert jobs.progress(job)["history"] == [{"epoch": 1, "loss": 0.5}]
    writer.emit("error", message="ValueError: boom")
    writer.emit("end", status="failed", message="ValueError: boom")
    status, message = jobs.job_status(job, jobs.progress(job))
    assert status == jobs.FAILED and message == "Training failed. ValueError: boom."
    cancelled = dataclasses.replace(job, run_dir=str(tmp_path / "cancelled"))
    ProgressWriter(tmp_path / "cancelled" / "progress.jsonl", echo_stdout=False).emit(
        "end", status="cancelled", message="Training was cancelled (SIGTERM); no model was saved.")
    assert jobs.job_status(cancelled, jobs.progress(cancelled)) == (
        jobs.CANCELLED, "Training was cancelled (SIGTERM); no model was saved.")  # said once


def test_a_corrupt_job_file_means_no_job_and_a_busy_run_folder_is_refused(tmp_path):
    (tmp_path / jobs.JOB_FILE_NAME).write_text("{not json")
    assert jobs.read_job(tmp_path) is None
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "model.keras").write_text("x")
    with pytest.raises(JobError, match="already exists"):
        jobs.start_job(SLEEPER, tmp_path / "taken", {}, root=tmp_path)


def test_clearing_the_job_a_page_showed_never_forgets_a_job_another_tab_started(tmp_path):
    """Tab A shows a finished job; tab B clears it and starts (here: already finished) another one.
    A's "Start a new training job" must not forget B's job unseen."""
    shown = jobs.start_job([sys.executable, "-c", "pass"], tmp_path / "old", {}, root=tmp_path)
    assert wait_until(lambda: not jobs.is_alive(shown))
    jobs.clear_job(tmp_path, shown=shown)  # tab B
    newer = jobs.start_job([sys.executable, "-c", "pass"], tmp_path / "new", {}, root=tmp_path)
    assert wait_until(lambda: not jobs.is_alive(newer))
    with pytest.raises(JobError, match=r"Another training job \(new\) was started after this page showed old"):
        jobs.clear_job(tmp_path, shown=shown)  # tab A
    assert jobs.read_job(tmp_path).run_dir == str(tmp_path / "new")
    jobs.clear_job(tmp_path, shown=jobs.read_job(tmp_path))
    assert jobs.read_job(tmp_path) is None


def test_a_jobs_end_is_recorded_once_as_its_launchers_when_it_exits_with_no_page_open(tmp_path):
    """qa-multi #1: retrain_finished named whoever opened Retrain first after the run (at that moment), and
    nothing was recorded while nobody did; the job file did not even say who launched it."""
    import datetime
    import functools
    import threading

    from core.store.audit import Store

    store = Store.open(f"sqlite:///{tmp_path / 'audit.db'}")
    run = tmp_path / "run"
    ends = (f"from core.training.progress import ProgressWriter; "
            f"ProgressWriter({str(run / 'progress.jsonl')!r}).emit('end', status='completed')")
    try:
        job = jobs.start_job([sys.executable, "-c", ends], run, {}, root=tmp_path, launched_by="alice")
        assert jobs.read_job(tmp_path).launched_by == "alice"
        job_end.watch(job, functools.partial(job_end.record_end, store, root=tmp_path))  # then no page is opened
        assert wait_until(lambda: store.events(kinds="retrain_finished"))
        row = store.events(kinds="retrain_finished")[0]
        assert (row["user"], row["subject"], row["details"]["status"]) == ("alice", str(run), "completed")
        end = next(e["time"] for e in jobs.read_progress(run / "progress.jsonl") if e["event"] == "end")
        assert row["details"]["ended"] == datetime.datetime.fromtimestamp(end, datetime.UTC).isoformat("T", "seconds")

        # The server restarted (no watch): several admins' Retrain pages find the job ended at the same moment.
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "progress.jsonl").write_text(json.dumps({"event": "end", "time": 1.0,
                                                                       "status": "failed"}) + "\n")
        other = dataclasses.replace(job, run_dir=str(tmp_path / "other"), pid=999_999, launched_by=None)
        found = []
        pages = [threading.Thread(target=lambda: found.append(job_end.record_end(store, other, tmp_path)))
                 for _ in range(4)]
        for page in pages:
            page.start()
        for page in pages:
            page.join()
        assert len([i for i in found if i is not None]) == 1 and job_end.record_end(store, job, tmp_path) is None
        rows = store.events(kinds="retrain_finished")
        assert len(rows) == 2 and rows[0]["user"] == "system"  # a job file from before launchers were kept
        assert rows[0]["details"] == {"status": "failed", "explanation": "Training failed.",
                                      "ended": "1970-01-01T00:00:01+00:00", "job_id": job.job_id}
    finally:
        store.close()


def test_a_job_runs_at_a_lower_cpu_priority_than_the_app(tmp_path):
    """qa-retrain #11: a job ran at the app's priority (NI 0) and took every core from the pathologists' diagnoses."""
    app = os.getpriority(os.PRIO_PROCESS, 0)
    if app >= 19:
        pytest.skip("the tests already run at the lowest priority")
    job = jobs.start_job(SLEEPER, tmp_path / "run", {}, root=tmp_path)
    try:
        lowered = min(19, app + jobs.JOB_NICENESS)  # `nice` sets it before it starts the command: a moment after spawn
        assert wait_until(lambda: os.getpriority(os.PRIO_PROCESS, job.pid) == lowered) and lowered > app
        assert os.getpriority(os.PRIO_PROCESS, 0) == app  # the app's own priority is unchanged
    finally:
        jobs.cancel_job(job, root=tmp_path, force=True)
        assert wait_until(lambda: not jobs.is_alive(job))


def test_a_run_name_reused_after_a_refusal_gets_its_own_end_row_and_log(tmp_path):
    """qa-retrain #2: a run refused before it started ("retry"), then launched again under the same name: the
    second job's end was never recorded (record_end looked for any row of that run folder) and both jobs wrote
    runs/.job_logs/retry.log, so the refusal's log was lost."""
    from core.store.audit import Store

    store = Store.open(f"sqlite:///{tmp_path / 'audit.db'}")
    run = tmp_path / "retry"

    def ends(status: str, said: str) -> list[str]:
        return [sys.executable, "-c", f"print({said!r}); from core.training.progress import ProgressWriter; "
                                      f"ProgressWriter({str(run / 'progress.jsonl')!r}).emit('end', status={status!r})"]

    try:
        refused = jobs.start_job(ends("failed", "first launch"), run, {}, root=tmp_path, launched_by="alice")
        assert wait_until(lambda: not jobs.is_alive(refused))
        assert job_end.record_end(store, refused, tmp_path) is not None
        jobs.clear_job(tmp_path)
        retried = jobs.start_job(ends("completed", "second launch"), run, {}, root=tmp_path, launched_by="alice")
        assert wait_until(lambda: not jobs.is_alive(retried))
        assert job_end.record_end(store, retried, tmp_path) is not None  # its own end, not the refusal's row
        assert job_end.record_end(store, retried, tmp_path) is None  # and once
        rows = store.events(kinds="retrain_finished", newest_first=False)
        assert [(r["details"]["job_id"], r["details"]["status"]) for r in rows] == [
            (refused.job_id, "failed"), (retried.job_id, "completed")]
        assert refused.job_id != retried.job_id and refused.log != retried.log
        assert "first launch" in jobs.log_tail(refused) and "second launch" in jobs.log_tail(retried)
    finally:
        store.close()


@pytest.mark.parametrize("pipeline", ["tfdata", "fields"])
def test_a_run_folder_is_written_by_one_process_the_app_job_or_the_command_line(tmp_path, capsys, pipeline):
    """qa-retrain #6: an app job and a CLI run given one name within seconds both passed the "already holds a
    run" check before either had written anything, and trained into the same folder. The folder is claimed
    first (an flock its writer holds until it exits), and a second writer is refused."""
    from core.cli import main as cli
    from core.paths import claim_run

    run, empty = tmp_path / "race", tmp_path / "empty"
    empty.mkdir()  # were the CLI not refused it would fail on this data, not train
    adopts = [sys.executable, "-c", f"from core.paths import claim_run; held = claim_run({str(run)!r}, ('progress.jsonl',)); "
                                    "print('adopted', flush=True); import time; time.sleep(120)"]
    job = jobs.start_job(adopts, run, {}, root=tmp_path)
    try:
        assert wait_until(lambda: "adopted" in jobs.log_tail(job))  # the job's process took over the app's claim
        assert cli(["train", "--pipeline", pipeline, "--data", str(empty), "--out", str(run)]) == 2
        assert f"{run} is being written by another training process" in capsys.readouterr().err
        assert not (run / "progress.jsonl").exists()  # the refused run wrote nothing there
    finally:
        jobs.cancel_job(job, root=tmp_path, force=True)
        assert wait_until(lambda: not jobs.is_alive(job))
    jobs.clear_job(tmp_path)
    claim_run(run).close()  # the job's exit released the claim

    held = claim_run(tmp_path / "cli-run")  # what a command-line run holds while it trains
    try:
        with pytest.raises(JobError, match="started outside this page is writing .*cli-run"):  # seen first
            jobs.start_job(SLEEPER, tmp_path / "cli-run", {}, root=tmp_path)
        assert jobs.read_job(tmp_path) is None
    finally:
        held.close()


def test_a_cross_validation_claims_its_whole_folder(tmp_path, capsys):
    """A tf.data cross-validation (--folds k) claimed only its fold folders: a second writer of the top folder
    (cv.json, the ensemble) was not refused until a fold collided."""
    from core.cli import main as cli
    from core.paths import claim_run

    empty = tmp_path / "empty"
    empty.mkdir()  # were the CLI not refused it would fail on this data, not train
    held = claim_run(tmp_path / "cv")  # another process's cross-validation of the same name
    try:
        assert cli(["train", "--pipeline", "tfdata", "--folds", "2", "--data", str(empty), "--out",
                    str(tmp_path / "cv")]) == 2
        assert f"{tmp_path / 'cv'} is being written by another training process" in capsys.readouterr().err
        assert not (tmp_path / "cv" / "fold-0").exists()
    finally:
        held.close()


def test_an_ensemble_and_a_comparison_claim_their_folder(tmp_path, capsys):
    """ensemble and compare checked their --out folder without claiming it: two of them given one name a second
    apart both passed the check and wrote one folder."""
    from core.cli import main as cli
    from core.errors import UserInputError
    from core.paths import claim_run
    from core.training.ensemble_run import ensemble_run

    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("ens", "cmp"):
        held = claim_run(tmp_path / name)  # another process writing it
        try:
            if name == "ens":
                with pytest.raises(UserInputError, match="ens is being written by another training process"):
                    ensemble_run([tmp_path / "a" / "model", tmp_path / "b" / "model"], tmp_path / name)
            else:
                assert cli(["compare", "--candidates", "small_cnn@32", "--data", str(empty), "--out",
                            str(tmp_path / name)]) == 2
                assert "cmp is being written by another training process" in capsys.readouterr().err
        finally:
            held.close()


def test_a_search_and_a_gan_run_hold_their_folder(tmp_path, capsys):
    """`tune` and `gan train` resume into their --out by design, so they did not claim it: two of them on one
    folder both wrote it, and a running one did not count toward the server's one training at a time."""
    from core.cli import main as cli
    from core.paths import claim_run, claimed_folders

    empty = tmp_path / "empty"
    empty.mkdir()  # were the CLI not refused it would fail on this data, not train
    for name, command in (("search", ["tune", "--max-trials", "1"]), ("gan", ["gan", "train", "--steps", "2"])):
        held = claim_run(tmp_path / name)  # another process writing it
        try:
            assert claimed_folders(tmp_path) == [tmp_path / name]
            assert cli([*command, "--data", str(empty), "--out", str(tmp_path / name)]) == 2
            assert f"{tmp_path / name} is being written by another training process" in capsys.readouterr().err
            assert [p.name for p in (tmp_path / name).iterdir()] == [".run.lock"]  # nothing written beside it
        finally:
            held.close()
