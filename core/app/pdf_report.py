"""The PDF report (fpdf2) of a diagnosis or a slide: a real document, selectable and searchable text
for every number.

A summary page with the model's identity (name, backbone, card date, SHA-256, training data, split
protocol, DEMO / LIMITED DATA) and the case-level calls (core.app.report), then per image the
original and both stages' overlays, the calibrated probabilities, confidence, uncertainty and every
refer reason. Built in memory and handed to the browser; nothing is written to disk on the server.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
from pathlib import Path

import numpy as np
import pandas as pd
from fpdf import FPDF
from PIL import Image

from core.app.registry import probabilities_text, stage_calls
from core.app.report import magnification_text, map_caption, referral_lines, thresholds_in_use, uncased_note
from core.data.histology import NOT_ANALYSED
from core.data.labels import pretty
from core.evaluation.subtype_trust import subtype_shown
from core.model.decisions import referral_rule, threshold_text
from core.model.heatmap import COLOUR_SCALE, P_MALIGNANT_SCALE, colour_bar
from core.model.predict import figure
from core.paths import ASSETS

INK, MUTED, ACCENT, ALERT = (31, 45, 54), (96, 112, 122), (43, 111, 142), (176, 48, 48)
WIDTH = 180  # mm of A4 between the margins
DISCLAIMER = ("Research use only. Not a medical device. Every result must be reviewed by a "
              "pathologist; heat maps show where the model looked, not where disease is.")


# DejaVu Sans (free to redistribute: Bitstream Vera licence, DejaVu changes public domain): a copy in
# assets/fonts first, then the system's (Debian/Ubuntu fonts-dejavu-core). Without it, Latin-1 Helvetica.
FONT_FOLDERS = (ASSETS / "fonts", Path("/usr/share/fonts/truetype/dejavu"))
UNICODE_FONT = "dejavu"


def unicode_font() -> tuple[str, str] | None:
    """(regular, bold) TrueType files of DejaVu Sans, or None when none is installed or bundled."""
    for folder in FONT_FOLDERS:
        regular = folder / "DejaVuSans.ttf"
        if regular.is_file():
            bold = folder / "DejaVuSans-Bold.ttf"
            return str(regular), str(bold if bold.is_file() else regular)
    return None


def _latin1(text) -> str:
    """fpdf2's built-in fonts are Latin-1; anything else (arrows, non-Latin file names) is replaced
    visibly rather than dropped, so the PDF never fails on an odd character."""
    return str(text).replace("\u2192", "->").replace("\u2013", "-").encode("latin-1", "replace").decode("latin-1")


class _Report(FPDF):
    def __init__(self, model: dict):
        super().__init__(format="A4", unit="mm")
        self.model = model
        self.set_margins(15, 15, 15)
        self.set_auto_page_break(True, margin=18)
        self.set_title("Breast histopathology decision-support report")
        self.set_creator("BreakHis decision-support app")
        files = unicode_font()
        self.family, self.glyphs = "helvetica", None
        if files:  # non-Latin file names print as named, not as "??"
            self.add_font(UNICODE_FONT, "", files[0])
            self.add_font(UNICODE_FONT, "B", files[1])
            self.family, self.glyphs = UNICODE_FONT, set(self.fonts[UNICODE_FONT].cmap)

    def shown(self, text) -> str:
        """The text as the font can print it: a character it has no glyph for becomes '?'."""
        if self.glyphs is None:
            return _latin1(text)
        return "".join(c if c == "\n" or ord(c) in self.glyphs else "?" for c in str(text))

    def name_text(self, name: str, sha256: str) -> str:
        """A file name as printed, with its SHA-256 prefix when a character could not be: 乳腺_x.png and
        乳房_x.png both print as ??_x.png."""
        shown = self.shown(name)
        return shown if shown == name else f"{shown} (SHA-256 {sha256[:12]})"

    def footer(self):
        self.set_y(-14)
        self.set_font(self.family, size=7)
        self.set_text_color(*MUTED)
        self.multi_cell(0, 3.2, self.shown(f"{DISCLAIMER}  Page {self.page_no()}."), align="C", new_x="LMARGIN",
                        new_y="NEXT")

    def heading(self, text: str, size: int = 15, colour=ACCENT):
        self.set_font(self.family, "B", size)
        self.set_text_color(*colour)
        self.multi_cell(0, size * 0.5, self.shown(text), new_x="LMARGIN", new_y="NEXT")
        self.ln(1)

    def line_text(self, text: str, size: float = 9, colour=INK, style: str = ""):
        self.set_font(self.family, style, size)
        self.set_text_color(*colour)
        self.multi_cell(0, size * 0.48, self.shown(text), new_x="LMARGIN", new_y="NEXT")

    def banner(self, text: str, colour):
        self.set_fill_color(*colour)
        self.set_text_color(255, 255, 255)
        self.set_font(self.family, "B", 11)
        self.multi_cell(0, 7, self.shown(text), fill=True, new_x="LMARGIN", new_y="NEXT")
        self.ln(2)

    def fitted_widths(self, header: list[str], widths: list[float], rows: list[list] = ()) -> list[float]:
        """Column widths (mm, same total) in which every word of the header (bold) and of the cells fits
        whole: fpdf2 wraps at spaces but breaks a word wider than its column mid-word ("malignan/t",
        "confiden/ce"). Columns too narrow for their longest word are widened; the others give up width
        in proportion to what they can spare."""
        padding = 2 * self.c_margin + 1.5
        style = self.font_style

        def widest(texts, bold: bool) -> float:
            self.set_font(style="B" if bold else "")
            return max((self.get_string_width(word) for text in texts for word in self.shown(text).split()),
                       default=0.0)

        needed = [max(widest([h], True), widest([row[i] for row in rows], False)) + padding
                  for i, h in enumerate(header)]
        self.set_font(style=style)
        total = sum(widths)
        fixed = [max(w, n) for w, n in zip(widths, needed)]
        give = [max(0.0, w - n) for w, n in zip(widths, needed)]  # what a wide-enough column can spare
        excess = sum(fixed) - total
        if excess > 0 and sum(give) > 0:
            share = min(1.0, excess / sum(give))
            fixed = [f - g * share for f, g in zip(fixed, give)]
        return fixed

    def table(self, header: list[str], rows: list[list], widths: list[float] | None = None):
        self.set_font(self.family, size=8)
        if widths:
            widths = self.fitted_widths(header, widths, rows)
        self.set_text_color(*INK)
        self.set_fill_color(255, 255, 255)  # banners leave their colour behind
        self.set_draw_color(*MUTED)
        with super().table(col_widths=widths, text_align="LEFT", line_height=4.2, cell_fill_color=(240, 245, 247),
                           cell_fill_mode="ROWS") as grid:
            grid.row([self.shown(h) for h in header])
            for values in rows:
                grid.row([self.shown(v) for v in values])
        self.ln(2)

    def pictures(self, panels: list[tuple[str, np.ndarray]]):
        width = (WIDTH - 4 * (len(panels) - 1)) / len(panels)
        top, tallest = self.get_y(), 0.0
        for i, (caption, rgb) in enumerate(panels):
            picture = Image.fromarray(rgb)
            picture.thumbnail((640, 640))  # ~180 dpi at this width: sharp in print, a small file
            jpeg = io.BytesIO()
            picture.save(jpeg, format="JPEG", quality=90)
            height = width * picture.height / picture.width
            x = self.l_margin + i * (width + 4)
            self.image(jpeg, x=x, y=top, w=width)
            self.set_xy(x, top + height + 1)
            self.set_font(self.family, size=7)
            self.set_text_color(*MUTED)
            self.multi_cell(width, 3, self.shown(caption))
            tallest = max(tallest, height)
        self.set_xy(self.l_margin, top + tallest + 9)


    def colour_scale(self, legend: str = COLOUR_SCALE):
        """The colour bar and what its colours mean for the map above it: core.model.heatmap's COLOUR_SCALE
        for Grad-CAM maps (each scaled to its own range), P_MALIGNANT_SCALE for a slide's p(malignant) map."""
        png = io.BytesIO()
        Image.fromarray(colour_bar(256, 8)).save(png, format="PNG")
        top = self.get_y()
        self.image(png, x=self.l_margin, y=top, w=50, h=3)
        self.set_xy(self.l_margin + 53, top - 0.5)
        self.set_font(self.family, size=7)
        self.set_text_color(*MUTED)
        self.multi_cell(WIDTH - 53, 3, self.shown(legend), new_x="LMARGIN", new_y="NEXT")
        self.ln(2)


