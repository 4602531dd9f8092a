"""End to end in a real browser: `streamlit run app.py` on localhost, headless Chromium uploads a
real BreakHis sample through the real upload widget and waits for the diagnosis and both overlays.

Skips only when Debian's chromium is absent (CI installs it; never `playwright install`).
A screenshot is saved to tests/artifacts/diagnose_e2e.png.
"""

import contextlib
import os
import re
import time
from pathlib import Path

import pytest

from core.testing.server import CHROMIUM, CHROMIUM_ARGS, streamlit_server
from tests.app_helpers import REPO

ARTIFACTS = REPO / "tests" / "artifacts"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} not installed (apt-get install -y chromium)")


@contextlib.contextmanager
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1800})
        finally:
            browser.close()


def upload_and_wait(page, sample: Path, timeout_ms: int = 180_000) -> float:
    """Upload through the real widget; seconds until both heat-map overlays are displayed."""
    start = time.perf_counter()
    page.locator('input[type="file"]').set_input_files(str(sample))
    for caption in ("Stage 1 Grad-CAM", "Stage 2 Grad-CAM"):
        page.get_by_text(caption, exact=False).first.wait_for(state="visible", timeout=timeout_ms)
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="stImage"] img')]
                 .filter(img => img.complete && img.naturalWidth > 0).length >= 3""", timeout=timeout_ms)
    return time.perf_counter() - start


def test_upload_a_sample_and_see_the_diagnosis_and_overlays(tmp_path, samples_dir):
    sample = next(samples_dir.rglob("SOB_M_DC-14-2523-40-010.png"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(tmp_path) as url, browser_page() as page:
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("heading", name="Diagnose").wait_for(timeout=180_000)
        sidebar = page.locator('[data-testid="stSidebar"]')
        sidebar.get_by_text("DEMO").first.wait_for(timeout=120_000)  # the active model's badge
        seconds = upload_and_wait(page, sample)
        # Each text is waited for (a time-out fails the test): the page streams its elements in, and
        # a single read of the text right after the overlays could come before the rest arrived.
        for text in (sample.name, "Stage 1: benign or malignant", "Stage 1: refer for review", "magnification 40X (file name)"):
            page.get_by_text(text, exact=False).first.wait_for(timeout=120_000)
        body = page.locator("body").inner_text()
        assert sample.name in body and "Stage 1: refer for review" in body and "magnification 40X (file name)" in body
        page.get_by_role("button", name="Results (CSV)").wait_for(timeout=120_000)
        page.wait_for_function(  # the probability tables have drawn (canvas grids)
            """() => document.querySelectorAll('[data-testid="stDataFrame"] canvas').length >= 2""",
            timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "diagnose_e2e.png"), full_page=True)

        page.get_by_role("link", name="Model performance").click()  # the router keeps the sidebar
        page.get_by_role("heading", name="Model performance").wait_for(timeout=120_000)
        page.get_by_text(re.compile("has NO valid accuracy")).wait_for(timeout=120_000)  # case-sensitive
        assert sidebar.get_by_text("DEMO").first.is_visible()
    assert (ARTIFACTS / "diagnose_e2e.png").stat().st_size > 10_000
    print(f"upload to both overlays: {seconds:.2f} s")


def test_a_deep_link_right_after_start_still_gets_the_router(tmp_path):
    """First request of a fresh server is /dataset: Streamlit would run pages/dataset.py alone."""
    with streamlit_server(tmp_path) as url, browser_page() as page:
        page.goto(f"{url}/dataset", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Dataset").wait_for(timeout=180_000)
        sidebar = page.locator('[data-testid="stSidebar"]')
        sidebar.get_by_text("Active model").wait_for(timeout=120_000)
        assert sidebar.get_by_role("link", name="Model performance").is_visible()  # our navigation
        page.get_by_role("link", name="Retrain").click()
        page.get_by_role("heading", name="Retrain").wait_for(timeout=120_000)
        assert sidebar.get_by_text("Active model").is_visible()


def test_the_gan_gallery_shows_real_and_synthetic_patches(tmp_path):
    """The bundled generator in the gallery; the screenshot is kept as tests/artifacts/gan_gallery.png."""
    models = REPO / "models"
    environment = {"BREAKHIS_MODEL_DIRS": str(models), "BREAKHIS_DEFAULT_MODEL": str(models / "default"),
                   "BREAKHIS_RUNS_DIR": str(tmp_path / "runs"), "BREAKHIS_DATA_DIR": str(tmp_path / "data"),
                   "BREAKHIS_SINGLE_USER": "1"}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(tmp_path, environment) as url, browser_page() as page:
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("heading", name="Diagnose").wait_for(timeout=180_000)
        page.get_by_role("link", name="GAN gallery").click()
        page.get_by_role("heading", name="GAN gallery").wait_for(timeout=120_000)
        page.get_by_text("Real patches (bundled samples, same scale)").first.wait_for(timeout=120_000)
        page.get_by_text("Synthetic, seed 0").first.wait_for(timeout=120_000)
        page.wait_for_function(
            """() => [...document.querySelectorAll('[data-testid="stImage"] img')]
                     .filter(img => img.complete && img.naturalWidth > 0).length >= 8""", timeout=120_000)
        # The measured verdict comes first, in words: wait for it (reading the text once, at once,
        # failed when the page was slow), then keep the screenshot of it all.
        page.get_by_text(re.compile("meet the goals|Not measured yet")).first.wait_for(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "gan_gallery.png"), full_page=True)
        body = page.locator("body").inner_text()
        assert "Does NOT meet the goals" in body and "A classifier tells synthetic from real" in body  # measured
    assert (ARTIFACTS / "gan_gallery.png").stat().st_size > 20_000


def test_the_slide_page_shows_a_heat_map_and_opens_a_tile(tmp_path):
    """A large image uploaded on the Slide page with the bundled model: the call, the plotly heat
    map, the top tile with both Grad-CAMs; screenshot in tests/artifacts/slide_e2e.png."""
    import numpy as np
    from PIL import Image

    from core.testing.slides import mosaic

    models = REPO / "models"
    environment = {"BREAKHIS_MODEL_DIRS": str(models), "BREAKHIS_DEFAULT_MODEL": str(models / "default"),
                   "BREAKHIS_RUNS_DIR": str(tmp_path / "runs"), "BREAKHIS_SLIDE_DIRS": "", "BREAKHIS_SINGLE_USER": "1",
                   "BREAKHIS_DATA_DIR": str(tmp_path / "data")}
    rgb, _ = mosaic()
    upload = tmp_path / "SOB_M_MC-14-19979-200-900.tif"  # a TIFF upload: read with tiffslide from memory
    Image.fromarray(np.ascontiguousarray(rgb[460:1380, 700:4200])).save(upload, compression="tiff_deflate")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(tmp_path, environment) as url, browser_page() as page:
        page.goto(f"{url}/slide", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Slide").wait_for(timeout=180_000)
        page.locator('input[type="file"]').set_input_files(str(upload))
        page.get_by_role("button", name="Analyse slide").click(timeout=120_000)
        page.get_by_text("Slide call", exact=False).first.wait_for(timeout=180_000)
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=120_000)
        for caption in ("Tile at full resolution", "Stage 1 Grad-CAM", "Stage 2 Grad-CAM"):
            page.get_by_text(caption, exact=False).first.wait_for(timeout=120_000)
        page.get_by_role("button", name="Regions, the driving one first (GeoJSON, QuPath)").wait_for(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "slide_e2e.png"), full_page=True)
        assert "LIMITED DATA" in page.locator("body").inner_text()
    assert (ARTIFACTS / "slide_e2e.png").stat().st_size > 20_000
