"""The app as a real server for the browser tests and bench/app_load.py: `streamlit run app.py` on a
free localhost port, Debian's Chromium (Playwright drives it; no browser download) and signing a
page in through the form."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from core.paths import REPO
from core.testing.apptest import app_environment, make_model_folder

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("streamlit did not become healthy")


@contextlib.contextmanager
def streamlit_server(root: Path, environment: dict | None = None, started: dict | None = None,
                     command: list[str] | None = None):
    """`streamlit run app.py` on a free localhost port; by default with a tiny DEMO model.
    `started`, if given, receives the server's Popen as "process" (the benchmarks read its memory
    and CPU time). `command` replaces `python` (e.g. a profiler's `python -m cProfile -o FILE`)."""
    if environment is None:
        default = make_model_folder(root / "models" / "default", demo=True)
        environment = app_environment(root / "models", default, root / "runs")
    port = free_port()
    env = {**os.environ, **environment, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(root / "streamlit.log", "wb")
    process = subprocess.Popen(
        [*(command or [sys.executable]), "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    if started is not None:
        started["process"] = process
    try:
        wait_for_health(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def sign_in_page(page, name: str, password: str, timeout_ms: float = 180_000) -> None:
    """Sign a Playwright page in through the app's form; returns once the Diagnose page shows."""
    page.locator('input[aria-label="Name"]').wait_for(timeout=timeout_ms)
    page.locator('input[aria-label="Name"]').fill(name)
    page.locator('input[aria-label="Password"]').fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Diagnose").wait_for(timeout=timeout_ms)
