"""What the Slide page, its PDF and its downloads say about a slide result: the subtype marked not
reliable by the app's one rule, the legend of the p(malignant) map, the file names. Built on a
synthetic tiles grid (core.slide.call on hand-made p(malignant)): no model is loaded."""

import io
import json

import numpy as np
import pandas as pd
from pypdf import PdfReader

from core.app import pdf_report, registry, slides
from core.data.labels import SUBTYPES
from core.evaluation.subtype_trust import SUBTYPE_NOT_RELIABLE
from core.slide.call import SlideRule, slide_call
from core.slide.predictor import SlideResult
from tests.app_helpers import REPO

W, H, D = 700, 460, 35.0  # tile size (level-0 px), map downsample


def card(name: str = "default") -> dict:
    return json.loads((REPO / "models" / name / "card.json").read_text())


def slide_result(reliable: bool, kind: str = "region", name: str = "scan.tif") -> SlideResult:
    """A 2 x 3 grid of tiles, the top middle pair suspicious, every tile called mucinous carcinoma."""
    p = np.array([[0.2, 0.98, 0.97], [0.2, 0.2, 0.6]])
    rows, cols = np.indices(p.shape)
    tiles = pd.DataFrame({"tile": np.arange(p.size), "row": rows.ravel(), "col": cols.ravel(),
                          "x": cols.ravel() * W, "y": rows.ravel() * H, "width": W, "height": H,
                          "p_malignant": p.ravel(), "subtype": "mucinous_carcinoma", "refer": False})
    rule = {"thresholds": {"slide_rule": SlideRule(kind=kind, min_size=2, min_mean_p=0.8).to_dict()}}
    call, regions = slide_call(tiles, rule)
    shape = (round(2 * H / D), round(3 * W / D))
    p_map = np.kron(p, np.ones((shape[0] // 2, shape[1] // 3))).astype(np.float32)
    subtype = np.full(p_map.shape, SUBTYPES.index("mucinous_carcinoma"), np.int8)
    model = {"name": "m", "limited": True, "demo": False, "subtype_reliable": reliable}
    return SlideResult(name, (3 * W, 2 * H), None, None, tiles, np.full((*p_map.shape, 3), 230, np.uint8), D,
                       np.ones(p_map.shape, bool), p_map, subtype, np.zeros_like(p_map), [], call, model, {}, [],
                       regions)


def slide_pdf_text(result) -> str:
    pdf = pdf_report.build_slide_report(result, registry.describe_model(card()), audit_id=3)
    return " ".join(" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf)).pages)


def test_an_unreliable_subtype_is_marked_so_on_the_slide_page_and_its_pdf():
    """The Slide page read "Subtype map (share of analysed tissue): Mucinous carcinoma 100%" and the tile
    "p(malignant) 0.98, Mucinous carcinoma" for a model whose subtype the app calls not reliable (the tiles
    CSV said subtype_reliable=False); the PDF's tile table listed it as a plain call."""
    unreliable, reliable = slide_result(False), slide_result(True)
    caption = slides.subtype_caption(unreliable)
    assert caption.startswith(f"Subtype: {SUBTYPE_NOT_RELIABLE}.") and "Mucinous carcinoma 100%" in caption
    assert slides.subtype_caption(reliable) == "Subtype map (share of analysed tissue): Mucinous carcinoma 100%"
    label = slides.tile_label(unreliable, 1)
    assert label.endswith(f"subtype {SUBTYPE_NOT_RELIABLE} (most probable: Mucinous carcinoma) · driving region")
    assert slides.tile_label(reliable, 1).endswith("p(malignant) 0.98, subtype Mucinous carcinoma · driving region")
    assert slides.subtype_text(unreliable, "mucinous_carcinoma") == \
        f"{SUBTYPE_NOT_RELIABLE} (most probable: Mucinous carcinoma)"
    hover = json.dumps(slides.heatmap_figure(unreliable).to_plotly_json()["data"][2]["text"])
    assert SUBTYPE_NOT_RELIABLE in hover
    text = slide_pdf_text(unreliable)
    assert "Tiles of the driving region" in text
    assert f"{SUBTYPE_NOT_RELIABLE} (most probable: Mucinous carcinoma)" in text
    assert SUBTYPE_NOT_RELIABLE not in slide_pdf_text(reliable).split("Tiles of the driving region")[1]


def test_the_per_image_pdf_marks_its_stage_2_caption_not_reliable():
    """The image page's overlay caption read "Stage 2 Grad-CAM: Ductal carcinoma" under a banner saying
    the subtype is not reliable for this model."""
    from tests.test_report_pdf import pdf_text, results

    text = pdf_text(results("a.png"), registry.describe_model(card()))
    assert f"Stage 2 Grad-CAM: subtype {SUBTYPE_NOT_RELIABLE} (most probable: Ductal carcinoma)" in text  # as on the page
    assert "Stage 2 Grad-CAM: Ductal carcinoma" not in text



def test_the_slide_pdf_legend_is_the_absolute_p_malignant_scale_of_its_map():
    """Under the slide's p(malignant) map (Turbo, 0 to 1) the PDF printed the Grad-CAM legend: "each map is
    scaled to its own range ... they are not probabilities". An image page keeps the Grad-CAM legend."""
    from core.model.heatmap import COLOUR_SCALE, P_MALIGNANT_SCALE
    from tests.test_report_pdf import pdf_text, results

    text = slide_pdf_text(slide_result(False))
    assert " ".join(P_MALIGNANT_SCALE.split()) in text
    assert "own range" not in text and "not probabilities" not in text
    image_pages = pdf_text(results("a.png"), registry.describe_model(card()))
    assert " ".join(COLOUR_SCALE.split()) in image_pages and P_MALIGNANT_SCALE not in image_pages


def test_the_pdf_says_its_generated_time_is_utc(monkeypatch):
    """The PDF printed "Generated 2026-12-06 12:20", the server's local time with no zone, while the app
    says "Times are UTC". On a server 14 hours ahead of UTC it now prints the UTC time, and says so."""
    import datetime
    import time

    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14
    time.tzset()
    try:
        before = datetime.datetime.now(datetime.UTC)
        text = slide_pdf_text(slide_result(True))
        after = datetime.datetime.now(datetime.UTC)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert any(f"Generated {t:%Y-%m-%d %H:%M} UTC" in text for t in (before, after)), text[:200]


def test_the_geojson_download_is_named_for_the_regions_it_holds():
    """A model that makes no slide call offered "scan_malignant.geojson" of regions classified "Suspicious
    (model, not called)". Every call's file is now named for what it holds: its suspicious regions."""
    for kind, call in (("none", "not called"), ("region", "malignant")):
        result = slide_result(False, kind=kind)
        assert result.call["label"] == call
        names = [name for _, _, name, _ in slides.downloads(result)]
        assert "scan_suspicious_regions.geojson" in names and not any("malignant" in n for n in names)
    from core.slide.export import GEOJSON  # the CLI's file (core.slide.export.write_outputs)

    assert GEOJSON == "suspicious_regions.geojson"


def test_a_server_slide_is_identified_by_its_contents(tmp_path, monkeypatch):
    """A server slide's audit row had no SHA-256 (an uploaded one's had). Small enough, the whole file is
    hashed (in chunks, hashlib.file_digest); over FULL_HASH_LIMIT its size, modification time and the SHA-256
    of its first and last MiB identify it, and the statement says so."""
    import hashlib

    path = tmp_path / "scan.svs"
    data = bytes(range(256)) * 20_000  # 5 MB
    path.write_bytes(data)
    assert slides.file_identity(path) == (hashlib.sha256(data).hexdigest(), "SHA-256 of the whole file")
    monkeypatch.setattr(slides, "FULL_HASH_LIMIT", 4 * 1024**2)
    big = tmp_path / "big.svs"
    big.write_bytes(data[::-1])
    digest, how = slides.file_identity(big)
    edges = hashlib.sha256(data[::-1][:1024**2] + data[::-1][-1024**2:]).hexdigest()
    assert digest is None and how.startswith("not hashed whole (over 0.00390625 GiB)")
    assert f"{len(data)} bytes" in how and how.endswith(f"first and last MiB, {edges}")


def test_the_slide_call_sentence_speaks_plain_words_not_module_paths_or_pyramid_levels():
    """A demo for pathologists read "level-0 box (700, 0)-(2100, 920)" in the call and "(core.slide.choose)"
    in the rule of a model that makes no call: the box is the full-resolution one, and no module path shows."""
    from core.slide.call import call_text

    for kind in ("region", "none"):
        call = slide_result(True, kind=kind).call
        shown = " ".join(call_text(call))
        assert "full-resolution box (700, 0)-(2100, 920)" in shown
        assert "level-0" not in shown and "core." not in shown
    assert "no rule kept this model's benign validation tissue benign" in call["rule"]
