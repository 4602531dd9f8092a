"""Sign-in sessions that survive a reload (core.store.sessions), on SQLite and PostgreSQL: the
token carries only an id and an expiry; a tampered, expired, revoked, idle or wrong-key token, a
disabled account or a new password is refused; the role always comes from the database; the
signing key is made once with mode 0600, and no token or key reaches the audit trail."""

import base64
import datetime
import json
import multiprocessing
import stat
import threading
import time

import jwt
import pytest

from core.store import accounts, sessions
from core.store.models import WebSession
from tests.app_helpers import PASSWORD

KEY = b"k" * 40
IDLE = 30  # minutes
NOW = datetime.datetime(2026, 12, 4, 9, 0, tzinfo=datetime.UTC)


def minutes(n: float) -> datetime.datetime:
    return NOW + datetime.timedelta(minutes=n)


@pytest.fixture
def people(store):
    accounts.add_account(store, "pat", PASSWORD, "pathologist")
    accounts.add_account(store, "boss", PASSWORD, "admin")
    return store


def test_the_token_carries_only_an_id_and_an_expiry_and_resumes(people):
    key_of_row, token = sessions.start(people, "pat", KEY, NOW)
    claims = jwt.decode(token, KEY, algorithms=["HS256"], options={"verify_exp": False})
    assert set(claims) == {"jti", "exp"} and claims["exp"] == int(minutes(60 * sessions.MAX_HOURS).timestamp())
    assert key_of_row == sessions.digest(claims["jti"]) != claims["jti"]  # the row holds a digest, not the id
    checked = sessions.resume(people, token, KEY, IDLE, minutes(5))
    assert checked.user == {"name": "pat", "role": "pathologist"} and checked.session == key_of_row
    resumed = people.events(kinds="session_resumed")
    assert [(r["user"], r["details"]["method"]) for r in resumed] == [("pat", "session cookie")]
    assert token not in people.csv().decode() and claims["jti"] not in people.csv().decode()


def test_a_tampered_token_or_another_key_is_refused(people):
    _, token = sessions.start(people, "pat", KEY, NOW)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    longer = base64.urlsafe_b64encode(json.dumps({**claims, "exp": claims["exp"] + 86400}).encode()).rstrip(b"=").decode()
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    unsigned = jwt.encode(claims, None, algorithm="none") if "none" in jwt.algorithms.get_default_algorithms() else token + "x"
    for bad in (f"{header}.{longer}.{signature}", f"{header}.{payload}.{flipped}", unsigned, "", "not a token",
                token + "." + signature, "a" * 5000):
        assert sessions.resume(people, bad, KEY, IDLE, minutes(1)) == sessions.Check(None, "tampered")
    other = b"another key, also 40 characters long!!!"
    assert sessions.read_token(token, other, minutes(1)) == (None, "other key")  # the header names KEY's id
    assert sessions.resume(people, token, other, IDLE, minutes(1)) == sessions.Check(None, "other key")
    unnamed = jwt.encode(claims, KEY, algorithm=sessions.ALGORITHM)  # signed by KEY without a key id
    assert sessions.read_token(unnamed, other, minutes(1)) == (None, "tampered")
    failures = people.events(kinds="sign_in_failed")
    assert len(failures) == 8 and [f["details"]["reason"] for f in failures].count("tampered") == 7
    assert sessions.resume(people, token, KEY, IDLE, minutes(1)).user is not None  # the real one still holds


def test_expired_idle_and_unknown_sessions_are_refused(people):
    _, token = sessions.start(people, "pat", KEY, NOW)
    late = minutes(60 * sessions.MAX_HOURS + 1)
    assert sessions.read_token(token, KEY, late)[1] == "expired"
    assert sessions.resume(people, token, KEY, 10_000, late).reason == "expired"
    # The token's second of expiry, before the row's own (exp is whole seconds): expired all the same.
    _, token = sessions.start(people, "pat", KEY, NOW.replace(microsecond=500_000))
    at_exp = NOW + datetime.timedelta(hours=sessions.MAX_HOURS, microseconds=100_000)
    expired = sessions.resume(people, token, KEY, 10_000, at_exp)
    assert (expired.user, expired.reason, expired.name) == (None, "expired", "pat")
    assert sessions.resume(people, token, KEY, 10_000, NOW).reason == "revoked"  # and revoked from then on
    # A token signed with the right key for a session the database never issued.
    forged = sessions.make_token(KEY, "made-up id", minutes(60))
    assert sessions.resume(people, forged, KEY, IDLE, minutes(1)).reason == "unknown"

    row, token = sessions.start(people, "pat", KEY, NOW)
    assert sessions.check(people, row, IDLE, minutes(29)).user is not None  # active: last_seen moves on
    assert sessions.check(people, row, IDLE, minutes(58)).user is not None  # 29 min after the last use
    idle = sessions.check(people, row, IDLE, minutes(89))
    assert (idle.user, idle.reason, idle.name) == (None, "idle", "pat")
    assert sessions.resume(people, token, KEY, IDLE, minutes(90)).reason == "revoked"  # idle once: revoked for good


