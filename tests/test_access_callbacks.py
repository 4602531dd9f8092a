"""Button and widget callbacks run before app.py checks the session (Streamlit runs them first), so each
one that changes something re-reads the session itself: a signed-out, revoked or idle session changes
nothing and writes no audit row; and no audit row names "unknown" for a real user's action (QA priv #5)."""

import pytest
from streamlit.testing.v1 import AppTest

from core.store import accounts
from core.testing.apptest import sign_in
from tests.app_helpers import APP, APP_TIMEOUT, PASSWORD, make_model_folder, signed_in_app


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("callbacks")
    other = make_model_folder(root / "models" / "validated", demo=False, name="validated")
    with signed_in_app(root) as (store, _):
        yield {"store": store, "other": str(other.resolve())}


def test_a_disabled_accounts_model_choice_changes_nothing_and_is_not_audited(env, monkeypatch):
    from core.app import signin

    monkeypatch.setattr(signin, "CHECK_SECONDS", 3600)  # only a check made in the callback sees the revocation
    accounts.add_account(env["store"], "carl", PASSWORD, "pathologist")
    app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), "carl", PASSWORD)
    assert "validated (small_cnn) · models/validated" in app.selectbox(key="model_picker").options
    accounts.change_account(env["store"], "carl", "system", active=False)
    app.selectbox(key="model_picker").set_value(env["other"]).run()
    assert not app.exception and [t.value for t in app.title] == ["Sign in"]
    assert not env["store"].events(kinds="model_activated") and not env["store"].events(user="unknown")
    assert env["store"].events(kinds="sign_out", user="carl", limit=1)[0]["details"] == {"reason": "session revoked"}


def _page_that_audits():
    """app.py's gate, then an audited action; the account is disabled in between (as by an admin elsewhere)."""
    import streamlit as st

    from core.app import session
    from core.store import accounts

    if session.current_user() is None:
        st.title("Sign in")
        st.stop()
    accounts.change_account(session.store(), st.session_state["who"], "system", active=False)
    session.audit("retrain_cancelled", "runs/x", force=False)
    st.title("Audited")


def test_an_action_whose_session_ended_during_the_run_is_not_audited_as_unknown(env, monkeypatch):
    from core.app import signin
    from core.paths import data_dir
    from core.store import sessions

    monkeypatch.setattr(signin, "CHECK_SECONDS", 0)
    accounts.add_account(env["store"], "dana", PASSWORD, "admin")
    row, _ = sessions.start(env["store"], "dana", sessions.signing_key(data_dir()))
    app = AppTest.from_function(_page_that_audits, default_timeout=APP_TIMEOUT)
    app.session_state[signin.USER_KEY] = {"name": "dana", "role": "admin"}
    app.session_state[signin.SESSION_KEY] = row
    app.session_state["who"] = "dana"
    app.run()
    assert not app.exception and [t.value for t in app.title] == ["Sign in"]
    assert not env["store"].events(kinds="retrain_cancelled") and not env["store"].events(user="unknown")
