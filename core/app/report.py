"""The diagnosis report: the case table and case-level calls, their CSV, and the PDF/PNG report
with the Grad-CAM overlays.

Downloads are built in memory and handed to the browser; nothing is written to disk on the
server. The report is drawn with Pillow (its bundled scalable font), so it needs no extra
dependency and renders the same on any machine.
"""

from __future__ import annotations

import datetime
import io

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from core.data.labels import pretty
from core.model.predict import DEFAULT_REFER_THRESHOLD, case_decision

PAGE = (1240, 1754)  # A4 at 150 dpi
MARGIN = 70
INK, MUTED, ACCENT, ALERT = (31, 45, 54), (96, 112, 122), (43, 111, 142), (176, 48, 48)
DISCLAIMER = ("Research use only. Not a medical device. Every result must be reviewed by a "
              "pathologist; heat maps show where the model looked, not where disease is.")


TABLE_COLUMNS = ["file", "case", "magnification", "call", "subtype", "p_benign", "p_malignant", "p_subtype",
                 "confidence", "refer for review", "reasons", "notes", "error", "model"]


def results_table(results: list, badge: str) -> pd.DataFrame:
    """The case table: one row per image (errors included, so nothing disappears silently).

    results: core.app.service.ImageResult list; badge: core.app.registry.model_badge(card).
    """
    rows = []
    for r in results:
        row = {"file": r.name, "case": r.case or "", "magnification": r.magnification}
        if r.ok:
            p = r.prediction
            row.update({
                "p_benign": round(float(p.stage1["benign"]), 4),
                "p_malignant": round(float(p.stage1["malignant"]), 4),
                "call": p.label, "subtype": pretty(p.subtype),
                "p_subtype": round(float(p.stage2[p.subtype]), 4),
                "confidence": round(float(p.confidence), 4),
                "refer for review": "YES" if r.refer else "no",
                "reasons": "; ".join(r.refer_reasons),
                "notes": "; ".join(r.notes), "error": "",
            })
        else:
            row.update({"call": "", "refer for review": "", "error": r.error})
        row["model"] = badge
        rows.append(row)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def case_calls(results: list, refer_threshold: float = DEFAULT_REFER_THRESHOLD,
               malignant_threshold: float = 0.5) -> pd.DataFrame:
    """One call per case by core.model.predict.case_decision (the rule patient-level evaluation uses),
    malignant from `malignant_threshold` on (the model's validated case threshold, Predictor.case_threshold).

    Images whose names carry no case id are pooled as one uploaded case.
    """
    groups: dict[str, list] = {}
    for r in results:
        if r.ok:
            groups.setdefault(r.case or "uploaded images (no case id in names)", []).append(r)
    rows = []
    for case, members in groups.items():
        decision = case_decision([m.prediction for m in members], malignant_threshold)
        label, subtype, p_class, p_subtype = decision.label, decision.subtype, decision.p_class, decision.p_subtype
        agreeing = sum(m.prediction.label == label for m in members)
        confidence = decision.confidence
        reasons = []
        if confidence < refer_threshold:
            reasons.append(f"case confidence {confidence:.2f} below {refer_threshold:.2f}")
        if agreeing < len(members):
            reasons.append(f"images disagree ({agreeing}/{len(members)} say {label})")
        if any(m.refer for m in members):
            reasons.append("an image is flagged")
        rows.append({
            "case": case, "images": len(members), "call": label,
            "p_malignant": round(p_class["malignant"], 4), "subtype": pretty(subtype),
            "p_subtype": round(p_subtype[subtype], 4), "confidence": round(confidence, 4),
            "refer for review": "YES" if reasons else "no", "reasons": "; ".join(reasons),
        })
    return pd.DataFrame(rows)


def results_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode("utf-8")


def _font(size: int) -> ImageFont.ImageFont:
    # Pillow's bundled font is scalable when FreeType is present; no system fonts needed.
    return ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    return lines + ([line] if line else [])