def model_warning(model: dict) -> str | None:
    """The DEMO / LIMITED DATA banner of a model (core.app.registry.describe_model), or None."""
    if model["demo"]:
        return "DEMO MODEL - not validated; the results are not a diagnosis"
    if model.get("limited"):
        return "LIMITED DATA MODEL - not a diagnosis"
    return None


def _warn(pdf: _Report) -> None:
    """The model's banner. On the summary and on every image page: such a model is labelled wherever it
    predicts (as each CSV row is), and an image page is often printed or passed on alone."""
    warning = model_warning(pdf.model)
    if warning:
        pdf.banner(warning, ALERT)


def _identity(pdf: _Report) -> None:
    model = pdf.model
    pdf.heading("Breast histopathology - decision-support report")
    pdf.line_text(f"Generated {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC", 8, MUTED)  # as the app
    _warn(pdf)
    pdf.table(["model", "value"], [
        ["name", model["name"]], ["backbone", f"{model['backbone']} ({model['hierarchy']})"],
        ["model card created", model.get("created") or "unknown"],
        ["SHA-256 of the model file", model.get("sha256") or "n/a"],
        ["training data", model.get("evidence") or model["data"]], ["split protocol", model["protocol"]],
        ["measured accuracy", model.get("measured") or "not evaluated"],
        ["probabilities", probabilities_text(model)]], widths=[45, 135])


