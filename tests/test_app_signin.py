"""Sign-in, roles and the audit trail through AppTest (SQLite): signed out only the sign-in page
renders; a wrong password is refused and the lock engages; a pathologist cannot open Retrain or the
audit log, even by the page's path; a diagnosis is recorded and carries its audit id; no password
or hash is ever shown, and no image is written unless the deployment enabled it; an open session
is signed out when its account is disabled or it idles (the browser's reload: test_browser_signin)."""

import json
import os
import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest

from core.store import accounts
from core.store.audit import Store
from core.testing.apptest import sign_in
from tests.app_helpers import APP, APP_TIMEOUT, PASSWORD, REPO, app_like_the_server, make_model_folder, texts


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    root = tmp_path_factory.mktemp("signin")
    default = make_model_folder(root / "models" / "default", demo=True)
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, root / "models", default, root / "runs")
        patch.delenv("BREAKHIS_SINGLE_USER")
        patch.delenv("BREAKHIS_KEEP_IMAGES", raising=False)
        yield root


def everything_shown(app: AppTest) -> str:
    return texts([e for kind in ("markdown", "caption", "error", "warning", "info", "success", "title")
                  for e in getattr(app, kind)])


def test_first_start_then_sign_in_roles_and_audit(environment):
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    assert "First start" in everything_shown(app) and "python -m core users add" in everything_shown(app)
    assert not app.file_uploader  # nothing of the Diagnose page

    store = Store.open()
    accounts.add_account(store, "pat", PASSWORD, "pathologist")
    accounts.add_account(store, "boss", PASSWORD, "admin")

    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    assert [t.value for t in app.title] == ["Sign in"] and not app.exception
    app = sign_in(app, "pat", "wrong password!")
    assert "Wrong name or password" in everything_shown(app) and [t.value for t in app.title] == ["Sign in"]
    for _ in range(accounts.MAX_FAILURES - 1):
        app = sign_in(app, "pat", "wrong password!")
    assert "locked" in everything_shown(app)
    app = sign_in(app, "pat", PASSWORD)  # the right password during the lock: still refused
    assert "locked" in everything_shown(app) and [t.value for t in app.title] == ["Sign in"]
    accounts.change_account(store, "pat", "boss", password=PASSWORD)  # an admin lifts the lock

    app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), "pat", PASSWORD)
    assert [t.value for t in app.title] == ["Diagnose"] and "Signed in as **pat** (pathologist)" in everything_shown(app)
    for page in ("pages/retrain.py", "pages/audit.py", "pages/compare.py"):  # not registered for this role:
        with pytest.raises(ValueError, match="Could not find a navigation page"):  # no URL reaches them
            app.switch_page(page)
    app.switch_page("pages/diagnose.py").run()
    sample = app.multiselect(key="samples").options[0]
    app.multiselect(key="samples").select(sample).run()
    assert not app.exception
    diagnosis = store.events(kinds="diagnosis")
    assert len(diagnosis) == 1 and diagnosis[0]["user"] == "pat" and sample.endswith(diagnosis[0]["subject"])
    assert f"Review (audit #{diagnosis[0]['id']})" in [e.label for e in app.expander]
    app.run()  # a rerun with the same settings records nothing new
    assert len(store.events(kinds="diagnosis")) == 1
    assert not (environment / "data" / "images").exists()  # no image on disk unless enabled

    app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), "boss", PASSWORD)
    app.switch_page("pages/audit.py").run()
    assert "Audit log" in [t.value for t in app.title] and not app.exception
    shown = everything_shown(app) + "".join(d.value.to_csv() for d in app.dataframe)
    assert "sign_in_failed" in shown and PASSWORD not in shown and "argon2" not in shown
    kinds = [e["kind"] for e in store.events()]
    assert kinds.count("sign_in") == 2 and kinds.count("sign_in_failed") == accounts.MAX_FAILURES + 1
    store.close()


def test_a_damaged_database_gives_a_clear_message_and_is_not_overwritten(environment, tmp_path, monkeypatch):
    damaged = tmp_path / "data" / "breakhis.db"
    damaged.parent.mkdir()
    damaged.write_bytes(b"garbage, not SQLite" * 50)
    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(damaged.parent))
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    assert not app.exception
    assert any("database cannot be used" in e.value and "not an SQLite database" in e.value for e in app.error)
    assert not app.file_uploader and damaged.read_bytes() == b"garbage, not SQLite" * 50


def test_a_missing_database_of_an_earlier_deployment_is_no_first_start(environment, tmp_path, monkeypatch):
    """The database gone from a data folder that kept its session key and images: the page said "First start"
    and made a new empty database beside them."""
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "session.key").write_text("k" * 64)
    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(folder))
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    assert not app.exception and "First start" not in everything_shown(app)
    assert any("database cannot be used" in e.value and f"{folder / 'breakhis.db'} is missing" in e.value
               and "db upgrade" in e.value for e in app.error)
    assert sorted(p.name for p in folder.iterdir()) == ["images", "session.key"]


