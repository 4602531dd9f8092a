"""Audit trail under load and after a crash: what the audit write adds, and that nothing confirmed is lost.

    python bench/audit_load.py [--sessions 8] [--seconds 20] [--url sqlite:///...] [--smoke]

--smoke: 2 sessions for 1 s, the writer killed 0.3 s after its first write (seconds; CI).

Load: `--sessions` threads for `--seconds`, each repeatedly writing one diagnosis of 3 images (one
transaction of 3 rows with the details a real diagnosis records) and one review, as the Diagnose
page does through core.app.session. Baseline, measured in the same run: the same write by one
session alone (no contention). Reported: p50/p95/max of the audit write per diagnosis, errors, and
whether every id the store confirmed is in the database afterwards.

Fault: a child process writes in a loop and prints each id after its commit returned (what the
page would confirm); it is killed with SIGKILL mid-load; the database is then reopened: it must
open cleanly (PRAGMA integrity_check "ok" on SQLite) and hold every printed id.

Why not through the browser: the model pass is the same with or without the audit; what the issue
asks to bound is the write the audit adds, measured here where it happens, on the same store code.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import CHECKOUT, add_smoke, emit  # noqa: E402 - bench/common.py (the script's own folder)

from core.errors import UserInputError  # noqa: E402
from core.store import accounts  # noqa: E402
from core.store.audit import Store  # noqa: E402

DETAILS = {"call": "malignant", "subtype": "ductal_carcinoma", "confidence": 0.81,
           "stage1": {"benign": 0.1, "malignant": 0.9}, "stage2": {"ductal_carcinoma": 0.9, "lobular_carcinoma": 0.04,
                                                             "mucinous_carcinoma": 0.03, "papillary_carcinoma": 0.03},
           "refer": True, "refer_reasons": ["subtype uncertain (0.62)"], "magnification": "200X",
           "settings": {"tta": False, "cam_method": "gradcam", "stain_normalisation": "none", "refer_threshold": 0.7}}


def diagnosis_rows(session: int, n: int) -> list[dict]:
    return [{"kind": "diagnosis", "user": f"user{session}", "subject": f"SOB_M_DC-14-{session}-200-{n:03d}-{i}.png",
             "image_sha256": f"{session:08x}{n:08x}{i:048x}", "model": "bench", "model_sha256": "0" * 64,
             "details": DETAILS} for i in range(3)]


def write_one(store: Store, session: int, n: int) -> tuple[float, list[int]]:
    start = time.perf_counter()
    ids = store.record_many(diagnosis_rows(session, n))
    elapsed = time.perf_counter() - start
    ids.append(store.record("review", f"user{session}", refers_to=ids[0], details={"agree": True, "comment": ""}))
    return elapsed, ids


def load(store: Store, sessions: int, seconds: float, think_s: float) -> dict:
    latencies, confirmed, errors = [], [], []
    lock, stop = threading.Lock(), time.monotonic() + seconds

    def session_loop(session: int) -> None:
        n = 0
        while time.monotonic() < stop:
            try:
                elapsed, ids = write_one(store, session, n)
            except Exception as problem:  # noqa: BLE001 - counted: the goal is zero
                with lock:
                    errors.append(f"{type(problem).__name__}: {problem}")
                continue
            with lock:
                latencies.append(elapsed)
                confirmed.extend(ids)
            n += 1
            time.sleep(think_s)  # the model pass and the user's reading between two diagnoses

    for session in range(sessions):  # the store takes reviews by accounts only (made once per database)
        with contextlib.suppress(UserInputError):
            accounts.add_account(store, f"user{session}", None, "pathologist")
    threads = [threading.Thread(target=session_loop, args=(s,)) for s in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = {e["id"] for e in store.events(ids=confirmed)} if confirmed else set()
    ms = np.asarray(latencies) * 1000
    return {"sessions": sessions, "seconds": seconds, "think_s": think_s, "diagnoses": len(latencies), "rows_confirmed": len(confirmed),
            "rows_missing": len(set(confirmed) - stored), "errors": len(errors), "error_examples": errors[:3],
            "write_ms": {"p50": round(float(np.percentile(ms, 50)), 2), "p95": round(float(np.percentile(ms, 95)), 2),
                         "max": round(float(ms.max()), 2)} if len(ms) else None}


CHILD = """
import sys
from core.store.audit import Store
store = Store.open(sys.argv[1])
n = 0
while True:
    for audit_id in store.record_many([{"kind": "diagnosis", "user": "crash", "subject": f"{n}.png",
                                        "details": {"n": n}}]):
        print(audit_id, flush=True)
    n += 1
"""


def crash(url: str, after_s: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}  # the child writes with this checkout's store
    child = subprocess.Popen([sys.executable, "-c", CHILD, url], stdout=subprocess.PIPE, text=True, env=env)
    confirmed: list[int] = []
    reader = threading.Thread(target=lambda: confirmed.extend(int(line) for line in child.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not confirmed and time.monotonic() < deadline:  # the child's imports take seconds on a busy machine
        time.sleep(0.05)
    time.sleep(after_s)  # then kill it in the middle of its writes
    child.send_signal(signal.SIGKILL)
    child.wait()
    reader.join(timeout=5)
    store = Store.open(url)
    integrity = None
    if store.engine.dialect.name == "sqlite":
        with store.engine.connect() as connection:
            integrity = connection.exec_driver_sql("PRAGMA integrity_check").scalar()
    stored = {e["id"] for e in store.events(kinds="diagnosis", user="crash")}
    store.close()
    return {"killed_s_after_first_write": after_s, "confirmed": len(confirmed), "missing": len(set(confirmed) - stored),
            "integrity_check": integrity, "reopened": True}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--url", help="database URL (default: a new SQLite file in a temporary folder)")
    parser.add_argument("--think-s", type=float, default=1.0,
                        help="pause of each session between two diagnoses: a Diagnose request is the model's "
                             "pass (about 0.3-1 s on a CPU, bench/diagnose.py) plus the reading of its result")
    parser.add_argument("--out", type=Path)
    add_smoke(parser)
    args = parser.parse_args(argv)
    crash_after_s = 2.0
    if args.smoke:
        args.sessions, args.seconds, crash_after_s = 2, 1.0, 0.3
    folder = tempfile.mkdtemp(prefix="audit-load-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # its database goes with the run
    url = args.url or f"sqlite:///{folder}/breakhis.db"
    store = Store.open(url)
    baseline = load(store, 1, min(5.0, args.seconds), args.think_s)
    loaded = load(store, args.sessions, args.seconds, args.think_s)
    flood = load(store, args.sessions, min(10.0, args.seconds), 0.05)  # a stress test, beyond any real use
    store.close()
    result = {"bench": "audit_load", "database": store.engine.dialect.name, "goal": "p95 audit write <= 20 ms on SQLite",
              "baseline_one_session": baseline, "load": loaded, "flood_20_per_s_per_session": flood, "crash": crash(url, crash_after_s)}
    emit(result, args.out, args.smoke)
    crashed = result["crash"]
    good = loaded["errors"] == 0 and loaded["rows_missing"] == 0 and crashed["confirmed"] > 0 and crashed["missing"] == 0
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
