"""Shared pieces of the app tests: bad-input files, plus core.testing.apptest's model folders and AppTest patch.

The app finds its models through BREAKHIS_DEFAULT_MODEL / BREAKHIS_MODEL_DIRS / BREAKHIS_RUNS_DIR
(core.app.registry), so tests point it at small_cnn models at input 64 in a temporary folder.
"""

from __future__ import annotations

import contextlib
import io
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from core.testing.apptest import app_environment, app_like_the_server, make_model_folder, run_app_like_the_server  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "app.py")
APP_TIMEOUT = 180  # seconds per AppTest run: the first run imports TensorFlow on a shared CPU

# ---------------------------------------------------------------- bad inputs

def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tissue_like(size=(96, 128)) -> np.ndarray:
    """Pink/purple textured pixels (H&E-like colours with structure)."""
    rng = np.random.default_rng(0)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    blobs = (np.sin(xx / 5.0) + np.cos(yy / 7.0) > 0.3)[..., None]
    image = np.where(blobs, [150, 70, 160], [235, 175, 210]).astype(np.float32)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def decompression_bomb() -> bytes:
    """A valid PNG header that declares 100000 x 100000 pixels (10 gigapixels), tiny on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, what the app must say or do): every bad input the issue lists."""
    tissue = tissue_like()
    sixteen = io.BytesIO()
    Image.fromarray(tissue[..., 0].astype(np.uint16) * 257).save(sixteen, format="PNG")
    cmyk = io.BytesIO()
    Image.fromarray(tissue).convert("CMYK").save(cmyk, format="JPEG")
    rgba = np.dstack([tissue, np.full(tissue.shape[:2], 200, np.uint8)])
    huge = np.tile(tissue, (48, 40, 1))  # 4608 x 5120: above the working size, downscaled
    photo = np.zeros((120, 160, 3), np.uint8)
    photo[..., 1] = np.linspace(40, 220, 160, dtype=np.uint8)[None, :]  # a green gradient "photo"
    photo[..., 2] = 60
    return {
        "notes.txt": (b"This is a text file, not a histology image.\n", "error"),
        "truncated.png": (png_bytes(tissue)[:400], "error"),
        "bomb.png": (decompression_bomb(), "error"),
        "deep16.png": (sixteen.getvalue(), "not histology"),  # greyscale: decoded with a note, no call
        "cmyk.jpg": (cmyk.getvalue(), "note"),
        "rgba.png": (png_bytes(rgba), "note"),
        "gray.png": (png_bytes(tissue[..., 0]), "not histology"),
        "tiny.png": (png_bytes(np.zeros((1, 1, 3), np.uint8)), "error"),
        "large.png": (png_bytes(huge), "note"),
        "wrong_extension.jpg": (png_bytes(tissue), "note"),
        "empty.png": (b"", "error"),
        "holiday_photo.png": (png_bytes(photo), "not histology"),
    }


def result_lines(out: str) -> list[str]:
    """`predict`'s text output without its header lines (the model's label and the referral rule start '# ')."""
    return [line for line in out.splitlines() if not line.startswith("# ")]


PASSWORD = "a long enough password"
SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]  # a stand-in for a long `python -m core train`


@contextlib.contextmanager
def signed_in_app(root: Path, accounts: dict[str, str] | None = None):
    """The app pointed at a DEMO default model under root/models, its own database, sign-in on (not the
    single-user mode), run like the server; the accounts {name: role} made with PASSWORD. Yields the Store
    and the default model folder; the environment is restored afterwards."""
    import pytest

    from core.store import accounts as account_store
    from core.store.audit import Store

    default = make_model_folder(root / "models" / "default", demo=True)
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, root / "models", default, root / "runs")
        patch.delenv("BREAKHIS_SINGLE_USER")
        store = Store.open()
        for name, role in (accounts or {}).items():
            account_store.add_account(store, name, PASSWORD, role)
        try:
            yield store, default
        finally:
            store.close()


def app_with_models(monkeypatch, models: Path, default: Path, runs: Path):
    """AppTest of app.py, run like the server, with the models under `models`, `default` as the default
    model and `runs` as the runs folder (single-user); run once."""
    from streamlit.testing.v1 import AppTest

    app_like_the_server(monkeypatch, models, default, runs)
    return AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()


def app_on_bundled_models(monkeypatch, runs: Path, default: str):
    """app_with_models on the repository's models/, models/<default> the default ("small-cnn", "gan-default")."""
    return app_with_models(monkeypatch, REPO / "models", REPO / "models" / default, runs)


@contextlib.contextmanager
def write_locked(path):
    """Another process's open write transaction on the SQLite file at `path` (a backup, an sqlite3 shell)."""
    import sqlite3

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


PROBING = "Checking which training engines"  # Retrain's message while the backends are probed (pages/retrain.py)


def open_retrain(app, timeout: float = 240.0):
    """Switch the AppTest to Retrain and rerun it, as the page's waiting fragment does every second, until the
    backends' probe has answered (once per server: a fresh one shows that it is checking before the form)."""
    app.switch_page("pages/retrain.py").run()
    deadline = time.time() + timeout
    while PROBING in texts(app.info) and time.time() < deadline:
        time.sleep(0.5)
        app.run()
    return app


def texts(elements) -> str:
    """The elements' text as a reader sees it: the pages escape text from users (core.app.audit_glue.plain),
    and a backslash before punctuation does not show."""
    import re

    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", "\n".join(str(e.value) for e in elements))


def tables(app, column: str) -> list:
    """The displayed tables (DataFrames) that have `column` (display tables carry no key in AppTest)."""
    return [frame.value for frame in app.dataframe if column in frame.value.columns]


def stop_and_forget(job, runs: Path) -> None:
    """Kill a test's job process (core.app.jobs.Job) and forget it, so no training outlives its test."""
    from core.app import jobs

    jobs.cancel_job(job, runs, force=True)
    deadline = time.time() + 30
    while jobs.is_alive(job) and time.time() < deadline:
        time.sleep(0.2)
    jobs.clear_job(runs)


def finished_job(runs: Path, name: str, end: dict, **job) -> Path:
    """What a finished (or failed) job leaves: its run folder's progress stream and the job file (`job`:
    fields of it, e.g. launched_by)."""
    import json

    from core.app import jobs

    run = runs / name
    run.mkdir(parents=True)
    events = [{"event": "start", "time": time.time()}, {"event": "end", "time": time.time(), **end}]
    (run / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (runs / jobs.JOB_FILE_NAME).write_text(json.dumps({
        "pid": 999999, "run_dir": str(run), "started": time.time(), "command": ["python", "-m", "core", "train"],
        "log": str(run / "train.log"), "settings": {"epochs": 1}, **job}))
    return run