def test_a_database_file_moved_away_while_the_app_runs_stops_the_page_and_keeps_what_was_typed(environment, tmp_path,
                                                                                              monkeypatch):
    """The server's cached engine kept writing into the file it had opened: deleted (every later row lost at the
    next start) or moved away, with no message. Each page run now checks that the path still names that file;
    the page says the database cannot be used, writes nothing, and the form keeps what was typed."""
    import sqlite3

    folder = tmp_path / "data"
    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(folder))
    store = Store.open()
    accounts.add_account(store, "pat", PASSWORD, "pathologist")
    store.close()
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()  # the server opens the database
    away = tmp_path / "away"
    away.mkdir()
    moved = [name for name in os.listdir(folder) if name.startswith("breakhis.db")]
    for name in moved:
        os.rename(folder / name, away / name)
    app = sign_in(app, "pat", PASSWORD)
    assert not app.exception and [t.value for t in app.title] == ["Sign in"]
    assert any("database cannot be used" in e.value and "was deleted or moved away while the app was running"
               in e.value for e in app.error)
    assert app.session_state["sign_in_name"] == "pat" and app.session_state["sign_in_password"] == PASSWORD
    with sqlite3.connect(away / "breakhis.db") as moved_file:
        assert moved_file.execute("SELECT COUNT(*) FROM audit WHERE kind = 'sign_in'").fetchone() == (0,)
    assert not any(name.startswith("breakhis.db") for name in os.listdir(folder))
    for name in moved:  # put back: the same file, so the page carries on with what was typed
        os.rename(away / name, folder / name)
    app = app.run().button[0].click().run()
    assert [t.value for t in app.title] == ["Diagnose"] and not any("database" in e.value for e in app.error)
    with sqlite3.connect(folder / "breakhis.db") as put_back:
        assert put_back.execute("SELECT COUNT(*) FROM audit WHERE kind = 'sign_in'").fetchone() == (1,)


def test_an_open_session_is_signed_out_when_revoked_or_idle(environment, monkeypatch):
    """No reload needed: the next page run re-reads the session row (core.app.signin.CHECK_SECONDS)."""
    import datetime

    from core.app import signin
    from core.store.models import WebSession

    monkeypatch.setattr(signin, "CHECK_SECONDS", 0)
    store = Store.open()
    accounts.add_account(store, "dora", PASSWORD, "pathologist")
    app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), "dora", PASSWORD)
    assert "Signed in as **dora** (pathologist)" in everything_shown(app)
    accounts.change_account(store, "dora", "system", role="admin")  # the role is re-read, not remembered
    assert "Signed in as **dora** (admin)" in everything_shown(app.run())
    accounts.change_account(store, "dora", "system", active=False)
    app.run()
    assert [t.value for t in app.title] == ["Sign in"] and not app.exception
    assert store.events(kinds="sign_out", user="dora", limit=1)[0]["details"] == {"reason": "session revoked"}

    accounts.change_account(store, "dora", "system", active=True)
    app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), "dora", PASSWORD)
    assert "Signed in as **dora**" in everything_shown(app)
    with store.session() as session, session.begin():  # nobody used it for longer than the idle limit
        row = session.get(WebSession, app.session_state[signin.SESSION_KEY])
        row.last_seen -= datetime.timedelta(minutes=signin.session_minutes() + 1)
    app.run()
    assert [t.value for t in app.title] == ["Sign in"]
    assert store.events(kinds="sign_out", user="dora", limit=1)[0]["details"] == {"reason": "session expired"}
    store.close()


SSO_SECRETS = {"cookie_secret": "x" * 40, "redirect_uri": "http://localhost:8501/oauth2callback", "client_id": "c",
               "client_secret": "s", "server_metadata_url": "https://idp.example/.well-known/openid-configuration"}


def sso_app(email: str, **claims) -> AppTest:
    """A browser session whose single sign-on identity (st.user) is logged in (AppTest.user stands in
    for it); its e-mail verified unless `claims` say otherwise."""
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT)
    app.secrets["auth"] = dict(SSO_SECRETS)
    app.user = {"email": email, "email_verified": True, "is_logged_in": True, **claims}
    return app.run()