@dataclasses.dataclass
class ReportDetails:
    """Who and what the report is about, typed on the page; blanks print as lines to fill by hand."""

    patient_id: str = ""
    specimen_id: str = ""
    reviewer: str = ""


def _details(pdf: _Report, details: ReportDetails) -> None:
    blank = "_" * 28
    pdf.table(["report", "value"], [["patient id", details.patient_id or blank],
                                    ["specimen id", details.specimen_id or blank],
                                    ["reviewing pathologist", details.reviewer or blank]], widths=[45, 135])


def _sign_off(pdf: _Report) -> None:
    """The pathologist's own conclusion and signature: the model's calls are not the report's."""
    pdf.heading("Pathologist's review and sign-off", 12)
    pdf.line_text("Agree with the model's calls: yes / no (corrections below)", 9)
    for _ in range(3):
        pdf.line_text("_" * 96, 9, MUTED)
    pdf.ln(2)
    pdf.line_text(f"Signed: {'_' * 34}   Date: {'_' * 16}", 9)


def _summary_page(pdf: _Report, cases: pd.DataFrame, errors: list, refused: list,
                  details: ReportDetails, thresholds: tuple[float, float, str] | None = None,
                  uncased: str | None = None, elsewhere: list[dict] = ()) -> None:
    pdf.add_page()
    _identity(pdf)
    _details(pdf, details)
    if thresholds:
        pdf.line_text(referral_rule(*thresholds), 9)
        pdf.ln(2)
    pdf.heading("Case-level calls", 12)
    if len(cases):
        columns = ["case", "images", "call", "subtype", "p_malignant", "confidence", "refer for review", "reasons"]
        pdf.table(columns, [[row.get(c, "") for c in columns] for _, row in cases.iterrows()],
                  widths=[24, 13, 17, 26, 18, 18, 16, 48])
    if uncased:
        pdf.line_text(uncased, 8, MUTED)
    for r in errors:
        note = "" if pdf.shown(r.error) == r.error else f" (file SHA-256 {r.sha256[:12]})"
        pdf.line_text(f"Not analysed: {r.error}{note}", 8, ALERT)
    for r in refused:
        pdf.line_text(f"{pdf.name_text(r.name, r.sha256)}: {NOT_ANALYSED} ({r.not_histology}); no call, "
                      "not counted in its case.", 8, ALERT)
    for row in elsewhere:  # report.elsewhere_rows: analysed as tiles, or given twice
        audit = f"; audit id {row['audit id']}" if row.get("audit id") else ""
        pdf.line_text(f"{pdf.shown(row['file'])}: {row['call']} ({row['reasons']}){audit}; no page in this report.",
                      8, MUTED)
    pdf.ln(2)
    _sign_off(pdf)


def _image_page(pdf: _Report, result, overlays: tuple[np.ndarray, np.ndarray], audit_id: int | None = None,
                method: str = "Grad-CAM") -> None:
    p = result.prediction
    pdf.add_page()
    _warn(pdf)
    pdf.heading(pdf.name_text(result.name, result.sha256), 12, INK)
    if audit_id is not None:
        pdf.line_text(f"Audit id {audit_id} (the audit trail's row of this result)", 8, MUTED)
    pdf.line_text(f"Case {result.case or 'not stated'} | {magnification_text(result)} | model {pdf.model['name']}",
                  8, MUTED)
    reliable = pdf.model.get("subtype_reliable", True)
    call = " - ".join(stage_calls(p, reliable))
    pdf.banner(("REFER FOR REVIEW: " if result.refer else "") + call, ALERT if result.refer else ACCENT)
    pdf.pictures([("Image", result.image.rgb), (map_caption(1, method, p.label, reliable), overlays[0]),
                  (map_caption(2, method, p.subtype, reliable), overlays[1])])
    pdf.colour_scale()
    pdf.heading("Stage 1: benign or malignant", 10)
    pdf.table(["class", "probability"], [[pretty(c), p.shown(v, 3)] for c, v in p.stage1.items()], widths=[60, 40])
    pdf.heading(f"Stage 2: {pretty(p.label).lower()} subtype", 10)
    if not reliable:
        pdf.line_text(pdf.model["subtype_note"], 8, ALERT)
    pdf.table(["subtype", "probability"], [[pretty(s), p.shown(v, 3, "subtype")] for s, v in p.stage2.items()],
              widths=[60, 40])
    confidence = f"Confidence p(class) x p(subtype | class) = {p.confidence:.3f}"
    if p.uncertainty:
        confidence += (f"; uncertainty: p(malignant) spread {figure(p.uncertainty['p_malignant_spread'])} across "
                       f"{p.uncertainty['views']} {p.uncertainty['source']}")
    pdf.line_text(confidence, 9)
    if p.referral:  # their source is stated once, on the summary page
        pdf.line_text(f"Referral thresholds: stage 1 p(class) {threshold_text(p.referral['stage1']['threshold'])}, "
                      f"subtype p(subtype | class) {threshold_text(p.referral['subtype']['threshold'])}", 8, MUTED)
    for line, referred in referral_lines(p, result.warnings):
        pdf.line_text(line, 9, ALERT if referred else INK)
    for note in result.notes:
        pdf.line_text(f"Note: {note}", 8, MUTED)


