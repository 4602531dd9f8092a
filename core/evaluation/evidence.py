"""What a model card says its figures rest on, in the same words wherever the model is described.

A training run writes its card before evaluating the model (core.training.runcard.evidence names the split
the figures will be measured on); until an evaluation has written the card's metrics (--no-evaluate, a cancel
after the model was saved, a failed evaluation) the model is "not evaluated", not "measured on" that split.
"""

from __future__ import annotations

import re

NOT_EVALUATED = "not evaluated"
_MEASURED = "figures measured on "
_MEASURED_CLAUSE = re.compile(re.escape(_MEASURED) + r"[^;]*")  # up to the statement's next clause


def figures_clause(figures_on: str) -> str:
    """'figures measured on <figures_on>', the evidence statement's clause a card is written with."""
    return _MEASURED + figures_on


def is_evaluated(card: dict) -> bool:
    """Whether an evaluation wrote the card's figures (its metrics)."""
    return bool(card.get("metrics"))


def evidence_statement(card: dict) -> str | None:
    """The card's evidence statement, 'not evaluated' in place of the split its figures would be measured on
    while it has none. An ensemble's statement is its members' (evidence.members), each with their own figures:
    kept as written."""
    evidence = card.get("evidence") or {}
    statement = evidence.get("statement")
    if not statement or is_evaluated(card) or "members" in evidence:
        return statement
    return _MEASURED_CLAUSE.sub(NOT_EVALUATED, statement)
