"""The audit trail is tamper-evident (QA review #7), on SQLite and PostgreSQL: every row is linked to
the one before it by a hash chain, `db verify` names the first broken or unhashed row and the
missing triggers, opening the store warns, `db upgrade` recreates the triggers, and a review must
name an account."""

import json
import logging
import threading

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import text

from core.cli import main
from core.errors import UserInputError
from core.store import accounts, chain, db
from core.store.audit import Store
from core.store.models import UTCDateTime


def drop_triggers(store):
    """What whoever can write the database file (or owns the PostgreSQL table) can do."""
    with store.engine.begin() as connection:
        if store.engine.dialect.name == "sqlite":
            for name in chain.SQLITE_TRIGGERS:
                connection.exec_driver_sql(f"DROP TRIGGER {name}")
        else:
            connection.exec_driver_sql("ALTER TABLE audit DISABLE TRIGGER audit_no_change")
            connection.exec_driver_sql("DROP TRIGGER audit_no_truncate ON audit")


def check(store, expect=None):
    with store.engine.connect() as connection:
        return chain.verify(connection, expect)


def test_each_row_hashes_its_content_and_the_previous_rows_hash(store):
    first = store.record("diagnosis", "ann", "a.png", image_sha256="a" * 64, details={"call": "benign", "p": (0.25,)})
    more = store.record_many([dict(kind="sign_in", user="ann"), dict(kind="sign_out", user="ann", details={1: "x"})])
    rows = store.events(newest_first=False)
    with store.engine.connect() as connection:
        stored = dict(connection.execute(text("SELECT id, chain_sha256 FROM audit")).all())
    assert [r["id"] for r in rows] == [first, *more] == [1, 2, 3]
    assert stored[1] == chain.link(None, rows[0]) and stored[2] == chain.link(stored[1], rows[1])
    assert stored[3] == chain.link(stored[2], rows[2])
    verdict = check(store)
    assert verdict.ok and verdict.rows == 3 and (verdict.head_id, verdict.head_sha256) == (3, stored[3])
    assert store.integrity is not None and store.integrity.ok  # Store.open checked the (empty) trail


def test_writers_at_the_same_moment_still_make_one_valid_chain(store, store_url):
    """Several threads and a second engine (another process's) append together: each row links to
    the one really before it, as the write lock makes them take turns."""
    other = Store.open(store_url)
    errors = []

    def write(target, worker):
        try:
            for n in range(10):
                target.record_many([dict(kind="diagnosis", user=f"u{worker}", subject=f"{worker}-{n}-{k}.png")
                                    for k in range(1 + n % 3)])
        except Exception as problem:  # noqa: BLE001 - collected and asserted below
            errors.append(problem)

    threads = [threading.Thread(target=write, args=(store if w % 2 else other, w)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.close()
    assert errors == []
    verdict = check(store)
    assert verdict.ok and verdict.rows == 6 * 19 and verdict.head_id == 114 and verdict.gaps == []


def test_rows_changed_or_removed_around_the_triggers_are_found(store, store_url, caplog):
    ids = [store.record("diagnosis", "ann", f"{n}.png", details={"call": "malignant"}) for n in range(6)]
    drop_triggers(store)
    with store.engine.begin() as connection:  # s1: the diagnosis rewritten, a later row removed
        connection.execute(text("UPDATE audit SET \"user\" = 'mallory' WHERE id = :id"), {"id": ids[1]})
        connection.execute(text("DELETE FROM audit WHERE id = :id"), {"id": ids[3]})
    verdict = check(store)
    assert verdict.broken == [ids[1], ids[4]] and verdict.gaps == [(ids[2], ids[4])]
    assert set(verdict.missing_triggers) >= {"audit_no_change" if "postgresql" in store_url else "audit_no_update"}
    said = " ".join(verdict.problems())
    assert f"broken at id {ids[1]} (2 row(s)" in said and "append-only triggers are missing" in said
    with caplog.at_level(logging.WARNING, logger="core.store.audit"):
        reopened = Store.open(store_url)
    assert f"broken at id {ids[1]}" in caplog.text and "triggers are missing" in caplog.text
    assert reopened.integrity.broken == [ids[1], ids[4]]
    reopened.close()


def test_a_row_written_around_the_store_has_no_hash(store):
    """s15: a plain INSERT (the triggers allow it) forging a backdated review."""
    diagnosis = store.record("diagnosis", "ann", "a.png", details={"call": "malignant"})
    with store.engine.begin() as connection:
        connection.execute(text("INSERT INTO audit (id, at, kind, \"user\", refers_to, details) VALUES "
                                "(:id, :at, 'review', 'dr_chief', :ref, '{}')"),
                           {"id": diagnosis + 1, "at": "2020-01-01 09:00:00", "ref": diagnosis})
    store.record("sign_in", "ann")  # later rows chain on as before
    verdict = check(store)
    assert verdict.missing == [diagnosis + 1] and verdict.broken == [] and not verdict.ok
    assert f"no chain hash, the first id {diagnosis + 1}" in verdict.problems()[0]


def test_the_newest_rows_removed_are_found_only_against_a_noted_head(store):
    """What the chain cannot show (a cut-back tail is still a valid chain), a head noted down can."""
    for n in range(4):
        store.record("diagnosis", "ann", f"{n}.png")
    noted = check(store)
    drop_triggers(store)
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit WHERE id >= 3"))
    assert check(store).broken == [] and check(store).head_id == 2
    cut = check(store, expect=(noted.head_id, noted.head_sha256))
    assert cut.unlike_noted == 4 and not cut.ok and "audit row 4 is gone" in " ".join(cut.problems())
    assert check(store, expect=(2, noted.head_sha256)).unlike_noted == 2  # the row is there, with another hash


def test_db_verify_status_and_upgrade_on_a_tampered_trail(store, store_url, monkeypatch, capsys):
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", store_url)
    first = store.record("diagnosis", "ann", "a.png", details={"call": "malignant"})
    store.record("sign_in", "ann")
    assert main(["db", "verify"]) == 0
    said = capsys.readouterr().out
    head = check(store)
    assert "2 audit rows; hash chain intact, append-only triggers in place" in said
    assert f"head: 2:{head.head_sha256}" in said
    assert main(["db", "verify", "--expect", f"2:{head.head_sha256}"]) == 0
    assert main(["db", "verify", "--expect", "2:abc"]) == 2  # not a head as verify prints it
    drop_triggers(store)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE audit SET \"user\" = 'mallory' WHERE id = :id"), {"id": first})
    capsys.readouterr()
    assert main(["db", "verify"]) == 1
    said = capsys.readouterr().out
    assert f"BROKEN: the audit trail's hash chain is broken at id {first}" in said and "triggers are missing" in said
    assert main(["db", "status"]) == 0 and f"broken at id {first}" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0 and "recreated the audit trail's append-only triggers" in capsys.readouterr().out
    with store.engine.connect() as connection:
        assert chain.missing_triggers(connection) == []
    with store.engine.connect() as connection, pytest.raises(sa.exc.DBAPIError, match="append-only"):
        connection.execute(text("DELETE FROM audit"))
    assert main(["db", "upgrade"]) == 0 and "recreated" not in capsys.readouterr().out
    assert check(store).broken == [first]  # the triggers are back; the edit stays on record


