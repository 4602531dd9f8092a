"""Several pathologists at once: time from upload to all overlays, N concurrent sessions x 3 images.

Each session uploads its 3 images through the real uploader of the Diagnose page (app.py driven by
streamlit.testing.v1.AppTest, one AppTest per session, all in this process as one server's
sessions are; with --browser, `streamlit run app.py` and one real headless Chromium page per
session). A session is done when its 3 images and 6 heat-map overlays are on the page. In the
same run the core's own diagnosis of the same images is timed (core.data.images.load_image +
core.model.cam.explain, one image after the other, warm): the goal is wall time <= 3x the core's
time for those images, with 1 and with 4 sessions.

    python bench/app_load.py [--sessions 1 4 8] [--browser] [--model models/default] [--out FILE.json]

Prints one JSON object: per N, each session's seconds (p50, p95), the wall time, the core's time
for the same images, the ratio, and the server's peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import emit  # noqa: E402 - bench/common.py (the script's own folder)

from core.paths import REPO, SAMPLES_DIR  # noqa: E402

GOAL = 3.0
PER_SESSION = 3


def session_images(samples: list[Path], sessions: int, offset: int = 0) -> list[list[Path]]:
    """3 images per session, different between sessions where the samples allow."""
    return [[samples[(offset + PER_SESSION * s + i) % len(samples)] for i in range(PER_SESSION)]
            for s in range(sessions)]


def core_seconds(model_dir: Path, paths: list[Path], repeats: int = 3) -> dict[str, float]:
    """Median seconds of the core's diagnosis (load + explain: prediction and both maps) per image."""
    from core.data.images import load_image
    from core.model.cam import explain
    from core.model.loading import load_predictor

    predictor = load_predictor(model_dir)

    def diagnose(path):
        explain(predictor, load_image(path.read_bytes(), name=path.name).rgb)

    diagnose(paths[0])  # tracing is not a diagnosis
    times = {}
    for path in dict.fromkeys(paths):
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            diagnose(path)
            runs.append(time.perf_counter() - start)
        times[path.name] = statistics.median(runs)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def overlays_shown(app) -> int:
    return sum(1 for image in app.image for c in image.captions if c.startswith(("Stage 1", "Stage 2")))


def apptest_round(groups: list[list[Path]], timeout: float) -> tuple[list[float], float]:
    """One round: a fresh AppTest per session, page rendered, then all upload at once."""
    from streamlit.testing.v1 import AppTest

    apps = [AppTest.from_file(str(REPO / "app.py"), default_timeout=timeout) for _ in groups]
    for app in apps:
        app.run()  # the page before any upload (and, once, the model load behind its spinner)
    barrier, seconds, errors = threading.Barrier(len(apps) + 1), [0.0] * len(apps), []

    def session(i: int) -> None:
        app = apps[i]
        app.file_uploader(key="uploads").set_value([(p.name, p.read_bytes(), "image/png") for p in groups[i]])
        barrier.wait()
        start = time.perf_counter()
        app.run()
        seconds[i] = time.perf_counter() - start
        if app.exception or overlays_shown(app) != 2 * len(groups[i]):
            errors.append(f"session {i}: {overlays_shown(app)} overlays ({app.exception})")

    threads = [threading.Thread(target=session, args=(i,)) for i in range(len(apps))]
    [t.start() for t in threads]
    barrier.wait()
    start = time.perf_counter()
    [t.join() for t in threads]
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError("; ".join(errors))
    return seconds, wall


def browser_round(url: str, browser, groups: list[list[Path]], timeout: float) -> tuple[list[float], float]:
    """One round in Chromium: a fresh page per session; all upload, then each is timed to 9 pictures."""
    pages = [browser.new_page(viewport={"width": 1400, "height": 1800}) for _ in groups]
    try:
        for page in pages:
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text("Microscopy images").wait_for(timeout=timeout * 1000)
        count = """() => [...document.querySelectorAll('[data-testid="stImage"] img')]
                   .filter(img => img.complete && img.naturalWidth > 0).length"""
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


