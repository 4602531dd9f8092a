"""One definition of "the same result" (core.store.repeats.same_result) serves both the queue's folding (SQL) and
a card's list of repeats: on SQLite and PostgreSQL they agree, row by row."""

import pytest
from sqlalchemy import select
from sqlalchemy.orm import aliased

from core.store import repeats, reviews
from core.store.models import AuditEvent

CALL = {"call": "benign", "subtype": "adenosis", "refer": False}


def test_the_queue_folds_exactly_the_rows_a_card_lists_as_repeats(store):
    """The queue folded in SQL, the card listed repeats by a Python key of its own: rows whose weights' hash or image
    hash is an empty text were folded by the one and not listed by the other (and unrelated images hidden)."""
    def row(image, model_sha256="a" * 64, model="tiny", kind="diagnosis", **settings):
        return dict(kind=kind, user="ann", subject=f"{image}.png", image_sha256=image, model=model,
                    model_sha256=model_sha256, details={**CALL, "settings": settings})

    named = {"a1": row("A" * 64, tta=False), "a2": row("A" * 64, tta=True),  # other settings: one result
             "a3": row("A" * 64, model_sha256="b" * 64),  # another model's weights: another result
             "b1": row("B" * 64), "s1": row("A" * 64, kind="slide"),  # another image; a slide of the same image
             "n1": row(None), "n2": row(None), "e1": row(""), "e2": row(""),  # no image hash: each its own
             "x1": row("C" * 64, model_sha256="", model="tiny"), "x2": row("C" * 64, model_sha256="", model="other"),
             "y1": row("D" * 64, model_sha256=None), "y2": row("D" * 64, model_sha256=None, tta=True)}  # by name
    ids = dict(zip(named, store.record_many(list(named.values()))))
    name = {i: n for n, i in ids.items()}
    listed = repeats.repeats_of(store, store.events(ids=list(name)), reviews.REVIEWABLE)
    assert {name[i]: [name[o] for o in others] for i, others in listed.items() if others} == {
        "a1": ["a2"], "a2": ["a1"], "y1": ["y2"], "y2": ["y1"]}
    with store.reading("test") as session:
        fold = repeats.folding()
        folded = session.execute(select(AuditEvent.id, fold.newer_repeat, fold.first_seen)
                                 .where(AuditEvent.id.in_(list(name)))).all()
    for i, newer, first in folded:  # the queue's SQL, row by row, against the card's list
        assert (bool(newer), first) == (any(o > i for o in listed[i]), min([i, *listed[i]])), name[i]
    waiting = {name[r["id"]] for r in reviews.queue(store).waiting.rows}
    assert waiting == set(named) - {"a1", "y1"}


def test_sqlite_looks_repeats_up_by_the_image_index(store):
    """By the kind's index SQLite read every diagnosis for each row of the queue (12 s for 10,000 rows)."""
    if store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's query planner")
    other = aliased(AuditEvent)
    ordered = select(AuditEvent.id).where(AuditEvent.kind.in_(reviews.REVIEWABLE)).order_by(repeats.folding().first_seen)
    listed = select(AuditEvent.id, other.id).join(other, repeats.same_result(other, AuditEvent)).where(AuditEvent.id < 3)
    with store.engine.connect() as connection:
        for query in (ordered, listed):
            sql = str(query.compile(store.engine, compile_kwargs={"literal_binds": True}))
            plan = " ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
            assert "audit_1 USING INDEX ix_audit_image_sha256" in plan and "audit_1 USING INDEX ix_audit_kind" not in plan
