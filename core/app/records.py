"""What the audit trail keeps of a diagnosis or a slide run, built from the service's results.

One row per analysed image: who, when (the store stamps UTC), the file name and the SHA-256 of
its bytes, the model's name and weights SHA-256 (card["sha256"], checked when the folder loads;
each ensemble member's too) and whether it was DEMO / LIMITED DATA (its badge and evidence statement
as the sidebar showed them, so a review card labels the row's own model), the app version (the store),
the calls with their calibrated probabilities, whether the subtype is reliable (an "agree" confirms it
only then), the refer reasons and each stage's referral, and the settings that produced them (TTA,
stain normalisation, thresholds: diagnosis_settings; not the heat-map method, a display choice). The
returned ids go on the page, the CSV and the PDF, so a printed result can be traced back to its row. No
image bytes are ever put in a row. recorded_badge, recorded_call and recorded_referral read a row back
for its Review card.
"""

from __future__ import annotations

import json

from core.app.registry import describe_model, model_badge
from core.data.labels import pretty
from core.evaluation.subtype_trust import SUBTYPE_NOT_RELIABLE
from core.store.audit import Store
from core.store.images import keeping_images

NOT_RECORDED = "model status not recorded"  # a row from before `limited` was recorded, of a model not DEMO


def _members(predictor) -> list:
    """An ensemble's member predictors; [] for a single model (whose `members` is itself)."""
    return [m for m in getattr(predictor, "members", []) if m is not predictor]


def calibrated(predictor) -> bool:
    """Whether the probabilities shown are calibrated: an ensemble's card has no temperatures of its
    own, but it averages its members' calibrated outputs (core.model.ensemble), so it is when all are."""
    members = _members(predictor)
    if members:
        return all(calibrated(m) for m in members)
    return bool(getattr(predictor, "temperatures", None)) and describe_model(predictor.card)["calibrated"]


def model_identity(predictor) -> dict:
    """Name, weights SHA-256 and (for an ensemble) each member's, of the model that made a call, and what
    its card says of its evidence (registry.describe_model: DEMO, LIMITED DATA, the statement, the badge)."""
    members = _members(predictor)
    info = describe_model(predictor.card)
    return {"model": predictor.name, "model_sha256": str(predictor.card.get("sha256", "")) or None,
            "members": [{"name": m.name, "sha256": m.card.get("sha256")} for m in members],
            "demo": info["demo"], "limited": info["limited"], "evidence": info["evidence"],
            "badge": model_badge(predictor.card), "calibrated": calibrated(predictor),
            "subtype_reliable": info["subtype_reliable"]}


def _evidence(identity: dict) -> dict:
    """The identity's fields a row's details keep: they label the row's own model on its review card."""
    return {key: identity[key] for key in ("members", "demo", "limited", "evidence", "badge")}


def recorded_badge(details: dict) -> str | None:
    """The badge of the model that made a recorded call, as recorded with it ('DEMO · ...', 'LIMITED DATA
    · ...'); None when it was neither. A row from before `limited` was recorded has its demo flag only:
    'DEMO' when it was one, else 'model status not recorded' (not a guess from today's model)."""
    if "limited" not in details:
        return "DEMO" if details.get("demo") else NOT_RECORDED
    if details.get("demo") or details["limited"]:
        return details.get("badge") or ("DEMO" if details.get("demo") else "LIMITED DATA")
    return None


def recorded_call(details: dict) -> str:
    """A diagnosis row's call as a Review card states it: stage 1 with p(malignant), the subtype with its
    probability within the class, marked not reliable where the row says so (core.evaluation.subtype_trust).
    Not the joint "confidence" p(class) x p(subtype | class): next to a confident class call, a low product
    reads as doubt about the class."""
    call, subtype, stage2 = details.get("call"), details.get("subtype"), details.get("stage2") or {}
    malignant = (details.get("stage1") or {}).get("malignant")
    stage1 = pretty(call or "no call") + (f" (p(malignant) {malignant:.2f})" if malignant is not None else "")
    if not subtype:
        return f"{stage1} · no subtype"
    notes = [f"p {stage2[subtype]:.2f} within {call}"] if subtype in stage2 else []
    reliable = details.get("subtype_reliable")
    if reliable is False:
        return f"{stage1} · subtype {SUBTYPE_NOT_RELIABLE} (most probable: {', '.join([pretty(subtype), *notes])})"
    if reliable is None:  # a row from before it was recorded
        notes.append("subtype reliability not recorded")
    return f"{stage1} · {pretty(subtype)}" + (f" ({'; '.join(notes)})" if notes else "")


