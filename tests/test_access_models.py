"""Which models a role may make its session's active model (QA priv #6). A pathologist chooses among the
deployment's models (the default and the folders of models/), never an unevaluated Retrain run in runs/;
an administrator (activate_model) may choose any, runs included. The sidebar offers what the role may
choose, and the choice itself (a callback any client can send) is checked again."""

import pytest
from streamlit.testing.v1 import AppTest

from core.testing.apptest import sign_in
from tests.app_helpers import APP, APP_TIMEOUT, PASSWORD, make_model_folder, signed_in_app


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    validated = make_model_folder(root / "models" / "validated", demo=False, name="validated")
    run = make_model_folder(root / "runs" / "boss-experiment" / "model", demo=False, name="boss-experiment")
    with signed_in_app(root, {"pat": "pathologist", "boss": "admin"}) as (store, default):
        yield {"store": store, "default": str(default.resolve()), "validated": str(validated.resolve()),
               "run": str(run.resolve())}


def test_a_pathologist_is_offered_and_may_choose_only_the_deployments_models(env):
    app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), "pat", PASSWORD)
    assert app.selectbox(key="model_picker").options == ["DEMO · tiny-demo (small_cnn) · models/default",
                                                         "validated (small_cnn) · models/validated"]
    app.selectbox(key="model_picker").set_value(env["validated"]).run()
    assert app.session_state["active_model"] == env["validated"]
    assert [(r["user"], r["subject"]) for r in env["store"].events(kinds="model_activated", limit=1)] == [
        ("pat", "models/validated")]

    app.session_state["active_model"] = env["run"]  # e.g. chosen while the account was an admin's
    app.run()
    assert not app.exception and app.session_state["active_model"] == env["default"]


def _choose_the_run():
    """A client that sends the sidebar's callback with a folder the sidebar did not offer."""
    import streamlit as st

    from core.app import session

    if session.current_user() is None:
        st.title("Sign in")
        st.stop()
    st.button("choose", key="choose", on_click=session.set_active_model, args=(st.session_state["run"],))
    st.title(f"active: {session.active_model()}")


def test_a_pathologists_choice_of_a_retrain_run_is_refused_and_not_audited(env):
    from core.app import signin
    from core.paths import data_dir
    from core.store import sessions

    row, _ = sessions.start(env["store"], "pat", sessions.signing_key(data_dir()))
    app = AppTest.from_function(_choose_the_run, default_timeout=APP_TIMEOUT)
    app.session_state[signin.USER_KEY] = {"name": "pat", "role": "pathologist"}
    app.session_state[signin.SESSION_KEY] = row
    app.session_state["run"] = env["run"]
    before = len(env["store"].events(kinds="model_activated"))
    app.run().button(key="choose").click().run()
    assert not app.exception and [t.value for t in app.title] == ["active: None"]
    assert "administrator" in " ".join(e.value for e in app.sidebar.error)
    assert len(env["store"].events(kinds="model_activated")) == before


def test_an_administrator_may_choose_a_retrain_run(env):
    app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), "boss", PASSWORD)
    assert "boss-experiment (small_cnn) · runs/boss-experiment/model" in app.selectbox(key="model_picker").options
    app.selectbox(key="model_picker").set_value(env["run"]).run()
    assert not app.exception and app.session_state["active_model"] == env["run"]
    [row] = env["store"].events(kinds="model_activated", limit=1)
    assert (row["user"], row["subject"]) == ("boss", "runs/boss-experiment/model")
