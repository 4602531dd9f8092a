"""An unattended tab clears itself once its session idles out (QA priv #3): the idle limit was checked only
when a person next caused a run, so the diagnosis and its heat maps stayed on screen (and their /media
URLs kept working) indefinitely. app.py now re-checks the session on a timer (a fragment's run_every)
and reruns the whole app once it has ended; the timer is nobody's activity, so it never keeps a tab
signed in. AppTest runs no timers: the last test runs the real one in a browser."""

import datetime
import os
import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.store import accounts
from core.store.audit import Store
from core.store.models import WebSession, utc_now
from core.testing.apptest import sign_in
from core.testing.server import CHROMIUM
from tests.app_helpers import APP, APP_TIMEOUT, PASSWORD, app_environment, make_model_folder, signed_in_app


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with signed_in_app(tmp_path_factory.mktemp("idle"), {"pat": "pathologist"}) as (store, _):
        yield store


@pytest.fixture
def timers(monkeypatch):
    """The timed fragments each run registers: [(function name, run_every)]."""
    registered, real = [], st.fragment

    def spy(func=None, *, run_every=None):
        if func is not None:
            registered.append((func.__name__, run_every))
        return real(func, run_every=run_every)

    monkeypatch.setattr(st, "fragment", spy)
    return registered


def test_a_signed_in_tab_checks_its_session_on_a_timer(env, timers, monkeypatch):
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    assert not timers  # the sign-in page has nothing to clear
    sign_in(app, "pat", PASSWORD)
    assert [t.value for t in app.title] == ["Diagnose"]
    [(_, every)] = timers
    assert 1 <= every <= 60  # the screen clears at most a minute after the idle limit
    timers.clear()
    monkeypatch.setenv("BREAKHIS_SESSION_MINUTES", "1")  # a minute: longer than the first page after a sign-in
    app.run()  # (it loads TensorFlow) takes on a loaded machine, so the session is still open here
    assert timers and timers[0][1] <= 60 / 4 < every  # a short limit is checked more often


def test_idle_time_counts_from_the_end_of_a_persons_run_not_its_start(env, monkeypatch):
    """The idle time counted from a run's start, so a long run (a slide analysed for minutes) ate into the time
    its results stayed on screen; the session row, touched only at the start, expired that much earlier too."""
    from core.app import signin

    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    sign_in(app, "pat", PASSWORD)
    shown, real = [], st.title

    def slow_title(*args, **kwargs):  # the page's heading, then LONG_RUN_SECONDS of work before its run ends
        result = real(*args, **kwargs)
        shown.append((time.monotonic(), utc_now()))
        time.sleep(signin.LONG_RUN_SECONDS)
        return result

    monkeypatch.setattr(st, "title", slow_title)
    app.run()
    assert [t.value for t in app.title] == ["Diagnose"] and len(shown) == 1
    (clock, wall), row = shown[0], app.session_state[signin.SESSION_KEY]
    assert app.session_state[signin.ACTIVE_KEY] < clock  # the run's start, as before
    assert app.session_state[signin.RUN_END_KEY][0] >= clock + signin.LONG_RUN_SECONDS  # its end: the tab's clock
    with env.session() as session:  # and the session row's, which its own idle check reads
        assert session.get(WebSession, row).last_seen >= wall + datetime.timedelta(seconds=signin.LONG_RUN_SECONDS)


def _timed_run():
    """A person's run goes through app.py's gate; the timer's run runs only the fragment's function."""
    import streamlit as st

    from core.app import session

    if st.session_state.pop("timer", False):
        session.leave_when_signed_out()
        st.title("Still signed in")
        st.stop()
    if session.current_user() is None:
        st.title("Sign in")
        st.stop()
    st.title(f"Diagnose, as {session.current_user()['role']}")
    st.session_state["_pages_drawn_for_role"] = session.current_user()["role"]  # as watch_session records it


def _timed_app(store, name: str, role: str) -> tuple[AppTest, str]:
    """_timed_run signed in as `name` (an account of `role`) on a new session row, after its first run."""
    from core.app import signin
    from core.paths import data_dir
    from core.store import sessions

    row, _ = sessions.start(store, name, sessions.signing_key(data_dir()))
    app = AppTest.from_function(_timed_run, default_timeout=APP_TIMEOUT)
    app.session_state[signin.USER_KEY] = {"name": name, "role": role}
    app.session_state[signin.SESSION_KEY] = row
    assert [t.value for t in app.run().title] == [f"Diagnose, as {role}"]
    return app, row


