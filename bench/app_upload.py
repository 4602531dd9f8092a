"""How long the Diagnose page takes from an upload to both heat-map overlays, against a bare forward.

Drives the real app (app.py, through streamlit.testing.v1.AppTest and its file_uploader) and, in
the same process and run, times the core model's forward pass on one image. Each upload is a
different real sample, so nothing is served from the session's caches.

    python bench/app_upload.py [--model models/default] [--uploads 5] [--browser] [--out bench/results/app_upload.json]

Prints one JSON object (and writes it to --out): medians in seconds and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from core.paths import REPO


def tiny_model(folder: Path) -> Path:
    from core.app.testing import make_model_folder

    return make_model_folder(folder, demo=True, name="bench-tiny")


def bare_forward_seconds(model_dir: Path, rgb, repeats: int = 20) -> dict[str, float]:
    """Median seconds for one image: the core's compiled prediction pass (resize + forward,
    Predictor.probabilities) and a plain eager Keras call on the preprocessed batch."""
    import tensorflow as tf

    from core.model.predict import Predictor

    predictor = Predictor.load(model_dir)
    batch = tf.constant(predictor.model_input([rgb]))

    def median_of(call) -> float:
        call()  # warm-up: tracing and first-call allocations are not a forward pass
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return {"compiled": median_of(lambda: predictor.probabilities([rgb])),
            "eager": median_of(lambda: predictor.model(batch, training=False)["stage1"].numpy())}


def upload_seconds(samples: list[Path], timeout: float) -> tuple[list[float], float]:
    """Per upload: seconds for the app run that reads, predicts and draws both overlays."""
    import pytest
    from streamlit.testing.v1 import AppTest

    from core.app.testing import run_app_like_the_server

    with pytest.MonkeyPatch.context() as patch:
        run_app_like_the_server(patch)  # rerun app.py each time, as the server does
        app = AppTest.from_file(str(REPO / "app.py"), default_timeout=timeout)
        start = time.perf_counter()
        app.run()
        first_render = time.perf_counter() - start
        times = []
        for sample in samples:
            app.file_uploader(key="uploads").set_value((sample.name, sample.read_bytes(), "image/png"))
            start = time.perf_counter()
            app.run()
            elapsed = time.perf_counter() - start
            captions = [c for image in app.image for c in image.captions]
            if app.exception or not any(c.startswith("Stage 1") for c in captions) \
                    or not any(c.startswith("Stage 2") for c in captions):
                raise RuntimeError(f"{sample.name}: overlays not shown ({app.exception})")
            times.append(elapsed)
    return times, first_render


def browser_seconds(model_dir: Path, samples: list[Path]) -> dict:
    """The same in a real browser: `streamlit run app.py` + headless Chromium (tests' helpers)."""
    from tests.test_browser_e2e import browser_page, streamlit_server

    environment = {"BREAKHIS_DEFAULT_MODEL": str(model_dir), "BREAKHIS_MODEL_DIRS": str(model_dir.parent),
                   "BREAKHIS_RUNS_DIR": tempfile.mkdtemp()}
    times = []
    with streamlit_server(Path(tempfile.mkdtemp()), environment) as url, browser_page() as page:
        start = time.perf_counter()
        page.goto(url)
        page.get_by_text("Microscopy images").wait_for(timeout=300_000)  # model loaded and warmed up
        ready = time.perf_counter() - start
        for n, sample in enumerate(samples, start=1):
            start = time.perf_counter()
            page.locator('input[type="file"]').set_input_files(str(sample))  # adds to the uploads
            page.wait_for_function(f"""() => [...document.querySelectorAll('[data-testid="stImage"] img')]
                                       .filter(img => img.complete && img.naturalWidth > 0).length >= {3 * n}""",
                                   timeout=300_000)
            times.append(time.perf_counter() - start)
    return {"page_ready_s": round(ready, 3), "first_upload_to_overlays_s": round(times[0], 3),
            "upload_to_both_overlays_median_s": round(statistics.median(times[1:] or times), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "default"))
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "app_upload.json"))
    parser.add_argument("--browser", action="store_true",
                        help="also time a real browser (needs /usr/bin/chromium)")
    args = parser.parse_args()

    from core.data.images import load_image

    model_dir, note = Path(args.model), ""
    if not (model_dir / "model.keras").is_file():
        model_dir = tiny_model(Path(tempfile.mkdtemp()) / "tiny")
        note = f"{args.model} not found: used an untrained small_cnn at input 64"
    os.environ["BREAKHIS_DEFAULT_MODEL"] = str(model_dir)
    os.environ.setdefault("BREAKHIS_MODEL_DIRS", str(model_dir.parent))
    samples = sorted((REPO / "assets" / "samples").rglob("*.png"))[: args.uploads + 1]
    uploads, first_render = upload_seconds(samples, args.timeout)
    forward = bare_forward_seconds(model_dir, load_image(samples[0]).rgb)
    warm = uploads[1:] or uploads  # the first upload also traces the Grad-CAM graph
    card = json.loads((model_dir / "card.json").read_text())
    result = {
        "bench": "app_upload", "model": card.get("name"), "backbone": card.get("backbone"),
        "input_size": card.get("input_size"), "note": note,
        "driver": "streamlit.testing.v1.AppTest + st.file_uploader (app.py, Diagnose page, Grad-CAM)",
        "warm_uploads": len(warm), "image_hw": list(load_image(samples[0]).rgb.shape[:2]),
        "first_page_render_s": round(first_render, 3),
        "first_upload_to_overlays_s": round(uploads[0], 3),
        "upload_to_both_overlays_median_s": round(statistics.median(warm), 3),
        "bare_forward_median_s": round(forward["compiled"], 5),
        "bare_forward_definition": "core Predictor.probabilities on one image (compiled resize + forward)",
        "eager_keras_call_median_s": round(forward["eager"], 5),
        "ratio_upload_to_forward": round(statistics.median(warm) / forward["compiled"], 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    if args.browser:
        browser = browser_seconds(model_dir, samples[: args.uploads + 1])
        browser["ratio_upload_to_forward"] = round(browser["upload_to_both_overlays_median_s"] / forward["compiled"], 1)
        result["browser"] = {"driver": "streamlit run app.py + headless Chromium, real st.file_uploader", **browser}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