def build_report(results: list, overlays: dict[str, tuple[np.ndarray, np.ndarray]], cases: pd.DataFrame,
                 model: dict, details: ReportDetails | None = None, audit_ids: dict | None = None,
                 method: str = "Grad-CAM", elsewhere: list[dict] = ()) -> bytes:
    """The PDF: a summary page (with the patient/specimen ids, reviewer and a sign-off block), then
    one page per analysed image, each with its audit id when given and its overlays captioned with
    the heat-map method that drew them (the page's choice: Grad-CAM++ and Score-CAM maps differ).

    results: core.app.service.ImageResult list; overlays: digest -> (stage-1, stage-2) overlay RGB;
    model: core.app.registry.describe_model's dict (the calibration's data included); elsewhere:
    core.app.report.elsewhere_rows, the uploads with no page here (analysed as tiles, given twice).
    """
    pdf = _Report(model)
    _summary_page(pdf, cases, [r for r in results if r.error], [r for r in results if r.not_histology],
                  details or ReportDetails(),
                  thresholds_in_use(results), uncased_note(results), elsewhere)
    for result in results:
        if result.ok:
            _image_page(pdf, result, overlays[result.digest], (audit_ids or {}).get((result.name, result.sha256)),
                        method)
    return bytes(pdf.output())


def build_slide_report(result, model: dict, audit_id: int | None = None, opacity: float = 0.5) -> bytes:
    """A slide's PDF: the model's identity, the call and the region that drove it (its tiles, its
    outline on the heat map) or that no region qualified, the rule and its validation figures,
    and the sign-off block. result: core.slide.predictor.SlideResult."""
    from core.slide.call import NOT_CALLED, call_text
    from core.slide.export import driving_region, heatmap_rgb

    call = result.call
    pdf = _Report(model)
    pdf.add_page()
    _identity(pdf)
    pdf.heading(f"Slide {result.name}", 12, INK)
    if audit_id is not None:
        pdf.line_text(f"Audit id {audit_id} (the audit trail's row of this run)", 8, MUTED)
    driving = driving_region(result)
    region = (f"driving region {driving.id}: {len(driving.tiles)} tile(s), score {driving.score:.2f}"
              if driving is not None else "no slide call for this model, read the map"
              if call["label"] == NOT_CALLED else "no region qualified")
    pdf.banner(f"Slide call: {pretty(call['label'])} - {region}", ALERT if driving is not None else ACCENT)
    _, explained = call_text(call)
    pdf.line_text(explained, 9)
    pdf.ln(1)
    caption = ("p(malignant) per tile; the driving region outlined (white)" if driving is not None
               else "p(malignant) per tile; no slide call for this model, none outlined" if call["label"] == NOT_CALLED
               else "p(malignant) per tile; no region qualified, none outlined")
    pdf.pictures([(caption, heatmap_rgb(result, opacity))])
    pdf.colour_scale(P_MALIGNANT_SCALE)  # an absolute 0-1 map, not a Grad-CAM
    shown = driving if driving is not None else (result.regions[0] if result.regions else None)
    if shown is not None:
        pdf.heading(("Tiles of the driving region" if driving is not None
                     else "Tiles of the most suspicious region (it did not qualify)"), 10)
        part = result.tiles.loc[shown.rows].sort_values("p_malignant", ascending=False).head(40)
        reliable = (result.model or {}).get("subtype_reliable", True)  # the app's rule, as the tiles CSV has it
        pdf.table(["tile", "x (level 0)", "y (level 0)", "p(malignant)", "subtype"],
                  [[int(t.tile), int(t.x), int(t.y), f"{t.p_malignant:.3f}", subtype_shown(t.subtype, reliable)]
                   for t in part.itertuples()], widths=[20, 30, 30, 30, 70])
    for note in result.notes:
        pdf.line_text(f"Note: {note}", 8, MUTED)
    pdf.ln(2)
    _sign_off(pdf)
    return bytes(pdf.output())
