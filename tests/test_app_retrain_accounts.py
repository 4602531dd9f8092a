"""Retrain with sign-in on: an account disabled while its Retrain tab is open can neither cancel nor clear a job,
and a job's end is recorded once, under its launcher's name, whoever's page happens to see it first."""

from streamlit.testing.v1 import AppTest

from core.app import jobs
from core.testing.apptest import sign_in
from tests.app_helpers import (
    APP,
    APP_TIMEOUT,
    PASSWORD,
    SLEEPER,
    finished_job,
    open_retrain,
    signed_in_app,
    stop_and_forget,
)


def signed_in(name: str, retrain: bool = True) -> AppTest:
    app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), name, PASSWORD)
    return open_retrain(app) if retrain else app


def test_a_disabled_admin_cannot_cancel_training_from_an_open_retrain_tab(tmp_path, monkeypatch):
    """The live view's button re-reads the session before acting: app.py's check of the same run may
    be up to CHECK_SECONDS old, and the fragment's own reruns skip it altogether."""
    from core.app import signin
    from core.store import accounts

    monkeypatch.setattr(signin, "CHECK_SECONDS", 3600)  # only a check made at the click sees the revocation
    with signed_in_app(tmp_path, {"chief": "admin"}) as (store, _):
        runs = tmp_path / "runs"
        job = jobs.start_job(SLEEPER, runs / "long", {"epochs": 1}, root=runs)
        try:
            app = signed_in("chief")
            assert app.button(key="cancel_job").label == "Cancel training"
            accounts.change_account(store, "chief", "system", active=False)  # revokes every session of the account
            app.button(key="cancel_job").click().run()
            assert jobs.is_alive(job) and jobs.read_job(runs).cancel_requested is None
            assert not [e for e in store.events(kinds="retrain_cancelled") if e["subject"].endswith("long")]
            assert not app.exception and [t.value for t in app.title] == ["Sign in"]
            assert store.events(kinds="sign_out", user="chief", limit=1)[0]["details"] == {"reason": "session revoked"}
        finally:
            stop_and_forget(job, runs)


def test_a_disabled_admins_open_retrain_tab_cannot_clear_the_finished_job(tmp_path, monkeypatch):
    """Streamlit runs a button's callback before app.py checks the session: "Start a new training job"
    forgot the job for an account disabled a moment before. The callback now re-reads the session first."""
    from core.app import signin
    from core.store import accounts

    monkeypatch.setattr(signin, "CHECK_SECONDS", 3600)  # only a check made at the click sees the revocation
    with signed_in_app(tmp_path, {"head": "admin"}) as (store, _):
        runs = tmp_path / "runs"
        finished_job(runs, "shown-when-disabled", {"status": "failed", "message": "boom"})
        app = signed_in("head")
        accounts.change_account(store, "head", "system", active=False)
        app.button(key="clear_job").click().run()
        assert not app.exception and [t.value for t in app.title] == ["Sign in"]
        assert jobs.read_job(runs).run_dir.endswith("shown-when-disabled")  # not forgotten
        assert not store.events(user="unknown")


def test_the_end_of_a_job_is_recorded_once_as_its_launchers_whoever_opens_retrain(tmp_path):
    """qa-multi #1: dave opening Retrain after admin's job had ended (its server restarted, so nothing
    recorded it at the exit) wrote retrain_finished as dave's, at the time he looked."""
    with signed_in_app(tmp_path, {"dave": "admin"}) as (store, _):
        run = finished_job(tmp_path / "runs", "launched-by-another", {"status": "completed", "time": 1.5e9},
                           launched_by="boss")
        for _ in range(2):  # two of dave's tabs (or dave, then another admin)
            assert not signed_in("dave").exception
        rows = [e for e in store.events(kinds="retrain_finished") if e["subject"] == str(run)]
        assert [(e["user"], e["details"]["ended"]) for e in rows] == [("boss", "2017-07-14T02:40:00+00:00")]


def test_a_job_that_ended_while_its_server_was_down_is_recorded_without_anyone_opening_retrain(tmp_path):
    """The server's watch records a job's end as it exits; after a restart nothing did until an administrator
    opened Retrain. Now any signed-in user's first run records it, as the launcher's, once."""
    with signed_in_app(tmp_path, {"pat": "pathologist"}) as (store, _):
        run = finished_job(tmp_path / "runs", "ended-unwatched", {"status": "completed", "time": 1.5e9},
                           launched_by="boss")
        for _ in range(2):
            app = signed_in("pat", retrain=False)
            assert not app.exception and [t.value for t in app.title] == ["Diagnose"]  # Retrain is not theirs
        rows = [e for e in store.events(kinds="retrain_finished") if e["subject"] == str(run)]
        assert [(e["user"], e["details"]["status"]) for e in rows] == [("boss", "completed")]
