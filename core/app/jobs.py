"""One background training job at a time, with its state on disk.

The Retrain page launches `python -m core train ...` as its own process group (never a thread in
the Streamlit script), so a page reload, a second browser tab or a restarted server all see the
same job through `runs/.job.json`. The job file records the pid and the process start time, so
a pid that died (or was reused by an unrelated process) is detected as stale instead of being
shown as "running" forever. Progress itself comes from the run's progress.jsonl (core.training.progress).

The job file also names the account that launched the job, whose audit row records its end
(core.app.job_end). Each launch has its own id (`job_id`, in its audit rows) and its own log, so a run
name used again (after a run refused before it started) is a second launch, not a repeat of the first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import types
import typing
from pathlib import Path

from core.app.run_files import read_json_file
from core.errors import JobError
from core.jsonfile import write_json_atomic
from core.options import to_argv
from core.paths import (
    CLAIM_FD,
    REPO,
    claim_owner,
    claim_run,
    claimed_folders,
    process_start_time,
    process_stat,
    runs_dir,
)
from core.training.progress import FINAL_STATUSES, latest_state, read_progress

log = logging.getLogger(__name__)

JOB_FILE_NAME = ".job.json"
LOG_NAME = "train.log"
RUNNING, COMPLETED, FAILED, CANCELLED, STALE = "running", "completed", "failed", "cancelled", "stale"

# Added to the app's niceness in the job's process: a training on the server's few cores yields them to the
# pathologists' diagnoses (the app's own threads) instead of competing at the same priority.
JOB_NICENESS = 10

# Popen objects of the jobs this server started, shared by all sessions: polling them reaps the
# child, so a finished job never lingers as a zombie that os.kill(pid, 0) would call alive.
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclasses.dataclass
class Job:
    pid: int
    run_dir: str
    started: float
    command: list[str]
    log: str
    settings: dict
    proc_start: str | None = None  # /proc start time, guards against pid reuse
    cancel_requested: float | None = None
    environment: dict = dataclasses.field(default_factory=dict)  # what the job's environment adds (KERAS_BACKEND)
    launched_by: str | None = None  # the account that started it (None: a job file written before it was kept)
    job_id: str | None = None  # this launch's id, in its audit rows (None: a job file written before ids were kept)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def build_command(config) -> list[str]:
    """`python -m core train ...` for a core.training.config.TrainConfig (the only way the app trains)."""
    return [sys.executable, "-m", "core", "train", *to_argv(config)]


def new_job_id() -> str:
    """A launch's id: its UTC start second (readable in a log's name) and a random part (two in one second)."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"


def _job_file(root: Path) -> Path:
    return root / JOB_FILE_NAME


def _proc_is_zombie(pid: int) -> bool:
    fields = process_stat(pid)
    return fields is not None and fields[0] == "Z"


def child_process(pid: int) -> subprocess.Popen | None:
    """The process of a job this server started (None for another server's, or one already forgotten)."""
    return _CHILDREN.get(pid)


