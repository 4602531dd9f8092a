"""Repeats of one result: the diagnosis (or slide) rows of the same image by the same model.

The same image analysed again by the same model (another upload, changed referral threshold or TTA)
is a new audit row, each kept. For review they are one result: the Review queue shows the newest of
them once, it waits since the first, and a review of any of them settles them all (a reviewer's
verdict is about the tissue, whatever the settings). A row with no image hash is a result of its own.

`same_result` is the one definition: the queue's folding (`folding`) and a card's list of repeats
(repeats_of) are both SQL built from it, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, true
from sqlalchemy.orm import aliased

from core.store.models import AuditEvent


def result_key(row) -> tuple:
    """What two rows of one result share, as SQL on `row` (AuditEvent or an alias of it): the image's hash,
    the kind, and the model: its weights' hash, else its name (an empty text names nothing). The kind is
    wrapped in coalesce (it is never NULL) so that SQLite looks repeats up by the image's index, not the
    kind's (which reads every diagnosis for each row: 12 s instead of 0.02 s for a 10,000-row queue)."""
    return row.image_sha256, func.coalesce(row.kind, ""), func.coalesce(func.nullif(row.model_sha256, ""),
                                                                         func.nullif(row.model, ""), "")


def same_result(other, row):
    """SQL: `other` is another row of `row`'s result: their result_key is equal, and `row` has an image
    hash (NULL or empty: a result of its own). The image hash is compared as a plain column, so its
    index serves the look-ups."""
    return and_(row.image_sha256 != "", *(mine == theirs for mine, theirs in zip(result_key(row), result_key(other))))


def _every(row):
    return true()


@dataclasses.dataclass(frozen=True)
class Folding:
    """The queue's SQL on a result row (AuditEvent), over the rows some predicate admits."""

    newer_repeat: ColumnElement  # the row is not the newest of its result
    reviewed: ColumnElement  # a row of its result was reviewed
    first_seen: ColumnElement  # when its result began to wait: its oldest row's id


def folding(admits=_every) -> Folding:
    """The Folding over the rows `admits` (a predicate on an AuditEvent alias; default: every row)."""
    other, review = aliased(AuditEvent), aliased(AuditEvent)  # another row, and a review, as seen from a result row
    same = and_(or_(other.id == AuditEvent.id, same_result(other, AuditEvent)), admits(other))  # its result's rows
    return Folding(newer_repeat=exists().where(same, other.id > AuditEvent.id),
                   reviewed=exists(select(other.id).join(review, review.refers_to == other.id)
                                   .where(review.kind == "review", admits(review), same)),
                   first_seen=select(func.min(other.id)).where(same).scalar_subquery())


def repeats_of(store, rows: list[dict], kinds, admits=_every) -> dict[int, list[int]]:
    """{row id: the ids of the other rows of its result that `admits`, oldest first ([] for a row not of `kinds`),
    in one query."""
    found: dict[int, list[int]] = {row["id"]: [] for row in rows}
    other = aliased(AuditEvent)
    with store.reading("The audit trail could not be read") as session:
        pairs = session.execute(select(AuditEvent.id, other.id).join(other, same_result(other, AuditEvent))
                                .where(AuditEvent.id.in_(list(found)), AuditEvent.kind.in_(kinds),
                                       other.id != AuditEvent.id, admits(other)).order_by(other.id)).all()
    for row_id, other_id in pairs:
        found[row_id].append(other_id)
    return found
