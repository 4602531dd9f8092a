"""Whether a model's subtype is shown as a finding: the one rule the app, the CLI, the reports and the
slide exports apply (a subtype head whose macro-F1 is below the colour/texture baseline's, or was never
compared with it, is shown as 'not reliable for this model'), and which images a card's figures were computed on."""

from __future__ import annotations

from core.data.labels import pretty
from core.evaluation.metrics import split_name

SUBTYPE_NOT_RELIABLE = "not reliable for this model"


def tested(metrics: dict) -> str:
    """Which images the card's figures were computed on: 'test' (the held-out split), 'out-of-fold' (a
    cross-validation: every patient tested once, by a model that never saw it), or the split they name
    ('val', 'train': a card an older `evaluate --split` overwrote), never called test figures."""
    data = {**(metrics.get("data") or {}), **{k: metrics[k] for k in ("split", "protocol") if metrics.get(k)}}
    return split_name({"split": "test", **data})


NOT_COMPARED = (f"subtype: {SUBTYPE_NOT_RELIABLE} (its subtype accuracy was not compared with the colour/texture "
                "baseline's on the same held-out patients, so nothing shows it learnt more than colour and texture)")


def subtype_reliability(card: dict) -> tuple[bool, str]:
    """(shown as the headline?, why): a subtype is shown as a finding only when the head's measured macro-F1
    is at least the colour/texture baseline's (core.evaluation.baselines, same held-out patients). Below it,
    or never compared with it, the head is not shown to do better than a few colour and texture statistics,
    so its subtype is shown as 'not reliable for this model'. An ensemble without an evaluation of its own
    is judged by its members' figures: shown only when every member was compared and none is below."""
    from core.model.folders import subtype_figures  # imports Keras: not when the CLI's parser imports this module

    metrics = card.get("metrics") or {}
    figures = subtype_figures(card)  # the figures an ensemble keeps of each member
    model_f1, baseline_f1 = figures["model"], figures["colour_texture_baseline"]
    if model_f1 is None or baseline_f1 is None:
        members = [(m.get("name"), m.get("subtype_figures") or {}) for m in card.get("members") or []]
        compared = [(name, f) for name, f in members
                    if f.get("model") is not None and f.get("colour_texture_baseline") is not None]
        if not members or len(compared) < len(members):
            return False, NOT_COMPARED
        shown = "; ".join(f"{name} {f['model']:.2f} vs {f['colour_texture_baseline']:.2f}" for name, f in compared)
        if any(f["model"] < f["colour_texture_baseline"] for _, f in compared):
            return False, (f"subtype: {SUBTYPE_NOT_RELIABLE} (a member's subtype macro-F1 is below its colour/texture "
                           f"baseline: {shown}; the ensemble has no evaluation of its own)")
        return True, (f"every member's subtype macro-F1 is at least its colour/texture baseline's ({shown}); the "
                      "ensemble has no evaluation of its own")
    data = metrics.get("data") or {}
    size = f"{data.get('images', '?')} {tested(metrics)} images of {data.get('cases', '?')} patients"
    if model_f1 < baseline_f1:
        return False, (f"subtype: {SUBTYPE_NOT_RELIABLE} (subtype macro-F1 {model_f1:.2f} on {size}, below the "
                       f"colour/texture baseline's {baseline_f1:.2f})")
    return True, f"subtype macro-F1 {model_f1:.2f} on {size} (colour/texture baseline {baseline_f1:.2f})"


def subtype_shown(subtype: str, reliable: bool) -> str:
    """The subtype as tables and reports print it: demoted, but still visible, when not reliable."""
    return pretty(subtype) if reliable else f"{SUBTYPE_NOT_RELIABLE} (most probable: {pretty(subtype)})"