def is_alive(job: Job) -> bool:
    """True while the job's own process is running (not a zombie, not a reused pid)."""
    child = _CHILDREN.get(job.pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(job.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Exists but belongs to someone else: not our job.
        return False
    if _proc_is_zombie(job.pid):
        return False
    if job.proc_start is not None:
        return process_start_time(job.pid) == job.proc_start
    return True


def _fits(value, hint) -> bool:
    """isinstance for a Job annotation: `str | None`, `list[str]`, and a float that JSON wrote as an integer."""
    if typing.get_origin(hint) is types.UnionType:
        return any(_fits(value, option) for option in typing.get_args(hint))
    kind = typing.get_origin(hint) or hint
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
        return False  # no field is a flag: JSON true is no pid, time or name
    return kind is not list or all(_fits(item, typing.get_args(hint)[0]) for item in value)


def _named(hint) -> str:
    return hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint)


def load_job(root: Path | None = None) -> tuple[Job | None, str | None]:
    """(the current or last job, None); (None, None) without a job file; (None, why) for a job file that
    is damaged: not JSON, or fields missing or of the wrong type (a hand edit, a half-restored backup).
    A pid that is not a process id is refused too: os.killpg(0) would signal the server's own group."""
    path = _job_file(Path(root or runs_dir()))
    data, problem = read_json_file(path)
    if data is None:
        return None, problem
    try:
        job = Job(**data)
    except TypeError as error:
        return None, f"{path} is damaged ({str(error).removeprefix('Job.__init__() ')})"
    wrong = [f"{name} is {'null' if value is None else type(value).__name__}, not {_named(hint)}"
             for name, hint in typing.get_type_hints(Job).items()
             if not _fits(value := getattr(job, name), hint)]
    if not wrong and job.pid <= 0:
        wrong = [f"pid {job.pid} is not a process id"]
    return (None, f"{path} is damaged ({'; '.join(wrong)})") if wrong else (job, None)


def read_job(root: Path | None = None) -> Job | None:
    """The current (or last) job, or None. A damaged job file is treated as no job (load_job says why)."""
    return load_job(root)[0]


def _write_job(job: Job, root: Path) -> None:
    write_json_atomic(_job_file(root), job.to_json())  # a reader never sees half a file


def _unwritable(root: Path, error: OSError, outcome: str = "no training was started") -> JobError:
    """The page's message for a runs folder it cannot use (missing parent, a file, read-only, disk full)."""
    why = "it is a file" if root.is_file() else f"{type(error).__name__}: {error.strerror or error}"
    return JobError(f"The runs folder {root} cannot be written ({why}). "
                    f"Set BREAKHIS_RUNS_DIR to a folder the app can write, or fix this one; {outcome}.")


@contextlib.contextmanager
def job_lock(root: Path, outcome: str = "no training was started"):
    """The runs folder's job lock (flock): starting a job, forgetting one and recording its end never interleave."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / ".job.lock", "w")
    except OSError as error:
        raise _unwritable(root, error, outcome) from error
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _niced(command: list[str]) -> list[str]:
    """`command` run by nice(1) at JOB_NICENESS: the new process has the lower priority before it runs anything
    (every thread it starts inherits it), and no Python runs between fork and exec (a preexec_fn), which a
    threaded server must avoid. Without nice(1) the job runs at the app's priority, and the log says so."""
    nice = shutil.which("nice")
    if nice is None:
        log.warning("nice(1) was not found: training jobs run at the app's CPU priority")
        return command
    return [nice, "-n", str(JOB_NICENESS), *command]


def _stop(process: subprocess.Popen) -> None:
    """Kill a just-started training and reap it: one nobody can see or cancel must not run on."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    _CHILDREN.pop(process.pid, None)


def _spawn(command: list[str], log_path: Path, env: dict, claim) -> subprocess.Popen:
    """The job's process: its own session (cancel signals its group), a lower priority, the run folder's
    claim (core.paths.claim_run) passed on, so the folder stays claimed while it runs and not a moment longer."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "xb") as log:
        return subprocess.Popen(_niced(command), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**env, CLAIM_FD: str(claim.fileno())}, pass_fds=(claim.fileno(),))


def start_job(command: list[str], run_dir: str | os.PathLike, settings: dict,
              root: Path | None = None, environment: dict | None = None, launched_by: str | None = None,
              record_launch=None) -> Job:
    """Launch the training process in its own session, at a lower CPU priority than the app (JOB_NICENESS);
    refuse while another job, or a command-line run in `root`, runs. `environment` is added to the process's
    (core.backends.job_environment: its Keras backend); `launched_by`: the account starting it (the job's caption
    and its end's audit row name it). `record_launch(job_id)`, called once every check has passed and before the
    process starts: the launch's audit row; what it raises (a busy database) propagates, nothing is started."""
    root, run_dir = Path(root or runs_dir()), Path(run_dir)
    with job_lock(root):  # Two tabs pressing Start at once: one wins.
        current = read_job(root)
        if current is not None and is_alive(current):
            raise JobError(f"A training job is already running (pid {current.pid}, {current.run_dir}). "
                           "Wait for it or cancel it first.")
        if elsewhere := claimed_folders(root):  # a training started from the command line: one at a time too
            raise JobError(f"A training started outside this page is writing {elsewhere[0]}; the server runs one "
                           "training at a time. Wait for it to end (it is stopped where it was started).")
        try:  # the run folder is this job's from now: a command-line run given its name is refused
            claim = claim_run(run_dir, holds="files: it already exists", hint="choose another run name",
                              error=JobError)
        except OSError as error:
            raise _unwritable(root, error) from error
        with claim:  # handed to the job's process, which holds it until it exits
            job_id = new_job_id()
            log_path = root / ".job_logs" / f"{run_dir.name}-{job_id}.log"  # one per launch, never overwritten
            if record_launch is not None:
                record_launch(job_id)  # first: a training the audit trail does not have is not started
            environment = dict(environment or {})
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **environment}
            try:
                process = _spawn(command, log_path, env, claim)
            except OSError as error:
                raise _unwritable(root, error) from error
        _CHILDREN[process.pid] = process
        job = Job(pid=process.pid, run_dir=str(run_dir), started=time.time(), command=command,
                  log=str(log_path), settings=settings, proc_start=process_start_time(process.pid),
                  environment=environment, launched_by=launched_by, job_id=job_id)
        try:
            _write_job(job, root)  # without it no page could follow, cancel or refuse a second start
        except BaseException as error:
            _stop(process)
            if isinstance(error, OSError):
                raise JobError(f"The job file {_job_file(root)} cannot be written ({type(error).__name__}: "
                               f"{error.strerror or error}), so the training was stopped at once. Free disk space "
                               "or fix the runs folder (BREAKHIS_RUNS_DIR), then start again.") from error
            raise
    return job


