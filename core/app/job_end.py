"""A training job's end, in the audit trail once, as the account that launched it.

The end is recorded by the server that launched the job the moment its process exits (`watch`), and
otherwise by the first Retrain page that finds it ended (a server restarted meanwhile): both call
`record_end`, which writes the row under the job lock only if no row of this launch (its job id) exists.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
from pathlib import Path

from core.app.jobs import RUNNING, Job, child_process, job_lock, job_status, progress
from core.paths import runs_dir
from core.store.accounts import SYSTEM
from core.training.progress import read_progress

log = logging.getLogger(__name__)


def ended_at(job: Job) -> float | None:
    """When the run ended, from its own records: its "end" event, else (killed, crashed) its log's last write."""
    ends = [e["time"] for e in read_progress(Path(job.run_dir) / "progress.jsonl")
            if e.get("event") == "end" and isinstance(e.get("time"), (int, float))]
    if ends:
        return ends[-1]
    with contextlib.suppress(OSError):
        return os.path.getmtime(job.log)
    return None


def _is_end_of(row: dict, job: Job) -> bool:
    """Whether a retrain_finished row records this launch: its job id; a job file without one (written before
    ids were kept), any row of its run folder."""
    return row["subject"] == job.run_dir and (job.job_id is None or (row["details"] or {}).get("job_id") == job.job_id)


def record_end(store, job: Job, root: Path | None = None) -> int | None:
    """Record an ended job's "retrain_finished" audit row in `store` (core.store.audit.Store) as the account
    that launched it (SYSTEM for a job file that does not say), with its status, end time and job id; its id,
    or None while it runs or once recorded for this launch. Under the job lock, so the server's watch and any
    number of Retrain pages write one row between them. A busy database raises StoreError: the next caller
    tries again."""
    with job_lock(Path(root or runs_dir()), "the job's end was not recorded"):
        status, explanation = job_status(job, progress(job))
        if status == RUNNING or any(_is_end_of(e, job) for e in store.events(
                kinds="retrain_finished", subject_contains=job.run_dir)):
            return None
        ended = ended_at(job)
        when = None if ended is None else datetime.datetime.fromtimestamp(ended, datetime.UTC).isoformat(
            timespec="seconds")
        return store.record("retrain_finished", job.launched_by or SYSTEM, job.run_dir,
                            details={"status": status, "explanation": explanation, "ended": when,
                                     "job_id": job.job_id})


def watch(job: Job, on_end) -> None:
    """Call on_end(job) in a background thread as soon as the job this server started exits, whether or
    not any page is open (a job of another server, or already reaped, is not watched). A failure is logged:
    the Retrain page records the end when it next finds it unrecorded."""
    child = child_process(job.pid)
    if child is None:
        return

    def wait_then_report() -> None:
        child.wait()
        try:
            on_end(job)
        except Exception:  # noqa: BLE001 - a daemon thread has nobody to raise to
            log.warning("The end of training job %s could not be recorded now", job.run_dir, exc_info=True)

    threading.Thread(target=wait_then_report, name=f"job-{job.pid}", daemon=True).start()
