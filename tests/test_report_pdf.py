"""The PDF report states what the model card says: how its probabilities were calibrated and on which data.

Built from hand-made predictions on a synthetic tissue image and the bundled cards: no model is loaded."""

import io
import json

import pytest
from pypdf import PdfReader

from core.app import pdf_report, registry, report, service
from core.data.labels import SUBTYPES_BY_CLASS
from core.model.decisions import Prediction
from tests.app_helpers import REPO, png_bytes, tissue_like


def card(name: str) -> dict:
    return json.loads((REPO / "models" / name / "card.json").read_text())


def results(*names: str) -> list:
    out = []
    for name in names:
        item = service.read_item(name, png_bytes(tissue_like()))
        stage2 = dict(zip(SUBTYPES_BY_CLASS["malignant"], (0.7, 0.1, 0.1, 0.1)))
        item.prediction = Prediction({"benign": 0.2, "malignant": 0.8}, "malignant", stage2,
                                     dict.fromkeys(SUBTYPES_BY_CLASS["benign"], 0.25), "ductal_carcinoma", 0.56,
                                     False, [])
        out.append(item)
    return out


def pdf_pages(items: list, model: dict) -> list[str]:
    pdf = pdf_report.build_report(items, {r.digest: (r.display, r.display) for r in items}, report.case_calls(items), model)
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]


def pdf_text(items: list, model: dict) -> str:
    """Each page on one line (long table cells wrap)."""
    return "\n".join(" ".join(page.split()) for page in pdf_pages(items, model))


def test_the_pdf_names_the_data_the_probabilities_were_calibrated_on():
    """The bundled model was calibrated on pooled out-of-fold predictions of its 5-fold CV; the PDF said
    "temperature scaling on the validation split" for every model."""
    text = pdf_text(results("a.png"), registry.describe_model(card("default")))
    assert "calibrated (temperature scaling, fitted on pooled out-of-fold predictions of 5-fold CV (757 images, " \
           "46 patients))" in text
    assert "validation split" not in text
    # a card that states a scope (core.training.calibrate_run): its split, protocol and size in words
    small = registry.describe_model(card("small-cnn"))
    assert small["calibrated_on"] == "temperature scaling, fitted on 8 validation patients: 112 images, patient-wise split"
    # a card without the calibration's data says so rather than guess a split
    undated = {**card("default"), "calibration": {"temperatures": {"stage1": 0.9}}}
    assert "the model card does not say on which data" in pdf_text(results("a.png"), registry.describe_model(undated))


def test_an_ensemble_says_its_members_calibrate_their_own_outputs():
    ensemble = {"kind": "ensemble", "name": "ens", "members": []}
    assert "each member's temperatures fitted on its own data" in registry.calibrated_on(ensemble)
    assert registry.calibrated_on({"calibration": {}}) is None


def names_in(items: list) -> list[str]:
    """The lines of the PDF naming the files (their image pages' headings)."""
    pages = pdf_pages(items, registry.describe_model(card("default")))
    return [line for page in pages[1:] for line in page.splitlines() if "mile_" in line]


@pytest.mark.skipif(pdf_report.unicode_font() is None, reason="no DejaVu Sans installed or bundled")
def test_non_latin_file_names_print_as_named_with_a_unicode_font():
    """Latin-1 Helvetica printed every non-Latin-1 character as '?': "乳腺_émile_ß.png" and "乳房_émile_ß.png"
    read "??_émile_ß.png" twice, and a Cyrillic name was all question marks."""
    items = results("гистология_αβ_émile_ß.png")
    assert names_in(items) == ["гистология_αβ_émile_ß.png"]


@pytest.mark.parametrize("font", ["unicode", "latin-1"])
def test_two_names_the_font_cannot_print_apart_keep_their_sha256_prefix(font, monkeypatch):
    """DejaVu has no CJK glyphs, Helvetica no non-Latin-1 ones: a name printed with a '?' carries the
    SHA-256 prefix of its bytes, so two such files are still told apart."""
    if font == "latin-1":
        monkeypatch.setattr(pdf_report, "FONT_FOLDERS", ())
    elif pdf_report.unicode_font() is None:
        pytest.skip("no DejaVu Sans installed or bundled")
    first, second = results("乳腺_émile_ß.png", "乳房_émile_ß.png")
    second.sha256 = "f" * 64  # same synthetic pixels: other bytes
    headings = names_in([first, second])
    assert headings == [f"??_émile_ß.png (SHA-256 {first.sha256[:12]})", f"??_émile_ß.png (SHA-256 {'f' * 12})"]
    plain = results("SOB_B_F-14-25197-400-033.png")  # a name printed whole gets no prefix
    assert "SHA-256 " + plain[0].sha256[:12] not in pdf_text(plain, registry.describe_model(card("default")))