class _Page:
    """A white page with a cursor; each method draws one block and moves the cursor down."""

    def __init__(self):
        self.image = Image.new("RGB", PAGE, "white")
        self.draw = ImageDraw.Draw(self.image)
        self.y = MARGIN

    def text(self, text: str, size: int = 24, colour=INK, gap: int = 8) -> None:
        font = _font(size)
        for line in _wrap(self.draw, text, font, PAGE[0] - 2 * MARGIN):
            self.draw.text((MARGIN, self.y), line, fill=colour, font=font)
            self.y += int(size * 1.3)
        self.y += gap

    def banner(self, text: str, colour) -> None:
        font = _font(28)
        self.draw.rectangle((MARGIN, self.y, PAGE[0] - MARGIN, self.y + 50), fill=colour)
        self.draw.text((MARGIN + 16, self.y + 10), text, fill="white", font=font)
        self.y += 66

    def images(self, panels: list[tuple[str, np.ndarray]]) -> None:
        width = (PAGE[0] - 2 * MARGIN - 20 * (len(panels) - 1)) // len(panels)
        tallest = 0
        for i, (caption, rgb) in enumerate(panels):
            picture = Image.fromarray(rgb)
            picture.thumbnail((width, width))
            x = MARGIN + i * (width + 20)
            self.image.paste(picture, (x, self.y))
            self.draw.text((x, self.y + picture.height + 6), caption, fill=MUTED, font=_font(20))
            tallest = max(tallest, picture.height)
        self.y += tallest + 44

    def bars(self, title: str, probabilities: dict[str, float], highlight: str) -> None:
        self.text(title, size=24, colour=ACCENT, gap=2)
        font, full = _font(22), PAGE[0] - 2 * MARGIN - 420
        for name, p in probabilities.items():
            colour = ACCENT if name == highlight else (170, 190, 200)
            self.draw.text((MARGIN, self.y), pretty(name), fill=INK, font=font)
            self.draw.rectangle((MARGIN + 320, self.y + 4, MARGIN + 320 + int(full * p), self.y + 24),
                                fill=colour)
            self.draw.text((MARGIN + 330 + full, self.y), f"{p:.3f}", fill=INK, font=font)
            self.y += 32
        self.y += 10

    def table(self, frame: pd.DataFrame, columns: list[str]) -> None:
        font = _font(20)
        widths = (PAGE[0] - 2 * MARGIN) // len(columns)
        for i, column in enumerate(columns):
            self.draw.text((MARGIN + i * widths, self.y), column, fill=ACCENT, font=font)
        self.y += 30
        for _, row in frame.iterrows():
            for i, column in enumerate(columns):
                value = str(row.get(column, ""))[:28]
                self.draw.text((MARGIN + i * widths, self.y), value, fill=INK, font=font)
            self.y += 28
        self.y += 12


def _header(page: _Page, model: dict) -> None:
    page.text("Breast histopathology - decision-support report", size=36, colour=ACCENT, gap=4)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page.text(f"Generated {stamp} | model {model['name']} ({model['backbone']}, {model['hierarchy']}), "
              f"trained on {model['data']}, {model['protocol']} split", size=20, colour=MUTED)
    if model["demo"]:
        page.banner("DEMO MODEL - not validated, results are not a diagnosis", ALERT)
    elif model.get("limited"):
        page.banner("LIMITED DATA MODEL - not a diagnosis", ALERT)
        page.text(f"{model['evidence']}; {model['measured'] or 'not evaluated'}.", size=20, colour=ALERT)


def _image_page(result, overlays: tuple[np.ndarray, np.ndarray], model: dict) -> Image.Image:
    page = _Page()
    _header(page, model)
    p = result.prediction
    page.text(f"{result.name}", size=28, gap=2)
    page.text(f"Case {result.case or 'not stated'} | magnification {result.magnification} "
              f"({result.magnification_source})", size=20, colour=MUTED)
    call = f"{pretty(p.label)} - {pretty(p.subtype)} (confidence {p.confidence:.2f})"
    page.banner(("REFER FOR REVIEW: " if result.refer else "") + call, ALERT if result.refer else ACCENT)
    page.images([("Image", result.image.rgb),
                 (f"Stage 1 heat map: {pretty(p.label)}", overlays[0]),
                 (f"Stage 2 heat map: {pretty(p.subtype)}", overlays[1])])
    page.bars("Stage 1: benign vs malignant", p.stage1, p.label)
    page.bars(f"Stage 2: {pretty(p.label)} subtypes", p.stage2, p.subtype)
    for reason in result.refer_reasons:
        page.text(f"Review: {reason}", size=20, colour=ALERT, gap=0)
    for note in result.notes:
        page.text(f"Note: {note}", size=20, colour=MUTED, gap=0)
    page.y = PAGE[1] - MARGIN - 60
    page.text(DISCLAIMER, size=18, colour=MUTED)
    return page.image


def _summary_page(cases: pd.DataFrame, errors: list[str], model: dict) -> Image.Image:
    page = _Page()
    _header(page, model)
    page.text("Case-level calls", size=28, colour=ACCENT)
    if len(cases):
        page.table(cases, ["case", "images", "call", "subtype", "confidence", "refer for review"])
    for error in errors:
        page.text(f"Not analysed: {error}", size=20, colour=ALERT, gap=0)
    page.y = PAGE[1] - MARGIN - 60
    page.text(DISCLAIMER, size=18, colour=MUTED)
    return page.image


def build_report(results: list, overlays: dict[str, tuple[np.ndarray, np.ndarray]], cases: pd.DataFrame,
                 model: dict, fmt: str = "pdf") -> bytes:
    """A summary page plus one page per analysed image. fmt "pdf" (multi-page) or "png" (stacked).

    results: core.app.service.ImageResult list; overlays: digest -> (stage-1, stage-2) overlay RGB;
    model: core.app.registry.describe_model(card).
    """
    pages = [_summary_page(cases, [r.error for r in results if r.error], model)]
    pages += [_image_page(r, overlays[r.digest], model) for r in results if r.ok]
    buffer = io.BytesIO()
    if fmt == "pdf":
        pages[0].save(buffer, format="PDF", save_all=True, append_images=pages[1:], resolution=150)
    elif fmt == "png":
        sheet = Image.new("RGB", (PAGE[0], PAGE[1] * len(pages)), "white")
        for i, page in enumerate(pages):
            sheet.paste(page, (0, i * PAGE[1]))
        sheet.save(buffer, format="PNG", optimize=True)
    else:
        raise ValueError(f"Report format must be 'pdf' or 'png', not {fmt!r}")
    return buffer.getvalue()
