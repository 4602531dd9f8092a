"""Several pathologists at once: time from upload to all overlays, N signed-in sessions x 3 images.

Each session signs in (its own pathologist account, in a fresh database: the sign-in form, as a
deployment without BREAKHIS_SINGLE_USER has it), then uploads its 3 images through the real
uploader of the Diagnose page: app.py driven by streamlit.testing.v1.AppTest, one AppTest per
session, all in this process as one server's sessions are; with --browser also `streamlit run
app.py` and one real headless Chromium page per session. A session is done when its 3 images and
6 heat-map overlays are on the page. In the same run the core's own diagnosis of the same images
is timed (core.data.images.load_image + core.model.cam.explain, one image after the other, warm):
the goal is wall time <= 3x the core's time for those images.

With --browser the server's CPU seconds per 3-image upload (from the upload until the server is
idle again) are set against the core's CPU seconds for the same 3 images, and with --profile
(needs `pip install py-spy`) one more single-session upload is sampled by py-spy to say where the
server's CPU goes (core.testing.profiling).

    python bench/app_load.py [--sessions 1 4 8] [--browser] [--profile] [--model models/default]
                             [--rounds 2] [--out FILE.json] [--smoke]

--smoke: 1 session, 1 round, no warm-up round (Chromium too where /usr/bin/chromium exists; seconds; CI).
Prints one JSON object: per N, each session's seconds (p50, p95), the wall time, the core's time
for the same images, the ratio, CPU seconds, and the peak memory.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import add_smoke, emit, machine  # noqa: E402 - bench/common.py (the script's own folder)

from core.paths import DEFAULT_MODEL_DIR, REPO, SAMPLES_DIR  # noqa: E402

GOAL = 3.0
PER_SESSION = 3
PASSWORD = "bench password, long enough"


def session_images(samples: list[Path], sessions: int, offset: int = 0) -> list[list[Path]]:
    """3 images per session, different between sessions where the samples allow."""
    return [[samples[(offset + PER_SESSION * s + i) % len(samples)] for i in range(PER_SESSION)]
            for s in range(sessions)]


def core_seconds(model_dir: Path, paths: list[Path], repeats: int = 3) -> dict[str, tuple[float, float]]:
    """Per image: median (wall, CPU) seconds of the core's diagnosis (load + explain: prediction and
    both maps). CPU is this process's, all threads: what the same work costs a server's cores."""
    from core.data.images import load_image
    from core.model.cam import explain
    from core.model.loading import load_predictor

    predictor = load_predictor(model_dir)

    def diagnose(path):
        explain(predictor, load_image(path.read_bytes(), name=path.name).rgb)

    diagnose(paths[0])  # tracing is not a diagnosis
    times = {}
    for path in dict.fromkeys(paths):
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            diagnose(path)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        times[path.name] = statistics.median(walls), statistics.median(cpus)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def overlays_shown(app) -> int:
    return sum(1 for image in app.image for c in image.captions if c.startswith(("Stage 1", "Stage 2")))


def apptest_round(groups: list[list[Path]], timeout: float) -> tuple[list[float], float]:
    """One round: a fresh AppTest per session, signed in, page rendered; then all upload at once."""
    from streamlit.testing.v1 import AppTest

    from core.testing.apptest import sign_in

    apps = []
    for i, _ in enumerate(groups):
        app = sign_in(AppTest.from_file(str(REPO / "app.py"), default_timeout=timeout).run(), f"bench{i}", PASSWORD)
        try:
            app.file_uploader(key="uploads")
        except KeyError:
            raise RuntimeError(f"session {i}: no uploader after signing in (titles {[t.value for t in app.title]}, "
                               f"errors {[e.value for e in app.error]}, {app.exception})") from None
        apps.append(app)  # the first sign-in also loads the model, behind its spinner
    barrier, seconds, errors = threading.Barrier(len(apps) + 1), [0.0] * len(apps), []

    def session(i: int) -> None:
        app = apps[i]
        app.file_uploader(key="uploads").set_value([(p.name, p.read_bytes(), "image/png") for p in groups[i]])
        barrier.wait()
        start = time.perf_counter()
        app.run()
        seconds[i] = time.perf_counter() - start
        if app.exception or overlays_shown(app) != 2 * len(groups[i]):
            shown = [f"{e.message} {' '.join(e.stack_trace[-3:])}" for e in app.exception]
            errors.append(f"session {i}: {overlays_shown(app)} overlays {shown}")

    threads = [threading.Thread(target=session, args=(i,)) for i in range(len(apps))]
    [t.start() for t in threads]
    barrier.wait()
    start = time.perf_counter()
    [t.join() for t in threads]
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError("; ".join(errors))
    return seconds, wall


def browser_round(url: str, browser, groups: list[list[Path]], timeout: float, cpu) -> tuple[list[float], float]:
    """One round in Chromium: a fresh page per session, signed in; all upload, each is timed to its
    9 pictures; `cpu.start()` / `cpu.stop()` bracket the uploads (stop waits for the server's idle)."""
    from core.testing.server import sign_in_page

    pages = [browser.new_page(viewport={"width": 1400, "height": 1800}) for _ in groups]
    try:
        for i, page in enumerate(pages):
            page.goto(url, wait_until="domcontentloaded")
            sign_in_page(page, f"bench{i}", PASSWORD, timeout * 1000)
            page.get_by_text("Microscopy images").wait_for(timeout=timeout * 1000)
        count = """() => [...document.querySelectorAll('[data-testid="stImage"] img')]
                   .filter(img => img.complete && img.naturalWidth > 0).length"""
        cpu.start()
        start = time.perf_counter()
        for page, group in zip(pages, groups):
            page.locator('input[type="file"]').set_input_files([str(p) for p in group])
        seconds = [None] * len(pages)
        while any(s is None for s in seconds):
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"sessions not done after {timeout} s")
            for i, page in enumerate(pages):
                if seconds[i] is None and page.evaluate(count) >= 3 * len(groups[i]):
                    seconds[i] = time.perf_counter() - start
            time.sleep(0.02)
        cpu.stop()
        return seconds, max(seconds)
    finally:
        for page in pages:
            page.close()