def test_sign_out_and_time_out_end_a_single_sign_on_login(environment, monkeypatch):
    """Without st.logout() the identity stays logged in and current_user() signs it straight back in."""
    import datetime

    from core.app import signin
    from core.store.models import WebSession

    monkeypatch.setattr(signin, "CHECK_SECONDS", 0)
    store = Store.open()
    accounts.add_account(store, "eve@hospital.org", None, "pathologist")
    app = sso_app("eve@hospital.org")
    assert "Signed in as **eve@hospital.org** (pathologist)" in everything_shown(app)
    app.button(key="sign_out").click().run()
    assert [t.value for t in app.title] == ["Sign in"] and not app.exception
    assert app.user["is_logged_in"] is False  # st.logout() ended the identity provider's login
    app.run()
    assert [t.value for t in app.title] == ["Sign in"]
    assert [e["kind"] for e in store.events(user="eve@hospital.org", newest_first=False)] == ["sign_in", "sign_out"]

    app = sso_app("eve@hospital.org")  # signed in again; then nobody uses the session for too long
    with store.session() as session, session.begin():
        row = session.get(WebSession, app.session_state[signin.SESSION_KEY])
        row.last_seen -= datetime.timedelta(minutes=signin.session_minutes() + 1)
    app.run()
    assert [t.value for t in app.title] == ["Sign in"] and app.user["is_logged_in"] is False
    assert store.events(kinds="sign_out", user="eve@hospital.org", limit=1)[0]["details"] == {"reason": "session expired"}
    assert [e["kind"] for e in store.events(user="eve@hospital.org")].count("sign_in") == 2
    store.close()


def _live_view():
    """A stand-in page run: the user as a live view's timed rerun (polled) or a person's run sees it."""
    import streamlit as st

    from core.app import signin

    user = signin.current_user(polled=st.session_state.get("polled", False))
    st.markdown(f"user: {user['name'] if user else None}")


def test_a_live_views_timed_reruns_do_not_keep_an_idle_session_signed_in(environment, monkeypatch):
    """Retrain's live view re-checks the session every 2 s; each check marks the row used, so without
    `polled` an open Retrain tab would never idle out."""
    import time

    from core.app import signin
    from core.paths import data_dir
    from core.store import sessions

    monkeypatch.setattr(signin, "CHECK_SECONDS", 0)
    store = Store.open()
    accounts.add_account(store, "otto", PASSWORD, "admin")
    row, _ = sessions.start(store, "otto", sessions.signing_key(data_dir()))
    app = AppTest.from_function(_live_view, default_timeout=APP_TIMEOUT)
    app.session_state[signin.USER_KEY] = {"name": "otto", "role": "admin"}
    app.session_state[signin.SESSION_KEY] = row
    app.session_state["polled"] = True
    assert "user: otto" in app.run().markdown[0].value  # the timer's reruns see the user while the tab is in use
    app.session_state[signin.ACTIVE_KEY] = time.monotonic() - signin.session_minutes() * 60 - 1  # nobody since
    assert "user: None" in app.run().markdown[0].value
    assert store.events(kinds="sign_out", user="otto", limit=1)[0]["details"] == {"reason": "session expired"}
    assert sessions.check(store, row, signin.session_minutes()).reason == "revoked"
    store.close()


def test_a_password_typed_as_the_name_is_not_kept_in_the_audit_trail(environment):
    """The append-only trail (and its CSV export) keeps a masked tag for an unknown name, never the text."""
    store = Store.open()
    typed = "Tr0ub4dor&3 typed in the wrong box"
    app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), typed, "")
    assert accounts.REFUSED in everything_shown(app) and not app.exception
    assert store.events(kinds="sign_in_failed", limit=1)[0]["user"].startswith("unknown:")
    assert typed.encode() not in store.csv()
    store.close()


def test_single_sign_on_needs_a_verified_email_and_an_account_made_for_it(environment):
    """An identity provider that lets users set their own e-mail must not hand out accounts ("nOAuth"):
    an unverified or unconfirmed e-mail is refused, and a verified one opens only an active account
    made with --sso-only, never a password account (an admin's included). The sign-in page says why,
    offers to leave the identity provider's login, and the refusal is audited once."""
    store = Store.open()
    accounts.add_account(store, "chief@hospital.org", PASSWORD, "admin")
    accounts.add_account(store, "sso@hospital.org", None, "pathologist")
    for email, claims, said in [
            ("sso@hospital.org", {"email_verified": False}, "as verified"),
            ("sso@hospital.org", {"email_verified": None}, "as verified"),
            ("chief@hospital.org", {}, "No active single sign-on account"),
            ("chief@hospital.org", {"email_verified": False}, "as verified"),
            ("stranger@hospital.org", {}, "No active single sign-on account")]:
        before = len(store.events(kinds="sign_in_failed"))
        app = sso_app(email, **claims)
        assert [t.value for t in app.title] == ["Sign in"] and not app.exception, (email, claims)
        assert any(said in e.value and email in e.value for e in app.error), (email, claims, everything_shown(app))
        assert "Signed in as" not in everything_shown(app)
        app.run()  # a rerun neither signs in nor records the refusal again
        rows = store.events(kinds="sign_in_failed")
        assert len(rows) == before + 1 and rows[0]["user"] == email and rows[0]["details"]["method"] == "oidc"
        app.button(key="sso_sign_out").click().run()
        assert app.user["is_logged_in"] is False  # st.logout(): another identity may be tried
    assert "Signed in as **sso@hospital.org** (pathologist)" in everything_shown(sso_app("sso@hospital.org"))
    assert not [e for e in store.events(kinds="sign_in") if e["user"] == "chief@hospital.org"]
    store.close()


