"""The shape of a model card: which blocks the app reads with .get, and of which type each must be.

A card can be valid JSON with one field edited by hand ("training": "oops"): every reader would then
crash (Model performance, Dataset, Diagnose, the sidebar). This is the one check of that shape:
core.model.folders.read_card refuses such a card, naming the field, and the readers of a card that
was made active before the check (usable_card) drop the wrongly typed blocks rather than crash.
No Keras here, so the readers may import it cheaply.
"""

from __future__ import annotations

# Each block the app reads (the sidebar, Model performance, Dataset, the predictor), by its path in the card,
# with the type it must have when present (an object may also be null).
NUMBER = (int, float)
CARD_SHAPE = {("training",): dict, ("evidence",): dict, ("metrics",): dict, ("calibration",): dict,
              ("thresholds",): dict, ("views",): dict, ("versions",): dict, ("members",): list,
              ("training", "counts"): dict, ("training", "settings"): dict, ("training", "by_subtype"): dict,
              ("evidence", "by_class"): dict, ("evidence", "by_magnification"): dict,
              ("calibration", "temperatures"): dict, ("thresholds", "uncertainty"): dict,
              ("thresholds", "referral"): dict, ("thresholds", "slide_rule"): dict,
              ("thresholds", "case_malignant"): NUMBER, ("metrics", "intervals"): dict, ("metrics", "data"): dict}
_TYPE_NAMES = {dict: "an object", list: "a list", str: "text", int: "a number", float: "a number", bool: "true or false",
               type(None): "null", NUMBER: "a number"}


def _wrongly_typed(card: dict) -> list[tuple[tuple, str]]:
    """[(path, "'training' is text, not an object")] for each block of CARD_SHAPE of another type."""
    wrong = []
    for path, kind in CARD_SHAPE.items():
        parent = card
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue
        value = parent[path[-1]]
        if (kind is dict and value is None) or (isinstance(value, kind) and not isinstance(value, bool)):
            continue
        found = _TYPE_NAMES.get(type(value), type(value).__name__)
        wrong.append((path, f"{'.'.join(path)!r} is {found}, not {_TYPE_NAMES[kind]}"))
    return wrong


def card_shape_problems(card: dict) -> list[str]:
    """Each block of the card whose type is not the one the app reads (CARD_SHAPE), in words; [] when none."""
    return [words for _, words in _wrongly_typed(card)]


def usable_card(card: dict) -> dict:
    """The card without its blocks of a wrong type (CARD_SHAPE), for a reader that must not crash on a card
    edited by hand (one made active before the check, or read without read_card); the card itself when sound."""
    wrong = _wrongly_typed(card)
    if not wrong:
        return card
    card = {**card}
    for path, _ in sorted(wrong, key=lambda item: len(item[0])):
        parent = card
        for key in path[:-1]:
            if not isinstance(parent.get(key), dict):
                break
            parent[key] = parent = {**parent[key]}
        else:
            parent.pop(path[-1], None)
    return card