def test_an_altered_trigger_counts_as_missing(store):
    """A trigger replaced by one of the same name that lets changes through is no protection."""
    with store.engine.begin() as connection:
        if store.engine.dialect.name == "sqlite":
            connection.exec_driver_sql("DROP TRIGGER audit_no_update")
            connection.exec_driver_sql("CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT 1; END")
            expected = ["audit_no_update"]
        else:
            connection.exec_driver_sql("CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger "
                                       "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$")
            expected = ["audit_append_only()"]
        assert chain.missing_triggers(connection) == expected
    assert db.restore_triggers(store.engine) == expected
    with store.engine.connect() as connection:
        assert chain.missing_triggers(connection) == []


def test_the_migration_chains_the_rows_already_there(store_url):
    """A database at 0003 with rows: upgrading hashes them in id order, triggers in place after."""
    engine = db.make_engine(store_url)
    with db._migrating(engine) as connection:
        command.upgrade(db._alembic_config(connection), "0003")
    old = sa.table("audit", sa.column("at", UTCDateTime), sa.column("kind", sa.String), sa.column("user", sa.String),
                   sa.column("subject", sa.Text), sa.column("details", sa.JSON))
    with engine.begin() as connection:
        for n in range(3):
            connection.execute(sa.insert(old).values(at=db_time(n), kind="diagnosis", user="ann", subject=f"{n}.png",
                                                     details={"call": "benign", "n": n}))
    engine.dispose()
    store = Store.open(store_url)
    verdict = check(store)
    assert verdict.ok and verdict.rows == 3 and verdict.head_id == 3
    store.record("sign_in", "ann")
    assert check(store).ok and check(store).rows == 4
    store.close()


def db_time(n):
    import datetime

    return datetime.datetime(2026, 1, 1, 9, n, tzinfo=datetime.UTC)


def test_a_review_must_name_an_account(store, monkeypatch):
    diagnosis = store.record("diagnosis", "ann", "a.png", details={"call": "malignant"})
    with pytest.raises(UserInputError, match="a review must name an account; dr_chief is not one"):
        store.record("review", "dr_chief", "a.png", refers_to=diagnosis, details={"agree": True})
    assert store.events(kinds="review") == [] and check(store).ok  # nothing written, the chain untouched
    accounts.add_account(store, "dr_chief", None, "pathologist")
    store.record("review", "dr_chief", "a.png", refers_to=diagnosis, details={"agree": True})
    monkeypatch.delenv("BREAKHIS_SINGLE_USER", raising=False)
    with pytest.raises(UserInputError, match="local is not one"):
        store.record("review", "local", "a.png", refers_to=diagnosis)
    monkeypatch.setenv("BREAKHIS_SINGLE_USER", "1")  # the workstation's one user, while that mode is on
    store.record("review", "local", "a.png", refers_to=diagnosis)
    assert [r["user"] for r in store.events(kinds="review", newest_first=False)] == ["dr_chief", "local"]
    assert json.dumps(check(store).problems()) == "[]"