def summary(per_round: list[tuple[list[float], float]], core_s: float, images: int) -> dict:
    sessions = [s for seconds, _ in per_round for s in seconds]
    wall = statistics.median(w for _, w in per_round)
    return {"images": images, "rounds": len(per_round), "session_p50_s": round(percentile(sessions, 0.5), 3),
            "session_p95_s": round(percentile(sessions, 0.95), 3), "wall_s": round(wall, 3),
            "core_diagnosis_s": round(core_s, 3), "ratio": round(wall / core_s, 2), "goal": GOAL,
            "meets_goal": bool(wall / core_s <= GOAL)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--browser", action="store_true", help="real Chromium pages on `streamlit run app.py`")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per N (after one warm-up round)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "app_load.json")
    args = parser.parse_args(argv)
    samples = sorted(SAMPLES_DIR.rglob("*.png"))
    os.environ["BREAKHIS_DEFAULT_MODEL"] = str(args.model)
    os.environ["BREAKHIS_MODEL_DIRS"] = str(args.model.parent)
    os.environ["BREAKHIS_RUNS_DIR"] = tempfile.mkdtemp()
    core = core_seconds(args.model, samples)
    card = json.loads((args.model / "card.json").read_text())
    result = {"bench": "app_load", "model": card.get("name"), "backbone": card.get("backbone"),
              "input_size": card.get("input_size"), "images_per_session": PER_SESSION,
              "core_definition": "load_image + cam.explain per image, one after the other (warm)",
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}}

    def measure(run_round) -> dict:
        figures = {}
        for n in args.sessions:
            run_round(session_images(samples, n, offset=n))  # warm-up round: new batch shapes, first renders
            rounds = [run_round(session_images(samples, n, offset=n + r + 1)) for r in range(args.rounds)]
            images = [p for r in range(args.rounds) for g in session_images(samples, n, n + r + 1) for p in g]
            core_s = sum(core[p.name] for p in images) / args.rounds
            figures[str(n)] = summary(rounds, core_s, n * PER_SESSION)
        return figures

    import pytest

    from tests.app_testing import run_app_like_the_server

    with pytest.MonkeyPatch.context() as patch:
        run_app_like_the_server(patch)
        result["apptest"] = {"driver": "streamlit.testing.v1.AppTest, one per session, concurrent threads",
                             **measure(lambda groups: apptest_round(groups, args.timeout)),
                             "process_peak_memory_mb": peak_memory_mb()}
    if args.browser:
        from playwright.sync_api import sync_playwright

        sys.path.insert(0, str(REPO))  # the browser tests' server and Chromium helpers
        from tests.test_browser_e2e import CHROMIUM, CHROMIUM_ARGS, streamlit_server

        environment = {key: os.environ[key] for key in ("BREAKHIS_DEFAULT_MODEL", "BREAKHIS_MODEL_DIRS",
                                                        "BREAKHIS_RUNS_DIR")}
        started: dict = {}
        with streamlit_server(Path(tempfile.mkdtemp()), environment, started) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            server = str(started["process"].pid)
            processes = {"server": lambda pid, command: pid == server,
                         "chromium": lambda pid, command: "chrom" in command.split(" ")[0]}
            cpu: dict = {}

            def timed_round(groups):
                """A browser round, and where the CPU went: the app's server or Chromium's pages."""
                before = {name: cpu_seconds(match) for name, match in processes.items()}
                result_ = browser_round(url, browser, groups, args.timeout)
                for name, match in processes.items():
                    cpu.setdefault(len(groups), {}).setdefault(name, []).append(cpu_seconds(match) - before[name])
                return result_

            figures = measure(timed_round)
            for n, used in cpu.items():  # median over the timed rounds (the warm-up round is the first)
                figures[str(n)]["cpu_s"] = {name: round(statistics.median(v[1:] or v), 2) for name, v in used.items()}
            result["browser"] = {"driver": "streamlit run app.py + headless Chromium, one page per session",
                                 "cpu_s": "CPU seconds per round, from page load to all pictures shown",
                                 **figures, "server_peak_memory_mb": peak_memory_mb(started["process"].pid)}
            browser.close()
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