def test_the_row_is_written_at_most_every_touch_interval(people):
    row, _ = sessions.start(people, "pat", KEY, NOW)
    sessions.check(people, row, IDLE, NOW + datetime.timedelta(seconds=sessions.TOUCH_SECONDS - 1))
    with people.session() as session:
        assert session.get(WebSession, row).last_seen == NOW
    sessions.check(people, row, IDLE, minutes(1))
    with people.session() as session:
        assert session.get(WebSession, row).last_seen == minutes(1)


def test_sign_out_disable_and_password_change_revoke(people):
    row, token = sessions.start(people, "pat", KEY, NOW)
    assert sessions.revoke(people, row, "signed out", minutes(1)) and not sessions.revoke(people, row, "again")
    assert sessions.resume(people, token, KEY, IDLE, minutes(2)).reason == "revoked"

    tokens = [sessions.start(people, "pat", KEY, NOW)[1] for _ in range(2)]
    _, boss_token = sessions.start(people, "boss", KEY, NOW)
    assert sessions.live_sessions(people, "pat") == 2
    accounts.change_account(people, "pat", "boss", active=False)
    assert [sessions.resume(people, t, KEY, IDLE, minutes(1)).reason for t in tokens] == ["revoked", "revoked"]
    assert sessions.resume(people, boss_token, KEY, IDLE, minutes(1)).user["name"] == "boss"  # others untouched
    accounts.change_account(people, "pat", "boss", active=True)  # enabling again revives no old cookie
    assert sessions.resume(people, tokens[0], KEY, IDLE, minutes(2)).reason == "revoked"

    _, token = sessions.start(people, "pat", KEY, NOW)
    accounts.change_account(people, "pat", "pat", password="a brand new password")
    assert sessions.resume(people, token, KEY, IDLE, minutes(1)).reason == "revoked"
    revoked = people.events(kinds="session_revoked", newest_first=False)
    assert [(r["subject"], r["details"]) for r in revoked] == [
        ("pat", {"reason": "account disabled", "sessions": 2}), ("pat", {"reason": "password changed", "sessions": 1})]


def test_a_disabled_account_is_refused_even_if_a_row_was_missed(people):
    row, _ = sessions.start(people, "pat", KEY, NOW)
    with people.session() as session, session.begin():  # disabled by hand-written SQL, not change_account
        session.get(accounts.User, session.get(WebSession, row).user_id).active = False
    assert sessions.check(people, row, IDLE, minutes(1)).reason == "disabled"


def test_the_role_comes_from_the_database_never_from_the_token(people):
    row, token = sessions.start(people, "pat", KEY, NOW)
    claims = jwt.decode(token, KEY, algorithms=["HS256"], options={"verify_exp": False})
    with_role = jwt.encode({**claims, "role": "admin", "name": "boss"}, KEY, algorithm="HS256")
    assert sessions.resume(people, with_role, KEY, IDLE, minutes(1)).user == {"name": "pat", "role": "pathologist"}
    accounts.change_account(people, "pat", "boss", role="admin")
    assert sessions.check(people, row, IDLE, minutes(2)).user["role"] == "admin"  # the next run sees the change


def test_the_signing_key_is_made_once_private_and_can_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(sessions.KEY_ENV, raising=False)
    first = sessions.signing_key(tmp_path / "data")
    path = tmp_path / "data" / sessions.KEY_FILE
    assert len(first) >= 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # the data folder it made is private too
    assert sessions.signing_key(tmp_path / "data") == first  # kept, not replaced on the next start
    path.chmod(0o644)
    assert sessions.signing_key(tmp_path / "data") == first and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sessions.signing_key(tmp_path / "other") != first
    monkeypatch.setenv(sessions.KEY_ENV, "x" * 40)
    assert sessions.signing_key(tmp_path / "data") == b"x" * 40
    monkeypatch.setenv(sessions.KEY_ENV, "short")
    with pytest.raises(sessions.SessionKeyError, match="at least 32") as refused:
        sessions.signing_key(tmp_path / "data")
    assert "short" not in str(refused.value)  # the message never holds the key


