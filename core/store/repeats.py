"""Repeats of one result: the diagnosis (or slide) rows of the same image by the same model.

The same image analysed again by the same model (another upload, changed referral threshold or TTA)
is a new audit row, each kept. For review they are one result: the Review queue shows the newest of
them once, it waits since the first, and a review of any of them settles them all (a reviewer's
verdict is about the tissue, whatever the settings). A row with no image hash is a result of its own.

`same_result` is the one definition: the queue's folding (NEWER_REPEAT, REPEAT_REVIEWED, FIRST_SEEN)
and a card's list of repeats (repeats_of) are both SQL built from it, so they cannot disagree.
"""

from __future__ import annotations

from sqlalchemy import and_, exists, func, or_, select
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


_OTHER = aliased(AuditEvent)  # another row, as seen from a result row
_REVIEW = aliased(AuditEvent)
_SAME_RESULT = or_(_OTHER.id == AuditEvent.id, same_result(_OTHER, AuditEvent))  # its result's rows
NEWER_REPEAT = exists().where(_SAME_RESULT, _OTHER.id > AuditEvent.id)  # the row is not the newest of its result
REPEAT_REVIEWED = exists(select(_OTHER.id).join(_REVIEW, _REVIEW.refers_to == _OTHER.id)
                         .where(_REVIEW.kind == "review", _SAME_RESULT))  # any row of its result was reviewed
FIRST_SEEN = select(func.min(_OTHER.id)).where(_SAME_RESULT).scalar_subquery()  # when its result began to wait


def repeats_of(store, rows: list[dict], kinds) -> dict[int, list[int]]:
    """{row id: the ids of the other rows of its result, oldest first ([] for a row not of `kinds`), in one query."""
    found: dict[int, list[int]] = {row["id"]: [] for row in rows}
    with store.reading("The audit trail could not be read") as session:
        pairs = session.execute(select(AuditEvent.id, _OTHER.id).join(_OTHER, same_result(_OTHER, AuditEvent))
                                .where(AuditEvent.id.in_(list(found)), AuditEvent.kind.in_(kinds),
                                       _OTHER.id != AuditEvent.id).order_by(_OTHER.id)).all()
    for row_id, other in pairs:
        found[row_id].append(other)
    return found
