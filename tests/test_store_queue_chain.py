"""The review queue takes as genuine only the rows the audit trail's hash chain vouches for: a row written around the
app (no chain hash) or one whose hash does not link is left out, and the queue says how many, on SQLite and
PostgreSQL."""

import json

import pytest
from sqlalchemy import text

from core.store import accounts, reviews

CALL = {"call": "benign", "subtype": "adenosis", "confidence": 0.9, "refer": False}


def forge(store, kind, details, chain_sha256=None, **columns):
    """A row inserted by hand (the triggers allow an INSERT): no chain hash, or a made-up one."""
    with store.engine.begin() as connection:
        audit_id = connection.execute(text("SELECT MAX(id) FROM audit")).scalar() + 1
        names = ", ".join(f'"{name}"' for name in columns)
        marks = ", ".join(f":{name}" for name in columns)
        connection.execute(text(f"INSERT INTO audit (id, at, kind, chain_sha256, details, {names}) VALUES (:id, "
                                f":at, :kind, :chain, '{json.dumps(details)}', {marks})"),
                           {"id": audit_id, "at": "2020-01-01 09:00:00", "kind": kind, "chain": chain_sha256,
                            **columns})
    return audit_id


def test_rows_that_fail_the_audit_chain_are_left_out_of_the_queue_and_counted(store):
    """A review inserted by raw SQL settled its result (it left the worklist, shown as reviewed by a pathologist),
    until someone ran `db verify`; a forged newer repeat took a result's place; a forged review made two
    reviewers discordant."""
    for name in ("bob", "cy"):
        accounts.add_account(store, name, None, "pathologist")
    result = dict(kind="diagnosis", user="ann", model="tiny", model_sha256="a" * 64, details=CALL)
    first, second, third = store.record_many([{**result, "subject": f"{n}.png", "image_sha256": n * 64}
                                              for n in "ABC"])
    forged_review = forge(store, "review", {"agree": True, "label": "benign", "subtype": "adenosis"},
                          user="dr_chief", refers_to=first, subject="A.png", image_sha256="A" * 64)
    forge(store, "diagnosis", CALL, user="ann", subject="D.png", image_sha256="D" * 64)  # a result nobody made
    forge(store, "diagnosis", CALL, user="ann", subject="B.png", image_sha256="B" * 64, model="tiny",
          model_sha256="a" * 64)  # a newer repeat of the second, which would take its place
    genuine = reviews.review(store, "bob", third)  # agrees: benign
    forge(store, "review", {"agree": False, "label": "malignant", "subtype": None}, chain_sha256="f" * 64,
          user="cy", refers_to=third, subject="C.png", image_sha256="C" * 64)  # a hash that does not link
    queued = reviews.queue(store, include_reviewed=True)
    assert [r["id"] for r in queued.waiting.rows] == [first, second]  # still waiting for a genuine review
    assert queued.waiting.rows[0]["review"] is None and queued.waiting.rows[1]["repeats"] == []
    assert [r["id"] for r in queued.reviewed.rows] == [third] and queued.reviewed.rows[0]["reviews"][0]["id"] == genuine
    assert len(queued.reviewed.rows[0]["reviews"]) == 1 and not queued.reviewed.rows[0]["discordant"]
    assert queued.discordant == 0 and queued.left_out == 4
    said = reviews.left_out_notice(queued.left_out)
    assert said.startswith("4 audit rows of results or reviews fail the audit trail's hash chain") and (
        "python -m core db verify" in said)
    assert forged_review not in {r["id"] for r in reviews.queue(store, search="A.png").waiting.rows[0]["reviews"]}
    assert reviews.queue(store).left_out == 4  # the count stays until the rows are dealt with


def test_a_queue_with_nothing_forged_leaves_nothing_out(store):
    store.record("diagnosis", "ann", "a.png", image_sha256="a" * 64, details=CALL)
    queued = reviews.queue(store)
    assert queued.left_out == 0 and queued.waiting.total == 1