def test_the_check_at_start_reads_only_the_newest_rows_and_says_so(store):
    ids = [store.record("sign_in", "ann") for _ in range(6)]
    drop_triggers(store)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE audit SET \"user\" = 'mallory' WHERE id IN (:a, :b)"), {"a": ids[1], "b": ids[4]})
    quick = store.check(newest=3)
    assert quick.broken == [ids[4]] and quick.scope() == "the newest 3 of 6 rows (`python -m core db verify`: all)"
    assert store.check().broken == [ids[1], ids[4]] and store.integrity.scope() == "all 6 rows"


def forge(store, audit_id, kind="sign_in", user="mallory", refers_to=None):
    """A row written around the app (hand-written SQL, which the triggers allow): no chain hash."""
    with store.engine.begin() as connection:
        connection.execute(text("INSERT INTO audit (id, at, kind, \"user\", refers_to, details) VALUES "
                                "(:id, :at, :kind, :user, :ref, '{}')"),
                           {"id": audit_id, "at": "2020-01-01 09:00:00", "kind": kind, "user": user, "ref": refers_to})


def test_a_later_open_in_the_process_reads_only_the_rows_written_since(store, store_url, caplog):
    """Store.open re-hashed the newest 10,000 rows at every open (0.4-1 s each on a 10k trail); a later open of
    the same database in one process now carries on from the last check, and still finds a row written around
    the app between two opens, and says it again at each later open."""
    ids = store.record_many([dict(kind="sign_in", user="ann") for _ in range(40)])
    first = Store.open(store_url)  # the fixture's open saw an empty trail: all 40 are new to this process
    assert first.integrity.ok and first.integrity.rows == 40
    again = Store.open(store_url)
    assert again.integrity.ok and (again.integrity.rows, again.integrity.rows_before) == (0, 40)
    assert again.integrity.head_id == ids[-1] and again.integrity.scope().startswith("the newest 0 of 40 rows")
    forge(store, ids[-1] + 1)
    store.record("sign_out", "ann")
    with caplog.at_level(logging.WARNING, logger="core.store.audit"):
        third = Store.open(store_url)
    assert third.integrity.rows == 2 and third.integrity.missing == [ids[-1] + 1] and not third.integrity.ok
    assert f"no chain hash, the first id {ids[-1] + 1}" in caplog.text
    fourth = Store.open(store_url)
    assert fourth.integrity.rows == 0 and fourth.integrity.missing == [ids[-1] + 1]  # carried, not forgotten
    for opened in (first, again, third, fourth):
        opened.close()


def test_an_old_row_changed_between_opens_is_found_by_the_full_checks(store, store_url, monkeypatch, capsys):
    """What a later open no longer re-reads (rows its process checked before) `db verify` and the Audit log
    page's check still read; once one has found the edit, every later open says it too."""
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", store_url)
    ids = [store.record("diagnosis", "ann", f"{n}.png", details={"call": "benign"}) for n in range(5)]
    Store.open(store_url).close()  # this process has checked all five
    drop_triggers(store)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE audit SET \"user\" = 'mallory' WHERE id = :id"), {"id": ids[1]})
    db.restore_triggers(store.engine)  # the triggers put back: only the chain shows the edit
    quick = Store.open(store_url)
    if store.engine.dialect.name == "sqlite":  # the triggers dropped and made again changed the schema cookie
        assert quick.integrity.rows == 5 and quick.integrity.broken == [ids[1]]  # so every row was re-hashed
    else:
        assert quick.integrity.rows == 0 and quick.integrity.ok  # the trade: old rows are the full checks' job
    assert main(["db", "verify"]) == 1 and f"broken at id {ids[1]}" in capsys.readouterr().out
    assert quick.check().broken == [ids[1]]  # the Audit log page's button: all rows
    later = Store.open(store_url)
    assert later.integrity.broken == [ids[1]] and later.integrity.rows == 0  # nothing changed since: carried on
    quick.close()
    later.close()


def test_the_newest_rows_removed_between_opens_are_found(store, store_url):
    """A later open checks that the row its process last checked is still there with its hash: a trail cut back
    meanwhile (which the chain alone cannot show) is reported, and the newest rows are checked instead."""
    for n in range(4):
        store.record("sign_in", "ann")
    Store.open(store_url).close()
    drop_triggers(store)
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit WHERE id >= 3"))
    db.restore_triggers(store.engine)
    cut = Store.open(store_url)
    assert cut.integrity.unlike_noted == 4 and cut.integrity.rows == 2 and cut.integrity.broken == []
    assert "audit row 4 is gone" in " ".join(cut.integrity.problems())
    cut.close()


def test_one_missing_row_is_named_in_the_singular():
    """QA review #11: one row deleted in the middle was reported as "(ids 12-12 are missing)"."""
    one = chain.Verdict(broken=[13], gaps=[(11, 13)]).problems()[0]
    assert one.endswith("(id 12 is missing)") and "12-12" not in one
    assert chain.Verdict(broken=[15], gaps=[(11, 15)]).problems()[0].endswith("(ids 12-14 are missing)")