def _first_start(folder, together, out):
    together.wait()
    try:
        out.put(sessions.signing_key(folder).decode())
    except sessions.SessionKeyError as problem:
        out.put(f"error: {problem}")


def test_two_processes_making_the_key_together_get_the_same_whole_key(tmp_path, monkeypatch):
    """Two servers (or a server and the CLI) starting at once on a new data folder: the loser read
    the winner's file between its creation and its write, found it empty and said "damaged: remove
    it", which would sign everyone out. The key file now appears whole (written aside, then linked)."""
    monkeypatch.delenv(sessions.KEY_ENV, raising=False)
    fork = multiprocessing.get_context("fork")
    for trial in range(60):
        together, out = fork.Barrier(2), fork.Queue()
        workers = [fork.Process(target=_first_start, args=(tmp_path / str(trial), together, out)) for _ in range(2)]
        for worker in workers:
            worker.start()
        keys = {out.get(timeout=30) for _ in workers}
        for worker in workers:
            worker.join()
        assert len(keys) == 1 and not keys.pop().startswith("error"), (trial, keys)
        assert [p.name for p in (tmp_path / str(trial)).iterdir()] == [sessions.KEY_FILE]  # no temporary left


def test_a_key_file_still_being_written_is_waited_for_and_a_short_one_refused(tmp_path, monkeypatch):
    """A key file shorter than a key (another process, or an older version, is writing it) is read
    again for a moment before it is called damaged."""
    monkeypatch.delenv(sessions.KEY_ENV, raising=False)
    path = tmp_path / sessions.KEY_FILE
    path.touch(mode=0o600)
    writer = threading.Timer(0.2, path.write_text, args=("k" * 64,))
    writer.start()
    assert sessions.signing_key(tmp_path) == b"k" * 64
    writer.join()
    path.write_text("short")
    monkeypatch.setattr(sessions, "KEY_WAIT_SECONDS", 0.3)
    started = time.monotonic()
    with pytest.raises(sessions.SessionKeyError, match="damaged"):
        sessions.signing_key(tmp_path)
    assert 0.3 <= time.monotonic() - started < 3


def test_without_hard_links_the_key_file_is_made_in_place(tmp_path, monkeypatch):
    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.delenv(sessions.KEY_ENV, raising=False)
    monkeypatch.setattr(sessions.os, "link", no_links)
    key = sessions.signing_key(tmp_path)
    assert len(key) >= 64 and sessions.signing_key(tmp_path) == key
    assert [p.name for p in tmp_path.iterdir()] == [sessions.KEY_FILE]


def test_a_database_from_before_sessions_upgrades_and_keeps_its_accounts(store_url):
    from alembic import command

    from core.store.db import _alembic_config, current_revision, make_engine, revisions, upgrade

    engine = make_engine(store_url)
    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), "0001")  # the schema of the previous release
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO users (name, role, active, created_at, failed_sign_ins) "
                                   "VALUES ('old', 'admin', true, '2026-12-01 00:00:00+00:00', 0)")
    assert current_revision(engine) == "0001"
    assert upgrade(engine) == revisions()[1]  # the head
    from core.store.audit import Store

    store = Store(engine)
    row, token = sessions.start(store, "old", KEY, NOW)
    assert sessions.resume(store, token, KEY, IDLE, minutes(1)).user == {"name": "old", "role": "admin"}
    engine.dispose()


def test_touch_marks_a_live_session_used_now_and_never_revives_a_revoked_one(people):
    row, _ = sessions.start(people, "pat", KEY, NOW)
    assert sessions.touch(people, row, NOW + datetime.timedelta(seconds=2))  # within TOUCH_SECONDS: written anyway
    with people.session() as session:
        assert session.get(WebSession, row).last_seen == NOW + datetime.timedelta(seconds=2)
    sessions.revoke(people, row, "signed out", minutes(1))
    assert not sessions.touch(people, row, minutes(2))
    assert sessions.check(people, row, IDLE, minutes(3)).reason == "revoked"
