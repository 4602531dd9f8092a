"""A busy database (another process, a backup or an sqlite3 shell, holds SQLite's write lock): the
accounts and the audit trail raise a StoreError that says so, the sign-in page shows it instead of a
traceback, and once the lock is released everything works and nothing was half-written."""


import pytest
from streamlit.testing.v1 import AppTest

from core.paths import data_dir
from core.store import accounts, db
from core.store.audit import Store
from core.store.db import StoreError
from core.testing.apptest import sign_in
from tests.app_helpers import APP, APP_TIMEOUT, PASSWORD, app_like_the_server, make_model_folder, write_locked

BUSY = "the database is busy or unavailable; try again"


@pytest.fixture
def short_wait(monkeypatch):
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)  # the test waits 0.2 s per refusal, not 10 s


def test_accounts_and_the_audit_trail_say_the_database_is_busy(tmp_path, short_wait):
    path = tmp_path / "breakhis.db"
    store = Store.open(f"sqlite:///{path}")
    accounts.add_account(store, "ann", PASSWORD, "pathologist")
    with write_locked(path):
        for attempt in (lambda: accounts.sign_in(store, "ann", PASSWORD),
                        lambda: accounts.sign_in(store, "ann", "a wrong password"),
                        lambda: accounts.add_account(store, "bob", PASSWORD, "admin"),
                        lambda: accounts.change_account(store, "ann", accounts.SYSTEM, role="admin"),
                        lambda: store.record("sign_in", "ann")):
            with pytest.raises(StoreError, match=BUSY):
                attempt()
    assert accounts.sign_in(store, "ann", PASSWORD) == {"name": "ann", "role": "pathologist"}
    assert [a["name"] for a in accounts.list_accounts(store)] == ["ann"]
    store.close()


@pytest.fixture
def signing_app(tmp_path, monkeypatch, short_wait) -> Store:
    """The app with sign-in on (a demo model, its own database) and the store with the account 'ann'."""
    default = make_model_folder(tmp_path / "models" / "default", demo=True)
    app_like_the_server(monkeypatch, tmp_path / "models", default, tmp_path / "runs")
    monkeypatch.delenv("BREAKHIS_SINGLE_USER")
    monkeypatch.delenv("BREAKHIS_KEEP_IMAGES", raising=False)
    store = Store.open()
    accounts.add_account(store, "ann", PASSWORD, "pathologist")
    return store


def test_the_sign_in_page_says_the_database_is_busy(signing_app):

    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    with write_locked(data_dir() / db.SQLITE_FILE):
        app = sign_in(app, "ann", PASSWORD)
    assert not app.exception
    assert [t.value for t in app.title] == ["Sign in"] and BUSY in app.error[0].value
    assert app.text_input(key="sign_in_name").value == "ann"  # the form keeps what was typed
    app = app.button[0].click().run()  # the visitor presses the button again
    assert [t.value for t in app.title] == ["Diagnose"]


def test_a_signed_in_page_says_the_database_is_busy_and_keeps_the_session(signing_app, monkeypatch):
    """The session row is re-read on later runs (and written at sign-in): a locked database stopped
    every page with a traceback. Now the page says so, the session is neither honoured nor ended, and
    once the lock is released the same user carries on."""
    from core.app import signin
    from core.store import sessions

    store = signing_app
    app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), "ann", PASSWORD)
    assert [t.value for t in app.title] == ["Diagnose"]
    with write_locked(data_dir() / db.SQLITE_FILE):
        with pytest.raises(StoreError, match=BUSY):
            sessions.start(store, "ann", b"k" * 32)
        app.session_state[signin.CHECKED_KEY] = float("-inf")  # this run re-reads the session row ...
        monkeypatch.setattr(sessions, "TOUCH_SECONDS", 0)  # ... and notes its use: a write (WAL lets reads through)
        app = app.run()
    assert not app.exception, app.exception
    [said] = [e.value for e in app.error if BUSY in e.value]
    assert "Nothing was lost" in said and not app.title  # the page stopped before drawing anything
    app = app.run()
    assert not app.exception and [t.value for t in app.title] == ["Diagnose"]
    assert sessions.live_sessions(store, "ann") == 1 and not store.events(kinds="sign_out")