def test_a_provider_that_leaves_the_claim_out_is_trusted_only_when_the_deployment_says_so(environment, monkeypatch):
    """Microsoft Entra ID sends no email_verified: without a setting its users could never sign in."""
    store = Store.open()
    accounts.add_account(store, "entra@hospital.org", None, "pathologist")
    store.close()
    assert "Signed in as" not in everything_shown(sso_app("entra@hospital.org", email_verified=None))
    monkeypatch.setenv("BREAKHIS_SSO_VERIFIED_EMAILS", "1")
    assert "Signed in as **entra@hospital.org** (pathologist)" in everything_shown(
        sso_app("entra@hospital.org", email_verified=None))
    assert "Signed in as" not in everything_shown(sso_app("nobody@hospital.org", email_verified=None))  # no account


def test_a_fresh_server_shows_the_sign_in_form_without_loading_tensorflow(tmp_path):
    """The first page of a fresh server is the sign-in form; TensorFlow and Keras (about 5 s to import on a shared
    CPU, 5.7 s to the form with them) are loaded once a user is signed in, not before (app.py)."""
    env = {**os.environ, "BREAKHIS_DATA_DIR": str(tmp_path / "data"), "BREAKHIS_RUNS_DIR": str(tmp_path / "runs"),
           "PYTHONPATH": str(REPO)}
    env.pop("BREAKHIS_SINGLE_USER", None)
    code = ("import json, sys; from core.store.accounts import add_account; from core.store.audit import Store; "
            f"add_account(Store.open(), 'pat', {PASSWORD!r}, 'pathologist'); "
            "from streamlit.testing.v1 import AppTest; "
            f"app = AppTest.from_file({APP!r}, default_timeout={APP_TIMEOUT}).run(); "
            "print(json.dumps({'titles': [t.value for t in app.title], 'fields': [t.key for t in app.text_input], "
            "'loaded': sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules)}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    shown = json.loads(out.strip().splitlines()[-1])
    assert shown["titles"] == ["Sign in"] and shown["fields"] == ["sign_in_name", "sign_in_password"]
    assert shown["loaded"] == []


def test_images_that_cannot_be_kept_name_the_setting_to_administrators_only(environment, monkeypatch):
    """A pathologist read "...must be a writable folder (BREAKHIS_KEEP_IMAGES)": the server's setting and folder
    are now named to administrators only; everyone is told the diagnosis stands."""
    from core.paths import data_dir

    monkeypatch.setenv("BREAKHIS_KEEP_IMAGES", "1")
    store = Store.open()
    for name, role in (("keeper-pat", "pathologist"), ("keeper-boss", "admin")):
        accounts.add_account(store, name, PASSWORD, role)
    data_dir().mkdir(parents=True, exist_ok=True)
    images = data_dir() / "images"
    images.write_text("a file where the images folder should be")
    try:
        warned = {}
        for name in ("keeper-pat", "keeper-boss"):
            app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), name, PASSWORD)
            samples = app.multiselect(key="samples")
            samples.set_value([samples.options[0]]).run()
            assert not app.exception
            [warned[name]] = [w.value for w in app.warning if "could not be kept" in w.value]
        assert "BREAKHIS_KEEP_IMAGES" not in warned["keeper-pat"] and "Tell an administrator" in warned["keeper-pat"]
        assert "BREAKHIS_KEEP_IMAGES is on" in warned["keeper-boss"]
        assert all("The diagnosis is recorded and shown" in text for text in warned.values())
    finally:
        images.unlink()
        store.close()


def test_a_name_typed_in_either_unicode_form_signs_in_to_one_account(environment):
    """The form looked the name up exactly as typed: "José" typed decomposed (NFD, as some keyboards
    and pasted text give it) missed the account created precomposed (NFC), or reached a twin account."""
    store = Store.open()
    accounts.add_account(store, "Jos\u00e9 Ortega", PASSWORD, "pathologist")
    app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), "Jose\u0301 Ortega", PASSWORD)
    assert "Signed in as **Jos\u00e9 Ortega** (pathologist)" in everything_shown(app) and not app.exception
    assert store.events(kinds="sign_in", limit=1)[0]["user"] == "Jos\u00e9 Ortega"
    store.close()
