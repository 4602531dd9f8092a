"""The Slide page through AppTest: a server-side slide analysed with the bundled whole-field model
(models/small-cnn, whose tiles are one 200X field each), its call,
heat map, a picked tile with both Grad-CAMs, downloads; a bad slide gets a message."""

import hashlib

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.model.heatmap import COLOUR_SCALE, P_MALIGNANT_SCALE
from tests.app_helpers import APP, APP_TIMEOUT, app_like_the_server
from tests.conftest import SHARED, WHOLE_FIELD_MODEL


def texts(elements) -> str:
    return " ".join(str(e.value) for e in elements)


@pytest.fixture(scope="module")
def slide_dirs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server_slides")
    field = np.asarray(Image.open(next((SHARED / "real").rglob("SOB_M_MC-14-18842D-200-016.png"))).convert("RGB"))
    Image.fromarray(np.concatenate([field, field[::-1]], axis=0)).save(folder / "SOB_M_MC-14-18842D-200-901.png")
    (folder / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 40)
    import tifffile  # its resolution tag says 0.001 um/px: one model tile would be 225 GiB

    _level0_zeroed(folder / "damaged_level0.tif", np.tile(field, (4, 4, 1)))  # thumbnail from level 1
    tifffile.imwrite(folder / "tiny_mpp.tif", np.concatenate([field, field[::-1]], axis=0), photometric="rgb",
                     tile=(256, 256), resolution=(1e7, 1e7), resolutionunit="CENTIMETER")
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, WHOLE_FIELD_MODEL.parent, WHOLE_FIELD_MODEL, tmp_path_factory.mktemp("runs"))
        patch.setenv("BREAKHIS_SLIDE_DIRS", str(folder))
        yield folder


def _level0_zeroed(path, rgb):
    """A 200X pyramid whose level-0 tile data is zeroed (bit rot): it is analysed at level 1."""
    import tifffile

    from core.testing.slides import write_pyramid

    write_pyramid(path, rgb, mpp=0.5, levels=2)
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        start, end = min(page.dataoffsets), max(o + c for o, c in zip(page.dataoffsets, page.databytecounts))
    data = bytearray(path.read_bytes())
    data[start:end] = bytes(end - start)
    path.write_bytes(bytes(data))


def test_a_slide_is_analysed_and_a_tile_opened(slide_dirs):
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/slide.py").run()
    assert not app.exception and app.title[0].value == "Slide"
    assert "LIMITED DATA" in texts(app.warning)
    pick = app.selectbox(key="slide_pick")
    pick.set_value(next(o for o in pick.options if o.endswith("901.png"))).run()
    app.button(key="slide_start").click().run()
    assert not app.exception, app.exception
    shown = texts(app.markdown)
    assert "Slide call" in shown and "of 2 tissue tiles" in shown
    assert "region of connected tiles" in texts(app.caption)
    spec = app.get("plotly_chart")[0].proto.spec
    if "driven by region" in shown:  # the region that drove the call is outlined on the map
        assert '"driving region"' in spec
    else:
        assert "no region qualified" in shown and '"driving region"' not in spec
        assert "No region qualified" in texts(app.info)
    assert len(app.image) == 3  # the tile and its two Grad-CAMs
    # Its audit row names the file's contents, as an upload's does (it had no SHA-256).
    from core.store.audit import Store

    row = [e for e in Store.open().events(kinds="slide") if e["subject"].endswith("901.png")][-1]
    data = (slide_dirs / "SOB_M_MC-14-18842D-200-901.png").read_bytes()
    assert row["image_sha256"] == hashlib.sha256(data).hexdigest()
    assert row["details"]["settings"]["file"] == "SHA-256 of the whole file"
    tiles = app.selectbox(key="slide_tile")
    # small-cnn's subtype is not reliable (core.evaluation.subtype_trust): said in the map's caption and tiles
    assert "Subtype: not reliable for this model. Most probable subtype per tile" in texts(app.caption)
    assert all("subtype not reliable for this model (most probable: " in option for option in tiles.options)
    assert P_MALIGNANT_SCALE in texts(app.caption) and COLOUR_SCALE in texts(app.caption)  # the map's, the tile's
    tiles.set_value(tiles.options[-1]).run()
    assert not app.exception and len(app.image) == 3
    app.slider(key="slide_opacity").set_value(0.8).run()
    assert not app.exception and "Slide call" in texts(app.markdown)  # kept, not re-run


def test_a_broken_slide_gets_a_message(slide_dirs):
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/slide.py").run()
    pick = app.selectbox(key="slide_pick")
    pick.set_value(next(o for o in pick.options if o.endswith("broken.tif"))).run()
    app.button(key="slide_start").click().run()
    assert not app.exception
    assert "corrupt" in texts(app.error) or "not a slide" in texts(app.error)
    assert "slide_cancel" not in [b.key for b in app.button] and not app.get("progress")  # nothing left running