def test_the_case_table_sizes_its_columns_for_their_cells_not_only_their_headers():
    """The columns were sized for the header words only: the 17-mm "call" column printed "malignan t",
    broken mid-word. Every word of every cell now prints whole."""
    items = results("SOB_M_DC-14-2523-40-010.png", "SOB_M_DC-14-2523-40-011.png")
    model = registry.describe_model(card("default"))
    cases = report.case_calls(items, subtype_reliable=model["subtype_reliable"])
    first = pdf_report.build_report(items, {r.digest: (r.display, r.display) for r in items}, cases, model)
    words = PdfReader(io.BytesIO(first)).pages[0].extract_text().split()
    columns = ["case", "images", "call", "subtype", "p_malignant", "confidence", "refer for review", "reasons"]
    cells = [str(row[c]) for _, row in cases.iterrows() for c in columns]
    assert "malignant" in cells and "not reliable for this model (most probable: Ductal carcinoma)" in cells
    assert [word for cell in cells for word in cell.split() if word not in words] == []


def test_the_csv_and_the_pdf_list_uploads_analysed_as_tiles_and_repeats():
    """The page showed an upload analysed as tiles (with its audit id) and named a repeated file, but the
    CSV and the PDF a pathologist signs listed neither: they were silently missing from the report."""
    shown, tiled = results("SOB_M_DC-14-2523-200-010.png", "big_scan.png")
    call = {"label": "not called", "malignant_tiles": 6, "tissue_tiles": 20, "rule_params": {"tile_threshold": 0.5}}
    elsewhere = report.elsewhere_rows([(tiled, call, 41), (results("broken.png")[0], "'broken.png' is truncated", None)],
                                      [("copy.png", "SOB_M_DC-14-2523-200-010.png")])
    table = report.results_table([shown], "badge", audit_ids={}, elsewhere=elsewhere).set_index("file")
    assert list(table.index) == ["SOB_M_DC-14-2523-200-010.png", "big_scan.png", "broken.png", "copy.png"]
    assert table.at["big_scan.png", "call"] == report.TILED and table.at["big_scan.png", "audit id"] == 41
    assert "6 of 20 tissue tiles have p(malignant) >= 0.5" in table.at["big_scan.png", "reasons"]
    assert "not analysed: 'broken.png' is truncated" in table.at["broken.png", "reasons"]
    assert table.at["copy.png", "call"] == report.REPEATED and "SOB_M_DC-14-2523-200-010.png" in table.at["copy.png", "reasons"]
    assert (table["model"] == "badge").all()
    pdf = pdf_report.build_report([shown], {shown.digest: (shown.display, shown.display)}, report.case_calls([shown]),
                                  registry.describe_model(card("default")), elsewhere=elsewhere)
    text = " ".join(" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf)).pages)
    assert "big_scan.png: analysed as tiles (call over the tiles: Not called, 6 of 20" in text and "audit id 41" in text
    assert "copy.png: given more than once (the same bytes as SOB_M_DC-14-2523-200-010.png" in text


def test_a_probability_is_printed_on_the_side_of_the_threshold_it_was_judged_against():
    """p(malignant) 0.49996 (benign) and 0.50004 (malignant) both printed 0.50 on the page, in the CLI, the
    CSV (0.5000) and the PDF (0.500); a p(benign) just under its referral threshold printed as the threshold."""
    from core.app.registry import stage_calls

    benign, malignant, referred = results("b.png", "m.png", "r.png")
    for item, p_malignant in ((benign, 0.49996), (malignant, 0.50004), (referred, 1 - 0.97619)):
        item.prediction.stage1 = {"benign": 1 - p_malignant, "malignant": p_malignant}
        item.prediction.label = "malignant" if p_malignant >= 0.5 else "benign"
        item.prediction.referral = {"stage1": {"refer": False, "reasons": [], "threshold": 0.97623},
                                    "subtype": {"refer": False, "reasons": [], "threshold": 0.29},
                                    "thresholds_source": "test"}
    assert stage_calls(benign.prediction, True)[0] == "Benign (p 0.50004)"
    assert stage_calls(malignant.prediction, True)[0] == "Malignant (p 0.50004)"
    assert benign.prediction.summary().startswith("benign (0.50004)")
    assert stage_calls(referred.prediction, True)[0] == "Benign (p 0.976)"  # not "0.98", above 0.97623
    table = report.results_table([benign, malignant, referred], "badge").set_index("file")
    assert table.at["b.png", "p_malignant"] == 0.49996 and table.at["m.png", "p_malignant"] == 0.50004
    assert table.at["r.png", "p_benign"] == 0.97619  # not 0.9762, the threshold as the CSV prints it
    text = pdf_text([benign, malignant], registry.describe_model(card("default")))
    assert "Malignant 0.49996" in text and "Malignant 0.50004" in text
    assert stage_calls(results("plain.png")[0].prediction, True)[0] == "Malignant (p 0.80)"  # far from both: 2 places
