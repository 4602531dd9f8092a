"""CSV a pathologist downloads and opens in a spreadsheet: text stays text, every character kept.

One function for every such download (the audit trail, the Diagnose results):
- CSV (formula) injection: anyone who reaches the sign-in page chooses the user cell of a failed sign-in, and
  anyone who uploads chooses a file name; a spreadsheet opening the file runs a cell that starts with one of
  FORMULA_STARTS as a formula (which can, e.g., send other cells to a web address). OWASP's advice: start such a
  cell with a single quote, which spreadsheets show as plain text. Only the download changes: the records and
  the page's tables keep the text as it was recorded.
- RFC 4180's CRLF line ends: the writer then quotes every cell holding a CR or LF, so a CR typed into a name
  cannot start a new row (whose first cell would be a formula again).
- UTF-8 with a byte-order mark: without one, Excel reads the file in the machine's legacy code page and garbles
  non-ASCII names and the model badge's "·" (read it back with encoding="utf-8-sig").
"""

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert(cell):
    return "'" + cell if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) else cell


def spreadsheet_csv(frame: pd.DataFrame) -> bytes:
    return frame.map(inert).to_csv(index=False, lineterminator="\r\n").encode("utf-8-sig")