def test_a_new_upload_of_the_same_name_and_length_is_analysed_anew(slide_dirs):
    """The page keys a result by the upload's content: two uncompressed TIFFs of one size have the
    same name and byte length, and the second must not be shown the first one's result."""
    import io

    import tifffile

    field = np.asarray(Image.open(next((SHARED / "real").rglob("SOB_M_MC-14-18842D-200-016.png"))).convert("RGB"))
    tissue = np.tile(field, (1, 2, 1))  # two 200X fields of tissue
    glass = np.full_like(tissue, 242)
    glass[:, :700] = field  # one field of tissue, one of glass
    uploads = []
    for rgb in (tissue, glass):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, rgb, photometric="rgb")
        uploads.append(buffer.getvalue())
    assert len(uploads[0]) == len(uploads[1]) and uploads[0] != uploads[1]
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/slide.py").run()
    app.selectbox(key="slide_magnification").set_value("200X").run()
    shown = []
    for data in uploads:
        app.file_uploader(key="slide_upload").set_value([("scan.tif", data, "image/tiff")]).run()
        app.button(key="slide_start").click().run()
        assert not app.exception, app.exception
        shown.append(texts(app.markdown))
    assert "of 2 tissue tiles" in shown[0] and "of 1 tissue tiles" in shown[1]


def started_on(ending: str):
    """The Slide page (its slide_dirs fixture set up) with the listed slide whose name ends so, started: (app, its
    picker)."""
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/slide.py").run()
    pick = app.selectbox(key="slide_pick")
    pick.set_value(next(o for o in pick.options if o.endswith(ending))).run()
    app.button(key="slide_start").click().run()
    assert not app.exception, app.exception
    return app, pick


def test_any_analysis_failure_is_a_message_and_a_rerun_does_not_repeat_it(slide_dirs, monkeypatch):
    """A MemoryError (a resolution of 0.001 um/px asked for a 225-GiB tile) was not a SlideError: the page
    crashed, its request stayed set, and every rerun ran the analysis and crashed again."""
    from core.slide.predictor import SlidePredictor

    app, pick = started_on("tiny_mpp.tif")
    shown = texts(app.error).replace("\\", "")  # the message is escaped for Markdown
    assert "0.001 um/px" in shown and "Check that resolution" in shown

    def out_of_memory(*_, **__):
        raise MemoryError("Unable to allocate 225. GiB")

    monkeypatch.setattr(SlidePredictor, "predict", out_of_memory)
    pick.set_value(next(o for o in pick.options if o.endswith("901.png"))).run()
    app.button(key="slide_start").click().run()
    assert not app.exception, app.exception
    assert "failed (MemoryError: Unable to allocate" in texts(app.error).replace("\\", "")
    assert "slide_cancel" not in [b.key for b in app.button] and not app.get("progress")
    assert "_slide_request" not in app.session_state
    monkeypatch.undo()
    app.run()  # a rerun shows the page, it does not run (and fail) again
    assert not app.exception and not app.error and "Slide call" not in texts(app.markdown)


def test_a_tile_whose_level_0_is_damaged_is_shown_as_analysed_with_a_message(slide_dirs):
    """Opening a tile read it at level 0 outside any try: a damaged level 0 (the analysis used level 1)
    crashed the page."""
    app, _ = started_on("damaged_level0.tif")
    assert "Slide call" in texts(app.markdown)
    shown = texts(app.warning).replace("\\", "")
    assert "could not be read at" in shown and "level 0" in shown and "as the model saw it" in shown
    assert len(app.image) == 3  # the tile as analysed and its two Grad-CAMs
    tiles = app.selectbox(key="slide_tile")
    tiles.set_value(tiles.options[-1]).run()
    assert not app.exception and len(app.image) == 3


def test_how_the_slide_was_read_is_said_in_plain_words_and_detailed_in_an_expander(slide_dirs):
    """Its caption read "OpenSlide (generic-tiff) · ... 700x460 level-0 px ..., read at level 1" and the downloads'
    "Tile coordinates are level-0 pixels": plain words on the page now, the reader's notes in an expander."""
    app, _ = started_on("damaged_level0.tif")  # a pyramid analysed at its level 1
    [details] = [e for e in app.expander if e.label == "How the file was read (technical details)"]
    technical = texts(details.caption)
    assert "read at level 1" in technical and "Level 0 is the slide's full resolution" in technical
    shown = [c.value for c in app.caption if c.value not in technical]
    assert any(c.endswith("tiles hold tissue and were analysed, each read at the 2nd resolution level (a smaller "
                          "copy stored in the file, still as fine as the model needs).") for c in shown), shown
    assert not [c for c in shown if "read at level" in c or "level-0 px" in c or "tiffslide" in c or "OpenSlide" in c]
    [downloads] = [c for c in app.caption if c.value.startswith("Built in memory")]
    assert "Tile coordinates are pixels of the full-resolution image" in downloads.value
    assert "level-0" not in downloads.value and "level-0 pixels" in downloads.help