def test_a_case_history_leaves_out_the_rows_the_queue_leaves_out(store):
    """QA review #1: the Review page's Case history listed a forged review (no chain hash), an edited one (its hash
    no longer links) and a forged result as genuine, while the queue above said it had left them out."""
    accounts.add_account(store, "bob", None, "pathologist")
    case = {**CALL, "case": "14-2523"}
    result = store.record("diagnosis", "ann", "SOB_M_DC-14-2523-40-010.png", image_sha256="A" * 64, details=case)
    genuine = reviews.review(store, "bob", result, subtype="ductal_carcinoma")
    forged = forge(store, "review", {"agree": False, "label": "benign", "subtype": "fibroadenoma", "comment": "FORGED"},
                   user="bob", refers_to=result, subject="SOB_M_DC-14-2523-40-010.png", image_sha256="A" * 64)
    edited = forge(store, "review", {"agree": False, "label": "benign", "subtype": "fibroadenoma"},
                   chain_sha256="f" * 64, user="bob", refers_to=result, subject="SOB_M_DC-14-2523-40-010.png",
                   image_sha256="A" * 64)
    made_up = forge(store, "diagnosis", case, user="ann", subject="SOB_B_F-14-2523-40-003.png", image_sha256="B" * 64)
    assert {forged, edited, made_up} <= {r["id"] for r in store.events()}  # there, but not vouched for
    assert [r["id"] for r in reviews.history(store, case="14-2523")] == [result, genuine]
    assert [r["id"] for r in reviews.history(store, image_sha256="A" * 64)] == [result, genuine]
    assert reviews.history(store, image_sha256="B" * 64) == []
    assert reviews.queue(store).left_out == 3
    assert "left out of this queue and of case histories" in reviews.left_out_notice(3)


def test_a_review_edited_while_the_server_runs_is_left_out_once_a_trigger_is_gone(store):
    """The queue carried on from the head its process had last checked: a review edited by hand after that (a
    trigger dropped, then an UPDATE) stood as its reviewer's opinion, nothing left out, until a restart. With a
    trigger missing, rows before that head may have been edited since: the queue's check reads them all again."""
    for name in ("bob", "cy"):
        accounts.add_account(store, name, None, "pathologist")
    result = store.record("diagnosis", "ann", "A.png", image_sha256="A" * 64, details=CALL)
    edited = reviews.review(store, "bob", result)
    queued = reviews.queue(store, include_reviewed=True)  # this process has now checked every row
    assert queued.left_out == 0 and [r["id"] for r in queued.reviewed.rows] == [result]
    with store.engine.begin() as connection:
        if store.engine.dialect.name == "sqlite":
            connection.exec_driver_sql("DROP TRIGGER audit_no_update")
        else:
            connection.exec_driver_sql("ALTER TABLE audit DISABLE TRIGGER audit_no_change")
        connection.execute(text('UPDATE audit SET "user" = \'cy\' WHERE id = :id'), {"id": edited})
    queued = reviews.queue(store, include_reviewed=True)
    assert queued.left_out == 1 and queued.reviewed.rows == [] and [r["id"] for r in queued.waiting.rows] == [result]
    assert queued.waiting.rows[0]["review"] is None
    assert reviews.queue(store).left_out == 1  # and at every later run while the trigger is missing


def test_a_review_edited_between_two_checks_behind_a_trigger_made_again_is_left_out(store):
    """A trigger dropped, a review edited and the trigger made again, all between two views of the queue: the
    triggers were back, so the queue carried on from its last head and trusted the edited row (SQLite: its
    schema cookie changes with every DROP and CREATE, so the check re-hashes every row)."""
    if store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's schema_version; on PostgreSQL a disabled trigger is seen while it is disabled")
    accounts.add_account(store, "bob", None, "pathologist")
    result = store.record("diagnosis", "ann", "A.png", image_sha256="A" * 64, details=CALL)
    edited = reviews.review(store, "bob", result)
    assert reviews.queue(store, include_reviewed=True).left_out == 0  # every row checked
    with store.engine.begin() as connection:
        [made] = connection.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'audit_no_update'").one()
        connection.exec_driver_sql("DROP TRIGGER audit_no_update")
        connection.execute(text('UPDATE audit SET "user" = \'ann\' WHERE id = :id'), {"id": edited})
        connection.exec_driver_sql(made)
    queued = reviews.queue(store, include_reviewed=True)
    assert queued.left_out == 1 and [r["id"] for r in queued.waiting.rows] == [result]