def peak_memory_mb(pid: int | str = "self") -> float:
    """VmHWM (peak resident memory) of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def cpu_seconds(match) -> float:
    """User + system CPU seconds of every live process whose /proc entry `match(pid, command)` accepts."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, text = stat.parent.name, stat.read_text()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if match(pid, command):
            fields = text[text.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


class Profiler:
    """py-spy on the server from the uploads until the server is idle (not the page load or sign-in)."""

    def __init__(self, pid: int, out: Path, rate: int = 200):
        from core.testing import profiling

        self.recording, self.meter = profiling.record(pid, out, rate), CpuMeter(pid)

    def start(self) -> None:
        from core.testing.profiling import thread_cpu

        self.recording.__enter__()
        self.meter.start()
        self.threads_before = thread_cpu(self.meter.pid)

    def stop(self) -> None:
        from core.testing.profiling import busiest_threads, thread_cpu

        self.meter.stop()
        self.threads = busiest_threads(self.threads_before, thread_cpu(self.meter.pid))
        self.recording.__exit__(None, None, None)


class CpuMeter:
    """CPU seconds of the server and of Chromium between start() and stop(); stop() first waits
    until the server has been idle for half a second (its script runs end after the pictures)."""

    def __init__(self, server_pid: int):
        self.pid, server = server_pid, str(server_pid)
        self.processes = {"server": lambda pid, command: pid == server,
                          "chromium": lambda pid, command: "chrom" in command.split(" ")[0]}
        self.used: list[dict[str, float]] = []

    def read(self) -> dict[str, float]:
        return {name: cpu_seconds(match) for name, match in self.processes.items()}

    def start(self) -> None:
        self.before = self.read()

    def stop(self, idle_s: float = 0.5, limit_s: float = 60) -> None:
        deadline, last = time.monotonic() + limit_s, self.read()["server"]
        while time.monotonic() < deadline:
            time.sleep(idle_s)
            now = self.read()["server"]
            if now - last < 0.02:
                break
            last = now
        after = self.read()
        self.used.append({name: after[name] - self.before[name] for name in after})


def summary(per_round: list[tuple[list[float], float]], core_s: float, images: int) -> dict:
    sessions = [s for seconds, _ in per_round for s in seconds]
    wall = statistics.median(w for _, w in per_round)
    return {"images": images, "rounds": len(per_round), "session_p50_s": round(percentile(sessions, 0.5), 3),
            "session_p95_s": round(percentile(sessions, 0.95), 3), "wall_s": round(wall, 3),
            "core_diagnosis_s": round(core_s, 3), "ratio": round(wall / core_s, 2), "goal": GOAL,
            "meets_goal": bool(wall / core_s <= GOAL)}


def signed_in_environment(model: Path, sessions: int) -> dict:
    """The app's settings for this run (a fresh runs and data folder; sign-in on), with one
    pathologist account per session in the new database."""
    from core.store import accounts
    from core.store.audit import Store

    root = Path(tempfile.mkdtemp(prefix="app_load-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # its database and signing key go with the run
    environment = {"BREAKHIS_DEFAULT_MODEL": str(model), "BREAKHIS_MODEL_DIRS": str(model.parent),
                   "BREAKHIS_RUNS_DIR": str(root / "runs"), "BREAKHIS_DATA_DIR": str(root / "data")}
    os.environ.update(environment)
    for name in ("BREAKHIS_SINGLE_USER", "BREAKHIS_KEEP_IMAGES", "BREAKHIS_DATABASE_URL"):
        os.environ.pop(name, None)
    store = Store.open()
    for i in range(sessions):
        accounts.add_account(store, f"bench{i}", PASSWORD, "pathologist")
    store.close()
    return environment


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--browser", action="store_true", help="real Chromium pages on `streamlit run app.py`")
    parser.add_argument("--profile", action="store_true", help="with --browser: py-spy one 3-image upload")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per N (after one warm-up round)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "app_load.json")
    add_smoke(parser)
    args = parser.parse_args(argv)
    from core.testing.server import CHROMIUM

    if args.smoke:
        args.sessions, args.rounds, args.timeout = [1], 1, 240
        args.browser = os.path.exists(CHROMIUM)
    samples = sorted(SAMPLES_DIR.rglob("*.png"))
    model = args.model.resolve()
    environment = signed_in_environment(model, max(args.sessions))
    core = core_seconds(model, samples)
    from core.model.folders import read_card

    card = read_card(model)
    result = {"bench": "app_load", "model": card.get("name"), "backbone": card.get("backbone"),
              "input_size": card.get("input_size"), "images_per_session": PER_SESSION, "signed_in": True,
              "core_definition": "load_image + cam.explain per image, one after the other (warm)",
              "machine": machine()}

    def measure(run_round) -> dict:
        figures = {}
        for n in args.sessions:
            if not args.smoke:  # warm-up round: new batch shapes, first renders (a smoke run's figures are not timings)
                run_round(session_images(samples, n, offset=n))
            rounds = [run_round(session_images(samples, n, offset=n + r + 1)) for r in range(args.rounds)]
            images = [p for r in range(args.rounds) for g in session_images(samples, n, n + r + 1) for p in g]
            core_s = sum(core[p.name][0] for p in images) / args.rounds
            figures[str(n)] = summary(rounds, core_s, n * PER_SESSION)
            figures[str(n)]["core_cpu_s"] = round(sum(core[p.name][1] for p in images) / args.rounds, 3)
        return figures

    import pytest

    from core.testing.apptest import run_app_like_the_server, run_apptests_concurrently

    with pytest.MonkeyPatch.context() as patch:
        run_app_like_the_server(patch)
        run_apptests_concurrently(patch)
        result["apptest"] = {"driver": "streamlit.testing.v1.AppTest, one per signed-in session, concurrent threads",
                             **measure(lambda groups: apptest_round(groups, args.timeout)),
                             "process_peak_memory_mb": peak_memory_mb()}
    if args.browser:
        result["browser"] = browser_figures(args, environment, measure, samples)
    return emit(result, args.out, args.smoke)


def browser_figures(args, environment: dict, measure, samples: list[Path]) -> dict:
    """The same rounds through `streamlit run app.py` and Chromium, with CPU seconds per upload."""
    from playwright.sync_api import sync_playwright

    from core.testing import profiling
    from core.testing.server import CHROMIUM, CHROMIUM_ARGS, streamlit_server

    started: dict = {}
    folder = Path(tempfile.mkdtemp(prefix="app_load-server-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with streamlit_server(folder, environment, started) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pid = started["process"].pid
        meters: dict[int, CpuMeter] = {}

        def timed_round(groups):
            meter = meters.setdefault(len(groups), CpuMeter(pid))
            return browser_round(url, browser, groups, args.timeout, meter)

        figures = measure(timed_round)
        for n, meter in meters.items():  # median over the timed rounds (the warm-up round is the first)
            used = meter.used[1:] or meter.used
            cpu = {name: round(statistics.median(u[name] for u in used), 2) for name in used[0]}
            per_upload = cpu["server"] / n
            core_cpu = figures[str(n)]["core_cpu_s"] / n
            figures[str(n)].update({"cpu_s": cpu, "server_cpu_s_per_upload": round(per_upload, 3),
                                    "core_cpu_s_per_upload": round(core_cpu, 3),
                                    "server_cpu_vs_core": round(per_upload / core_cpu, 1)})
        out = {"driver": "streamlit run app.py + headless Chromium, one signed-in page per session",
               "cpu_s": "CPU seconds per round, from the uploads until the server is idle again",
               **figures, "server_peak_memory_mb": peak_memory_mb(pid)}
        if args.profile:
            if not profiling.available():
                out["profile"] = "py-spy is not installed (pip install py-spy)"
            else:
                raw = folder / "upload.pyspy.txt"
                profiler = Profiler(pid, raw, rate=200)
                browser_round(url, browser, session_images(samples, 1, offset=5), args.timeout, profiler)
                out["profile"] = {"upload": f"1 session x {PER_SESSION} images, py-spy at 200 Hz on the server "
                                            "(the thread holding the GIL) from the upload until the server is idle",
                                  "server_cpu_s": round(profiler.meter.used[0]["server"], 3),
                                  **profiling.summarise(raw.read_text(), 200), "busiest_threads": profiler.threads}
                sampled = out["profile"].get("cpu_s_sampled", 0.0)
                out["profile"]["cpu_s_without_the_gil"] = round(out["profile"]["server_cpu_s"] - sampled, 3)
        browser.close()
    return out


if __name__ == "__main__":
    sys.exit(main())