def cancel_job(job: Job, root: Path | None = None, force: bool = False) -> None:
    """SIGTERM (or SIGKILL when forced) to the job's whole process group."""
    root = Path(root or runs_dir())
    if not is_alive(job):
        return
    job.cancel_requested = job.cancel_requested or time.time()
    with contextlib.suppress(OSError):  # the mark only words the status; the run's own stream says "cancelled"
        _write_job(job, root)
    try:
        os.killpg(job.pid, signal.SIGKILL if force else signal.SIGTERM)
    except ProcessLookupError:
        pass


def stop_outside_run(folder: str | os.PathLike) -> int:
    """SIGTERM to the process writing `folder`, a training started outside the Retrain page (from the command
    line); it ends as a cancelled job does, its progress stream saying "cancelled". That process only, not its
    group (a shell's other jobs may share it). Refused when the folder's claim names no process running on this
    machine (core.paths.claim_owner: it ended, was started before claims named their process, or runs elsewhere),
    or names this server. The pid signalled."""
    pid = claim_owner(folder)
    if pid is None:
        raise JobError(f"No process on this machine can be found writing {folder} (it has ended, or it runs on "
                       "another machine or from an older version): nothing was stopped. Stop it where it runs.")
    if pid == os.getpid():
        raise JobError(f"{folder} is held by this server itself (a job it is starting), not by an outside training.")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        raise JobError(f"The training writing {folder} has just ended: nothing was stopped.") from None
    except PermissionError:
        raise JobError(f"The training writing {folder} (process {pid}) runs as another user, whom this server may "
                       "not signal: stop it where it runs.") from None
    return pid


def clear_job(root: Path | None = None, shown: Job | None = None) -> None:
    """Forget a finished job (its run folder stays). Refuses while it runs, and, given the job a
    page `shown`, when another job has replaced it since (a second tab started one): that job is
    not the user's to forget unseen."""
    root = Path(root or runs_dir())
    kept = "the finished job is still shown"
    with job_lock(root, kept):  # a Start in another tab cannot write its job between the check and the unlink
        job = read_job(root)
        if job is None:
            return
        if shown is not None and (job.run_dir, job.started) != (shown.run_dir, shown.started):
            raise JobError(f"Another training job ({Path(job.run_dir).name}) was started after this page showed "
                           f"{Path(shown.run_dir).name}; it is shown now.")
        if is_alive(job):
            raise JobError("The job is still running; cancel it first.")
        try:
            _job_file(root).unlink(missing_ok=True)
        except OSError as error:
            raise _unwritable(root, error, kept) from error


def progress(job: Job) -> dict:
    """The run's progress summary (core.training.progress.latest_state of its progress.jsonl)."""
    return latest_state(read_progress(Path(job.run_dir) / "progress.jsonl"))


def start_counts(job: Job) -> dict:
    """The split sizes the run's "start" event states ({} before it): either pipeline sends them, and a
    fields run writes no config.json that would say them while it trains."""
    starts = [e["counts"] for e in read_progress(Path(job.run_dir) / "progress.jsonl")
              if e.get("event") == "start" and isinstance(e.get("counts"), dict)]
    return starts[-1] if starts else {}


def job_status(job: Job, state: dict) -> tuple[str, str]:
    """(status, explanation) from the process state and the run's progress summary.

    A process that is gone without a final "end" event was killed or crashed: "stale" (or
    "cancelled" when the user asked for it), and never a usable model.
    """
    if is_alive(job):
        return RUNNING, "Training is running."
    if state.get("status") in FINAL_STATUSES:
        status = state["status"]
        detail = str(state.get("error") or state.get("message") or "").strip()
        if not detail or status == COMPLETED:
            return status, f"Training {status}."
        detail += "" if detail.endswith((".", "!", "?")) else "."
        # said once: a cancelled run's own message already reads "Training was cancelled (SIGTERM); ..."
        return status, detail if detail.startswith("Training ") else f"Training {status}. {detail}"
    if job.cancel_requested:
        return CANCELLED, "Training cancelled before it reported an end."
    return STALE, (f"The training process (pid {job.pid}) is gone but never reported an end: it was "
                   "killed or crashed. See the log.")


def log_tail(job: Job, lines: int = 40) -> str:
    """Last lines of the job's log (stdout and stderr of the training process)."""
    try:
        with open(job.log, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - 64_000))
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
