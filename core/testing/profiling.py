"""Where a running process spends its CPU: py-spy samples the process's threads (a Streamlit server
runs each session's script, the batch queue and the websocket in threads of their own, which
cProfile does not see), and the samples are grouped by what the code was doing. Work done without
the GIL (TensorFlow's compute pool, mostly) is not sampled: it is the process's CPU (from /proc)
less the sampled seconds; thread_cpu() names the busiest live threads. For bench/app_load.py."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

# What a sample's stack was doing: the first rule (in this order) with a marker anywhere in the
# stack names it. The model's pass comes first: TensorFlow called from anywhere is the model.
ACTIVITIES = (
    ("model pass (TensorFlow / Keras)", ("/tensorflow/", "/keras/")),
    ("PDF report (fpdf)", ("/fpdf/",)),
    ("audit write (store, SQLAlchemy)", ("/sqlalchemy/", "/core/store/", "core/app/records.py")),
    ("pictures encoded for the page (st.image)", ("streamlit/elements/lib/image_utils.py", "streamlit/elements/image.py",
                                                  "streamlit/runtime/memory_media_file_storage.py")),
    ("decoding, H&E check (core.data)", ("/core/data/images.py", "/core/data/histology.py", "/core/data/stain.py")),
    ("heat maps and overlays (core.model.cam)", ("/core/model/cam.py",)),
    ("tables, CSV, charts (pandas, Arrow, plotly)", ("/pandas/", "/pyarrow/", "/plotly/", "streamlit/elements/arrow.py",
                                                     "streamlit/dataframe_util.py")),
    ("the app's own page code (core.app, pages)", ("/core/app/", "/pages/", "/app.py")),
    ("Streamlit runtime (script runs, messages, websocket)", ("/streamlit/", "/tornado/", "/google/protobuf/",
                                                              "/asyncio/")),
)
OTHER = "other"


def available() -> bool:
    return shutil.which("py-spy") is not None


@contextlib.contextmanager
def record(pid: int, out: Path, rate: int = 200):
    """py-spy samples process `pid` while the block runs: the thread holding the GIL (--gil), so a
    sample is CPU spent by Python code or by C code that keeps the GIL (gc, encoders); without --gil
    py-spy counted a Streamlit server's waiting threads as busy (4 s sampled for 0.7 CPU-s). The raw
    (collapsed-stack) file is written to `out` when it ends."""
    command = ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
               "--output", str(out), "--nonblocking", "--full-filenames", "--gil"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # attached before the work starts
    if process.poll() is not None:
        raise RuntimeError(f"py-spy could not attach: {process.stdout.read().decode(errors='replace')[-500:]}")
    try:
        yield out
    finally:
        process.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of each live thread of `pid`, with its name, from /proc."""
    import os

    tick, threads = os.sysconf("SC_CLK_TCK"), {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        threads[int(task.name)] = text[text.index("(") + 1:text.rindex(")")], (int(fields[11]) + int(fields[12])) / tick
    return threads


def busiest_threads(before: dict, after: dict, top: int = 8) -> list[dict]:
    """The threads that used the most CPU between two thread_cpu() readings."""
    used = [(after[tid][1] - before.get(tid, (None, 0.0))[1], tid, after[tid][0]) for tid in after]
    return [{"tid": tid, "name": name, "cpu_s": round(s, 3)} for s, tid, name in sorted(used, reverse=True)[:top] if s > 0]


AFTER_RUN = (  # what Streamlit does after every script run (streamlit.runtime.scriptrunner.script_runner)
    ("Streamlit's keras.backend.clear_session after each run", "_clean_problem_modules ("),
    ("Streamlit's gc.collect(2) after each run (runner.postScriptGC)", "ScriptRunner._on_script_finished ("),
)


def activity(stack: str) -> str:
    leaf = stack.rsplit(";", 1)[-1]
    for name, marker in AFTER_RUN:  # the collections have no Python frame: the caller is the leaf
        if marker in (stack if marker.startswith("_clean") else leaf):
            return name
    for name, markers in ACTIVITIES:
        if any(marker in stack for marker in markers):
            return name
    return OTHER


def _function(frame: str) -> str:
    """'explain (core/model/cam.py:120)' -> 'explain (core/model/cam.py)': one entry per function."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    for root in ("site-packages/", "/work/"):
        path = path.split(root, 1)[-1]
    return f"{name} ({path})"


def summarise(raw: str, rate: int, top: int = 12) -> dict:
    """Samples per activity (CPU seconds at `rate`, share), the functions holding the most samples
    (self: the stack's last frame) and the app's own functions (inclusive)."""
    by_activity, leaves, own = Counter(), Counter(), Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        by_activity[activity(stack)] += n
        frames = stack.split(";")
        leaves[_function(frames[-1])] += n
        for function in {_function(f) for f in frames if "/core/" in f or "/pages/" in f}:
            own[function] += n
    if not total:
        return {"samples": 0}

    def listed(counter: Counter) -> list[dict]:
        return [{"function": f, "cpu_s": round(n / rate, 3), "share": round(n / total, 3)} for f, n in counter.most_common(top)]

    return {"samples": total, "rate_hz": rate, "cpu_s_sampled": round(total / rate, 3),
            "by_activity": {name: {"cpu_s": round(n / rate, 3), "share": round(n / total, 3)}
                            for name, n in by_activity.most_common()},
            "top_self": listed(leaves), "top_app_functions_inclusive": listed(own)}
