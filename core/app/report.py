"""The diagnosis results: the case table and case-level calls, and their CSV (core.app.pdf_report writes
the PDF report from them). Built in memory and handed to the browser; nothing is written to disk.
"""

from __future__ import annotations

import pandas as pd

from core.app.registry import data_text
from core.data.histology import NOT_ANALYSED
from core.data.labels import pretty
from core.evaluation.subtype_trust import subtype_shown
from core.model.decisions import at_least, below, threshold_text
from core.model.predict import DEFAULT_REFER_THRESHOLD, case_decision
from core.slide.call import tile_threshold
from core.spreadsheet import spreadsheet_csv

# Each stage's threshold (as threshold_text states it) and reasons, and where the thresholds come from:
# "reasons" alone left out why the subtype was referred ("stage 1 referred") and which thresholds applied.
STAGE_COLUMNS = ["stage 1 threshold", "stage 1 reasons", "subtype threshold", "subtype reasons", "thresholds source"]
TABLE_COLUMNS = ["file", "case", "magnification", "call", "subtype", "p_benign", "p_malignant", "p_subtype",
                 "confidence", "refer for review", "refer stage 1", "refer subtype", "reasons", *STAGE_COLUMNS,
                 "notes", "error", "model", "audit id"]
# What the page shows first, so the refer reasons are never off-screen to the right; the CSV keeps
# every column in TABLE_COLUMNS' order.
# The call beside its own probability (a 0.97 malignant call read as "confidence 0.35", the joint
# p(class) x p(subtype | class) of an unreliable subtype, misled); the joint figure stays, explained.
SHOWN_FIRST = ["file", "call", "p_malignant", "subtype", "p_subtype", "refer stage 1", "refer subtype", "reasons"]
CONFIDENCE_HELP = ("p(call) x p(subtype | call): how probable the call AND its subtype are together; the call's own "
                   "probability is p_malignant (or 1 - p_malignant for benign)")


def referral_lines(prediction, warnings: list | None = None) -> list[tuple[str, bool]]:
    """[(sentence, referred)] for stage 1 and the subtype: the flag, its reasons and its threshold
    (the page, the PDF); the image's warnings also send it to review."""
    lines = []
    for stage, name, value in (("stage1", "Stage 1", prediction.p_label), ("subtype", "Subtype", prediction.p_subtype)):
        block = (prediction.referral or {}).get(stage)
        if block is None:
            lines.append((f"{name}: " + ("refer for review" if prediction.refer else "not referred"), prediction.refer))
            continue
        if block["refer"]:
            lines.append((f"{name}: refer for review ({'; '.join(block['reasons'])})", True))
        else:
            lines.append((f"{name}: not referred (p {at_least(value, block['threshold'])})", False))
    if warnings:
        lines.append(("Refer for review: see the image warning below", True))
    return lines


def heatmap_caption(stage: int, method: str, explanation, subtype_reliable: bool) -> str:
    """'Stage 1 Grad-CAM: Malignant'; a stage-2 map of a subtype core.evaluation.subtype_trust calls not
    reliable says so, as the call itself does, rather than name the subtype as a plain finding."""
    return map_caption(stage, method, explanation.target, subtype_reliable, explanation.note)


def map_caption(stage: int, method: str, target: str, subtype_reliable: bool, note: str | None = None) -> str:
    """heatmap_caption from the map's target: the one wording of the page, the PDF and the Slide page's tiles."""
    shown = pretty(target) if stage == 1 else subtype_shown(target, subtype_reliable)
    return f"Stage {stage} {method}: {'' if stage == 1 or subtype_reliable else 'subtype '}{shown}" + (
        f" ({note})" if note else "")


def magnification_text(result) -> str:
    """'magnification 40X (file name)'; one that is not stated says so once ('not stated (not stated)')."""
    source = result.magnification_source
    return f"magnification {result.magnification}" + (f" ({source})" if source and source != result.magnification else "")


def tta_label(predictor) -> tuple[str, str]:
    """(the test-time augmentation toggle's label, its help), with the number of views the model averages: a
    field model's card declares its crops in the 8 symmetries (the views its uncertainty is measured across);
    a whole-field model's are the 8 symmetries of the image."""
    views = predictor.members[0].views
    if predictor.tta_fixed() and views is not None:
        return (f"Test-time augmentation ({views.views_per_image} views)",
                f"Always on for this model: its declared views (model card) are its {views.crops} crops in the 8 "
                f"symmetries (flips and rotations), {views.views_per_image} views averaged.")
    return "Test-time augmentation (8 views)", "The average of the image in its 8 symmetries (flips and rotations)."


TILED, REPEATED = "analysed as tiles", "given more than once"  # the call of an upload reported elsewhere


