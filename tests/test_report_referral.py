"""Per-stage referral in every output: each stage's threshold, reasons and the thresholds' source in the
CSV, both thresholds and their source in the PDF, and reasons that print a threshold as the caption does.

Hand-made predictions on a synthetic tissue image: no model is loaded."""

import io

import pandas as pd
from pypdf import PdfReader

from core.app import pdf_report, report, service
from core.data.labels import SUBTYPES_BY_CLASS
from core.model.decisions import Prediction, at_least, below, referral_rule, threshold_text
from tests.app_helpers import png_bytes, tissue_like

# The bundled model's validated thresholds (models/default/card.json) and where they were chosen.
STAGE1, SUBTYPE = 0.9762252569198608, 0.2938389778137207
SOURCE = "chosen on pooled out-of-fold predictions of 5-fold CV (757 images, 46 patients)"
MODEL = {"name": "m", "backbone": "b", "hierarchy": "hierarchical", "demo": False, "limited": False,
         "data": "d", "protocol": "patient-wise", "calibrated": True, "subtype_reliable": True, "subtype_note": ""}


def referred_prediction(p_malignant: float = 0.6678) -> Prediction:
    """Stage 1 under its threshold; the subtype passes its own but is referred because stage 1 is."""
    stage2 = dict(zip(SUBTYPES_BY_CLASS["malignant"], (0.45, 0.25, 0.2, 0.1)))
    first = [f"stage 1 uncertain ({below(p_malignant, STAGE1)})"]
    referral = {"stage1": {"refer": True, "reasons": first, "threshold": STAGE1},
                "subtype": {"refer": True, "reasons": ["stage 1 referred"], "threshold": SUBTYPE},
                "thresholds_source": SOURCE}
    return Prediction({"benign": 1 - p_malignant, "malignant": p_malignant}, "malignant", stage2,
                      dict.fromkeys(SUBTYPES_BY_CLASS["benign"], 0.25), "ductal_carcinoma", p_malignant * 0.45,
                      True, first, referral=referral)


def result(name: str = "SOB_B_F-14-25197-400-033.png", prediction: Prediction | None = None) -> service.ImageResult:
    item = service.read_item(name, png_bytes(tissue_like()))
    item.prediction = prediction or referred_prediction()
    return item


def test_a_reason_prints_its_threshold_as_the_caption_states_it():
    """"0.67 < 0.98" under a threshold of 0.9762: the caption said 0.9762, and 0.98 is not the threshold."""
    assert below(0.6678, STAGE1) == "0.67 < 0.9762"
    assert below(0.9753, STAGE1) == "0.975 < 0.9762"
    assert at_least(0.977, STAGE1) == "0.977 >= threshold 0.9762"
    assert at_least(0.45, SUBTYPE) == "0.45 >= threshold 0.2938"
    assert below(0.60, 0.70) == "0.60 < 0.70" and at_least(0.7, 0.7) == "0.70 >= threshold 0.70"
    assert threshold_text(STAGE1) in referral_rule(STAGE1, SUBTYPE, SOURCE)


def test_the_csv_has_each_stages_threshold_reasons_and_their_source():
    table = report.results_table([result()], "badge")
    row = pd.read_csv(io.BytesIO(report.results_csv(table)), dtype=str).iloc[0]
    assert (row["stage 1 threshold"], row["subtype threshold"]) == ("0.9762", "0.2938")
    assert row["stage 1 reasons"] == "stage 1 uncertain (0.67 < 0.9762)"
    assert row["subtype reasons"] == "stage 1 referred"  # the CSV's "reasons" had no word on the subtype
    assert row["thresholds source"] == SOURCE
    assert list(table.columns) == report.TABLE_COLUMNS and set(report.STAGE_COLUMNS) <= set(table.columns)


def test_the_pdf_prints_both_thresholds_exactly_and_their_source_once():
    results = [result(), result("SOB_B_F-14-25197-400-034.png", referred_prediction(0.7))]
    pdf = pdf_report.build_report(results, {r.digest: (r.display, r.display) for r in results},
                              report.case_calls(results), MODEL)
    pages = [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]
    text = " ".join(" ".join(page.split()) for page in pages)
    assert "Referral: stage 1 below p(class) 0.9762, subtype below p(subtype | class) 0.2938" in pages[0].replace("\n", " ")
    assert text.count("pooled out-of-fold predictions of 5-fold CV") == 1
    for page in pages[1:]:  # an image page printed alone still shows the two thresholds it was judged by
        flat = " ".join(page.split())
        assert "stage 1 p(class) 0.9762, subtype p(subtype | class) 0.2938" in flat
        assert "< 0.98" not in flat


def test_the_cli_line_gives_each_stages_reason_or_the_threshold_it_passed():
    line = referred_prediction().summary()
    assert "REFER stage 1: stage 1 uncertain (0.67 < 0.9762) / REFER subtype: stage 1 referred" in line
    passed = Prediction({"benign": 0.023, "malignant": 0.977}, "malignant", {"ductal_carcinoma": 0.45}, {},
                        "ductal_carcinoma", 0.44, False, [],
                        referral={"stage1": {"refer": False, "reasons": [], "threshold": STAGE1},
                                  "subtype": {"refer": False, "reasons": [], "threshold": SUBTYPE},
                                  "thresholds_source": SOURCE})
    assert passed.summary().endswith("stage 1 not referred (0.977 >= threshold 0.9762) / "
                                     "subtype not referred (0.45 >= threshold 0.2938)")