def recorded_referral(details: dict) -> list[tuple[str, bool]]:
    """[(sentence, referred)] of a diagnosis row: each stage's flag with its reasons or the threshold it
    passed (report.referral_lines, as on Diagnose), then the image's own warnings. A row recorded before
    the per-stage referral has its two flags and all reasons; an older one its reasons."""
    from types import SimpleNamespace

    from core.app.report import referral_lines

    reasons = list(details.get("refer_reasons") or [])
    referral = details.get("referral")
    if referral:
        stage1, stage2 = details.get("stage1") or {}, details.get("stage2") or {}
        p = SimpleNamespace(referral=referral, refer=details.get("refer"), p_label=stage1.get(details.get("call"), 0.0),
                            p_subtype=stage2.get(details.get("subtype"), 0.0))
        staged = referral["stage1"]["reasons"] + referral["subtype"]["reasons"]
        return referral_lines(p) + [(f"Referred: {r}", True) for r in reasons if r not in staged]
    if "refer_stage1" in details:
        flags = [(name, details[key]) for name, key in (("Stage 1", "refer_stage1"), ("Subtype", "refer_subtype"))]
        lines = [(f"{name}: {'refer for review' if refer else 'not referred'}", bool(refer)) for name, refer in flags]
        return lines + ([("Reasons: " + "; ".join(reasons), True)] if reasons else [])
    return [("Referred: " + "; ".join(reasons), True)] if details.get("refer") else []


def diagnosis_settings(predictor, tta: bool, refer_threshold: float | None, magnification: str) -> dict:
    """The settings that change what a diagnosis row records, as recorded: with the image and the model, a
    result's audit identity (audit_glue.audit_diagnosis records each once). The call: TTA, stain
    normalisation, the magnification assumed for unnamed images. The referral: the thresholds used per
    stage, the user's own included; it changes no call, but the row records what was shown as referred,
    which orders the Review queue, so a changed one is a new row (the queue folds repeats of one image and
    model). The heat-map method is a display choice, like opacity: not a parameter, not recorded."""
    stage1, subtype, source = predictor.stage_thresholds(refer_threshold)
    return {"tta": bool(predictor.uses_tta(tta)), "stain_normalisation": predictor.normalizer.method,
            "refer_threshold": None if refer_threshold is None else round(float(refer_threshold), 4),
            "refer_thresholds": {"stage1": round(stage1, 4), "subtype": round(subtype, 4), "source": source},
            "magnification_default": magnification,
            "case_threshold": predictor.case_threshold}


def _rounded(probabilities: dict) -> dict:
    return {k: round(float(v), 6) for k, v in probabilities.items()}


def image_row(result, identity: dict, settings: dict, kind: str = "diagnosis") -> dict:
    """The audit row (store.record_many's dict) of one analysed ImageResult."""
    p = result.prediction
    details = {"call": p.label, "subtype": p.subtype, "stage1": _rounded(p.stage1), "stage2": _rounded(p.stage2),
               "other_stage2": _rounded(p.other_stage2), "confidence": round(float(p.confidence), 6),
               "refer": bool(result.refer), "refer_reasons": list(result.refer_reasons),
               "referral": p.referral,  # per stage: the flag, its reasons and its threshold
               "refer_stage1": bool(p.refer_stage1), "refer_subtype": bool(p.refer_subtype),
               "uncertainty": p.uncertainty, "magnification": result.magnification,
               "magnification_source": result.magnification_source, "case": result.case,
               **_evidence(identity), "calibrated": identity["calibrated"], "settings": settings,
               # the app's one rule (core.evaluation.subtype_trust): an "agree" confirms a subtype only when True
               "subtype_reliable": identity["subtype_reliable"],
               "image_kept": keeping_images()}  # the Review card tells a missing kept image from one never kept
    return {"kind": kind, "subject": result.name, "image_sha256": result.sha256, "model": identity["model"],
            "model_sha256": identity["model_sha256"], "details": details}


def audit_key(result) -> tuple[str, str]:
    """How a shown result finds its audit id: (file name, SHA-256 of its bytes)."""
    return result.name, result.sha256


def record_diagnosis(store: Store, user: str, results: list, predictor, settings: dict,
                     kind: str = "diagnosis") -> dict[tuple[str, str], int]:
    """Append one row per analysed result, in one transaction; {audit_key(result): audit id}."""
    analysed = [r for r in results if r.ok]
    if not analysed:
        return {}
    identity = model_identity(predictor)
    rows = [{**image_row(r, identity, settings, kind), "user": user} for r in analysed]
    return dict(zip((audit_key(r) for r in analysed), store.record_many(rows)))


def record_slide(store: Store, user: str, name: str, sha256: str, predictor, summary: dict, settings: dict) -> int:
    """One row for a whole-slide run: `summary` is the slide's calls/probabilities/refer reasons."""
    identity = model_identity(predictor)
    plain = json.loads(json.dumps(summary, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    return store.record("slide", user, name, image_sha256=sha256, model=identity["model"],
                        model_sha256=identity["model_sha256"],
                        details={**plain, **_evidence(identity), "settings": settings})