def elsewhere_rows(tiled: list[tuple], repeats: list[tuple[str, str]]) -> list[dict]:
    """The uploads of a run that have no per-image result, so that the CSV and the PDF a pathologist signs
    list every upload as the page and `predict` do (they left them out): each upload analysed as tiles
    (tiled: (ImageResult, its tiles' call dict (core.slide.call) or the error, the audit id of its slide
    row)) and each repeat (repeats: core.app.service.distinct_items' (name, the name analysed))."""
    rows = []
    for r, call, audit_id in tiled:
        what = f"not analysed: {call}" if isinstance(call, str) else (
            f"call over the tiles: {pretty(call['label'])}, {call['malignant_tiles']} of {call['tissue_tiles']} tissue "
            f"tiles have p(malignant) >= {tile_threshold(call):g}")
        rows.append({"file": r.name, "case": r.case or "", "magnification": r.magnification, "call": TILED,
                     "reasons": f"{what}; every tile is on the Slide page, not in this table", "audit id": audit_id or ""})
    return rows + [{"file": name, "call": REPEATED, "reasons": f"the same bytes as {first}, analysed once as that file"}
                   for name, first in dict.fromkeys(repeats)]


def results_table(results: list, badge: str, subtype_reliable: bool = True, audit_ids: dict | None = None,
                  elsewhere: list[dict] = ()) -> pd.DataFrame:
    """The case table: one row per image (errors included, so nothing disappears silently), then the
    elsewhere_rows of the uploads analysed as tiles or given twice.

    results: core.app.service.ImageResult list; badge: core.app.registry.model_badge(card);
    subtype_reliable: core.evaluation.subtype_trust.subtype_reliability(card)[0]; audit_ids:
    core.app.records.record_diagnosis's {(name, sha256): audit id}, the row each result was recorded as.
    """
    rows = []
    for r in results:
        row = dict.fromkeys(TABLE_COLUMNS, "")  # never None/NaN: an empty cell reads as empty
        row.update({"file": r.name, "case": r.case or "", "magnification": r.magnification})
        if r.ok:
            p = r.prediction
            row.update({
                "p_benign": float(p.shown(p.stage1["benign"], 4)),
                "p_malignant": float(p.shown(p.stage1["malignant"], 4)),
                "call": p.label, "subtype": subtype_shown(p.subtype, subtype_reliable),
                "p_subtype": float(p.shown(p.stage2[p.subtype], 4, "subtype")),
                "confidence": round(float(p.confidence), 4),
                "refer for review": "YES" if r.refer else "no",
                "refer stage 1": "YES" if p.refer_stage1 else "no",
                "refer subtype": "YES" if p.refer_subtype else "no",
                "reasons": "; ".join(r.refer_reasons),
                "notes": "; ".join(r.notes), "error": "",
                **stage_cells(p),
            })
        elif r.error:
            row.update({"call": "not analysed: unreadable", "error": r.error})
        else:  # not H&E tissue (core.data.histology): no call, no subtype, no probabilities
            row.update({"call": NOT_ANALYSED, "reasons": r.not_histology, "notes": "; ".join(r.notes)})
        row["model"] = badge
        row["audit id"] = (audit_ids or {}).get((r.name, r.sha256), "")
        rows.append(row)
    rows += [{**dict.fromkeys(TABLE_COLUMNS, ""), **other, "model": badge} for other in elsewhere]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def stage_cells(prediction) -> dict[str, str]:
    """The STAGE_COLUMNS cells of one prediction (blank without per-stage referral)."""
    referral = prediction.referral or {}
    cells = {"thresholds source": referral.get("thresholds_source", "")}
    for stage, name in (("stage1", "stage 1"), ("subtype", "subtype")):
        block = referral.get(stage) or {}
        cells[f"{name} threshold"] = threshold_text(block["threshold"]) if "threshold" in block else ""
        cells[f"{name} reasons"] = "; ".join(block.get("reasons", []))
    return cells


def thresholds_in_use(results: list) -> tuple[float, float, str] | None:
    """(stage 1, subtype, source): the referral thresholds the results were judged by (one run, one
    predictor and setting), or None when no result has per-stage referral."""
    for r in results:
        referral = r.prediction.referral if r.ok else None
        if referral:
            return (float(referral["stage1"]["threshold"]), float(referral["subtype"]["threshold"]),
                    referral.get("thresholds_source", "source not stated"))
    return None


NUMBER_COLUMNS = ["p_benign", "p_malignant", "p_subtype", "confidence", "audit id"]


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """The case table as the page shows it: the call and its refer reasons first. A number column
    with an empty cell (an image without a call) is shown as text: mixed with numbers, Arrow refused
    the table and every run logged a traceback. Empty, not NaN: Streamlit would print "None"."""
    shown = table[SHOWN_FIRST + [c for c in table.columns if c not in SHOWN_FIRST]].copy()
    for column in NUMBER_COLUMNS:
        if (shown[column].astype(str) == "").any():
            shown[column] = shown[column].astype(str)
    return shown


