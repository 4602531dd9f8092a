"""Case-level calls pool the images of one patient only, and their caption names the data the case
threshold was chosen on. Hand-made predictions on a synthetic tissue image: no model is loaded."""

import io
import json

from pypdf import PdfReader

from core.app import pdf_report, report, service
from core.data.labels import SUBTYPES_BY_CLASS
from core.model.decisions import Prediction
from tests.app_helpers import REPO, png_bytes, tissue_like

MODEL = {"name": "m", "backbone": "b", "hierarchy": "hierarchical", "demo": False, "limited": False,
         "data": "d", "protocol": "patient-wise", "calibrated": False, "subtype_reliable": True, "subtype_note": ""}


def result(name: str, p_malignant: float) -> service.ImageResult:
    item = service.read_item(name, png_bytes(tissue_like()))
    stage2 = dict(zip(SUBTYPES_BY_CLASS["malignant"], (0.7, 0.1, 0.1, 0.1)))
    item.prediction = Prediction({"benign": 1 - p_malignant, "malignant": p_malignant}, "malignant", stage2,
                                 dict.fromkeys(SUBTYPES_BY_CLASS["benign"], 0.25), "ductal_carcinoma",
                                 p_malignant * 0.7, False, [])
    return item


def test_images_without_a_case_id_get_no_case_call():
    """`name with spaces 40x.png` and `huge.jpg` were called "malignant" together as one uploaded case."""
    results = [result("name with spaces 40x.png", 0.8), result("huge.jpg", 0.9),
               result("SOB_M_DC-14-17614-400-014.png", 0.95)]
    cases = report.case_calls(results)
    assert list(cases["case"]) == ["14-17614"] and cases["images"].tolist() == [1]
    note = report.uncased_note(results)
    assert note.startswith("2 image(s) without a BreakHis case id in their names (name with spaces 40x.png, "
                           "huge.jpg) get no case call")
    assert report.uncased_note(results[2:]) is None
    alone = report.case_calls(results[:2])  # no case at all: an empty table with its columns
    assert alone.empty and list(alone.columns) == report.CASE_COLUMNS
    pdf = pdf_report.build_report(results[:2], {r.digest: (r.display, r.display) for r in results[:2]}, alone, MODEL)
    summary = " ".join(PdfReader(io.BytesIO(pdf)).pages[0].extract_text().split())
    assert "get no case call" in summary and "uploaded images" not in summary


def test_the_case_caption_names_the_data_its_threshold_was_chosen_on():
    """The bundled model's case threshold was chosen on pooled out-of-fold patients of its 5-fold CV; the
    caption said "validation patients" for every evaluated model."""
    bundled = json.loads((REPO / "models" / "default" / "card.json").read_text())
    rule = report.case_rule(bundled, 0.5)
    assert ("from 0.50 (the threshold this model's evaluation chose on pooled out-of-fold predictions of 46 "
            "patients: 757 images, patient-wise 5-fold cross-validation, pooled out-of-fold)") in rule
    assert "validation patients" not in rule
    small = json.loads((REPO / "models" / "small-cnn" / "card.json").read_text())
    assert "chose on 8 validation patients: 112 images, patient-wise split)" in report.case_rule(small, 0.5)
    assert "(the default: no evaluation chose one for this model)" in report.case_rule({}, 0.5)
