"""Repeats of one result: the diagnosis (or slide) rows of the same image by the same model.

The same image analysed again by the same model (another upload, changed referral threshold or TTA)
is a new audit row, each kept. For review they are one result: the Review queue shows the newest of
them once, it waits since the first, and a review of any of them settles them all (a reviewer's
verdict is about the tissue, whatever the settings). A row with no image hash is a result of its own.
"""

from __future__ import annotations

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import aliased

from core.store.models import AuditEvent

_OTHER = aliased(AuditEvent)  # another row, as seen from a result row
_REVIEW = aliased(AuditEvent)


def _model(row):
    return func.coalesce(row.model_sha256, row.model, "")


_SAME_RESULT = or_(_OTHER.id == AuditEvent.id,
                   and_(_OTHER.kind == AuditEvent.kind, _OTHER.image_sha256 == AuditEvent.image_sha256,
                        _model(_OTHER) == _model(AuditEvent)))
NEWER_REPEAT = exists().where(_SAME_RESULT, _OTHER.id > AuditEvent.id)  # the row is not the newest of its result
REPEAT_REVIEWED = exists(select(_OTHER.id).join(_REVIEW, _REVIEW.refers_to == _OTHER.id)
                         .where(_REVIEW.kind == "review", _SAME_RESULT))  # any row of its result was reviewed
FIRST_SEEN = select(func.min(_OTHER.id)).where(_SAME_RESULT).scalar_subquery()  # when its result began to wait


def repeats_of(store, rows: list[dict], kinds) -> dict[int, list[int]]:
    """{row id: the ids of the other rows of its result (of `kinds`), oldest first}, in one query."""
    images = {row["image_sha256"] for row in rows} - {None}
    with store.reading("The audit trail could not be read") as session:
        others = session.execute(select(AuditEvent.id, AuditEvent.kind, AuditEvent.image_sha256, AuditEvent.model,
                                        AuditEvent.model_sha256).where(AuditEvent.kind.in_(kinds),
                                                                       AuditEvent.image_sha256.in_(images))
                                 .order_by(AuditEvent.id)).mappings().all()
    key = lambda r: (r["kind"], r["image_sha256"], r["model_sha256"] or r["model"] or "")  # noqa: E731
    return {row["id"]: [o["id"] for o in others if row["image_sha256"] and key(o) == key(row) and o["id"] != row["id"]]
            for row in rows}