CASE_COLUMNS = ["case", "images", "call", "p_malignant", "subtype", "p_subtype", "confidence", "refer for review",
                "reasons"]


def case_calls(results: list, refer_threshold: float | None = None,
               malignant_threshold: float = 0.5, subtype_reliable: bool = True) -> pd.DataFrame:
    """One call per case by core.model.predict.case_decision (the rule patient-level evaluation uses),
    malignant from `malignant_threshold` on (the model's validated case threshold, Predictor.case_threshold).

    Images whose names carry no case id get no case call (uncased_note says so): pooled as one case,
    unrelated uploads were called as if they came from one patient.
    """
    groups: dict[str, list] = {}
    left_out: dict[str, int] = {}  # images of a case that got no call because they are not H&E tissue
    unreadable: dict[str, int] = {}  # images of a case that could not be read at all
    for r in results:
        case = r.case
        if not case:
            continue
        if r.ok:
            groups.setdefault(case, []).append(r)
        elif r.not_histology:
            left_out[case] = left_out.get(case, 0) + 1
        elif r.error:
            unreadable[case] = unreadable.get(case, 0) + 1
    rows = []
    for case, members in groups.items():
        decision = case_decision([m.prediction for m in members], malignant_threshold)
        label, subtype, p_class, p_subtype = decision.label, decision.subtype, decision.p_class, decision.p_subtype
        agreeing = sum(m.prediction.label == label for m in members)
        confidence = decision.confidence
        reasons = []
        first, second = (refer_threshold, refer_threshold) if refer_threshold is not None else _thresholds(members)
        # below(), as the images' reasons: 2 fixed decimals printed "0.98 below 0.98" for 0.975 and 0.976.
        if p_class[label] < first:
            reasons.append(f"case stage 1 uncertain: p({label}) {below(p_class[label], first)}")
        if p_subtype[subtype] < second:
            reasons.append(f"case subtype uncertain: p({pretty(subtype)}) {below(p_subtype[subtype], second)}")
        if agreeing < len(members):
            reasons.append(f"images disagree ({agreeing}/{len(members)} say {label})")
        if any(m.refer for m in members):
            reasons.append("an image is flagged")
        if left_out.get(case):
            reasons.append(f"{left_out[case]} image(s) not analysed (not H&E tissue), not counted")
        if unreadable.get(case):
            reasons.append(f"{unreadable[case]} image(s) unreadable, not counted")
        rows.append({
            "case": case, "images": len(members), "call": label,
            "p_malignant": round(p_class["malignant"], 4), "subtype": subtype_shown(subtype, subtype_reliable),
            "p_subtype": round(p_subtype[subtype], 4), "confidence": round(confidence, 4),
            "refer for review": "YES" if reasons else "no", "reasons": "; ".join(reasons),
        })
    return pd.DataFrame(rows, columns=CASE_COLUMNS)


def uncased_note(results: list) -> str | None:
    """Why analysed images without a BreakHis case id in their names have no case call (None if none)."""
    names = [r.name for r in results if r.ok and not r.case]
    if not names:
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"{len(names)} image(s) without a BreakHis case id in their names ({shown}) get no case call: "
            "a case call pools the images of one patient, and these may come from different patients.")


def case_rule(card: dict, threshold: float) -> str:
    """How a case is called, for the caption over the case table: the threshold is the validated one only
    when the model's evaluation chose it (thresholds.case_malignant), named with the data it was chosen on
    (a cross-validated model's pooled out-of-fold patients, not "validation patients"); an unevaluated
    model (an ensemble built from members, a demo) calls from the default 0.5."""
    thresholds = card.get("thresholds") or {}
    on = data_text((thresholds.get("case_malignant_selection") or {}).get("selected_on"))
    chosen = ("the default: no evaluation chose one for this model" if "case_malignant" not in thresholds else
              f"the threshold this model's evaluation chose on {on}" if on else
              "the threshold this model's evaluation chose; the model card does not say on which data")
    return (f"Mean p(malignant) over the case's images, called malignant from {threshold_text(threshold)} ({chosen}), then the "
            "most probable subtype of that class. Cases come from BreakHis-style file names.")


def _thresholds(members) -> tuple[float, float]:
    """The (stage 1, subtype) referral thresholds the case's images were judged by (their model's)."""
    referral = members[0].prediction.referral or {}
    return tuple(float(referral.get(stage, {}).get("threshold", DEFAULT_REFER_THRESHOLD))
                 for stage in ("stage1", "subtype"))


def results_csv(table: pd.DataFrame) -> bytes:
    """For a spreadsheet, as the audit log's export (core.spreadsheet): an uploaded file's name that
    starts like a formula stays text; UTF-8 with a byte-order mark keeps "·" and non-ASCII names."""
    return spreadsheet_csv(table)