def test_the_timer_signs_an_idle_tab_out_and_the_app_shows_the_sign_in_page(env):
    from core.app import signin
    from core.store import sessions

    app, row = _timed_app(env, "pat", "pathologist")
    idle_since = time.monotonic() - signin.session_minutes() * 60 + 30  # 30 s before the limit
    app.session_state[signin.ACTIVE_KEY] = idle_since
    app.session_state["timer"] = True
    app.run()
    assert [t.value for t in app.title] == ["Still signed in"]
    assert app.session_state[signin.ACTIVE_KEY] == idle_since  # the timer is nobody's activity
    app.session_state[signin.ACTIVE_KEY] = idle_since - 31  # the limit passed; nobody touched the tab
    app.session_state["timer"] = True
    app.run()
    assert not app.exception and [t.value for t in app.title] == ["Sign in"]
    assert env.events(kinds="sign_out", user="pat", limit=1)[0]["details"] == {"reason": "session expired"}
    assert sessions.check(env, row, signin.session_minutes()).reason == "revoked"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install -y chromium)")
def test_an_unattended_tab_in_a_browser_shows_the_sign_in_page_after_the_idle_limit(tmp_path):
    """The real timer: `streamlit run app.py` and headless Chromium; nobody touches the tab."""
    from playwright.sync_api import expect, sync_playwright

    from core.testing.server import CHROMIUM_ARGS, sign_in_page, streamlit_server

    default = make_model_folder(tmp_path / "models" / "default", demo=True)
    environment = {**app_environment(tmp_path / "models", default, tmp_path / "runs"), "BREAKHIS_SINGLE_USER": "",
                   "BREAKHIS_SESSION_KEY": "", "BREAKHIS_DATABASE_URL": "", "BREAKHIS_SESSION_MINUTES": "0.5"}
    store = Store.open(f"sqlite:///{tmp_path / 'data' / 'breakhis.db'}")
    accounts.add_account(store, "pat", PASSWORD, "pathologist")
    with streamlit_server(tmp_path, environment) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url, wait_until="domcontentloaded")
        started = time.monotonic()  # the last activity is the end of the first page's run after the sign-in
        sign_in_page(page, "pat", PASSWORD)  # (it loads TensorFlow: seconds); nothing after it is anyone's
        # Limit 30 s, checked every 7.5 s, counted from the end of that first page's run. Not shorter: one run
        # longer than the limit (that first page took 9 s on a loaded machine, CI's 6 s limit failed) is signed
        # out at its next check, a limitation only a limit shorter than any page's run can show.
        page.get_by_role("heading", name="Sign in").wait_for(timeout=120_000)
        expect(page.get_by_text("Signed in as")).to_have_count(0, timeout=30_000)
        assert time.monotonic() - started >= 30 * 0.9  # not before the limit
        browser.close()
    assert store.events(kinds="sign_out", user="pat", limit=1)[0]["details"] == {"reason": "session expired"}
    store.close()


def test_the_timer_redraws_the_pages_of_a_tab_whose_role_changed(env):
    """An administrator demoted while the Audit log was open kept it (and the admin pages in the sidebar)
    until the next click: the timer reran the app only for a session that had ended (qa-multi #2)."""
    from core.app import signin

    accounts.add_account(env, "ada", PASSWORD, "admin")
    app, _ = _timed_app(env, "ada", "admin")
    app.session_state["timer"] = True
    assert [t.value for t in app.run().title] == ["Still signed in"]  # nothing changed: the page stays
    accounts.change_account(env, "ada", "admin-bob", role="pathologist")
    app.session_state[signin.CHECKED_KEY] = 0  # the row is re-read now, not at the next check interval
    app.session_state["timer"] = True
    app.run()
    assert not app.exception and [t.value for t in app.title] == ["Diagnose, as pathologist"]


def test_the_timer_counts_idle_time_from_the_end_of_the_last_run_a_person_caused(env):
    from core.app import signin

    app, _ = _timed_app(env, "pat", "pathologist")
    limit = signin.session_minutes() * 60
    app.session_state[signin.ACTIVE_KEY] = time.monotonic() - limit - 60  # a run that started past the limit
    app.session_state[signin.RUN_END_KEY] = [time.monotonic() - limit + 30]  # and ended 30 s before it
    app.session_state["timer"] = True
    assert [t.value for t in app.run().title] == ["Still signed in"]
    app.session_state[signin.RUN_END_KEY] = [time.monotonic() - limit - 1]
    app.session_state["timer"] = True
    assert [t.value for t in app.run().title] == ["Sign in"]
