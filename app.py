"""BreakHis decision-support app: the router and the model sidebar.

    streamlit run app.py

Pages live in pages/, one file each; their logic lives in core/app (session for Streamlit glue).
Works offline with the bundled default model (models/default) and samples (assets/samples).
Optional environment variables: BREAKHIS_DEFAULT_MODEL, BREAKHIS_MODEL_DIRS, BREAKHIS_RUNS_DIR,
BREAKHIS_SYNTHETIC_DIR (see core/app/registry.py), BREAKHIS_SLIDE_DIRS (core/app/slides.py),
BREAKHIS_DATASET_DIRS (core/paths.py: the folders the Dataset page may scan).
"""

import streamlit as st

from core.app import glossary, signin
from core.data.labels import sentence
from core.store.roles import can

# An emoji icon: Streamlit draws it in the page (a data: URL). A ":material/...:" one makes every
# browser fetch the tab's icon from fonts.gstatic.com, a third-party request an offline app must not make.
st.set_page_config(page_title="BreakHis decision support", page_icon="🔬", layout="wide")

# Signed out, the only page is the sign-in page (core.app.signin.sign_in_page); signed in, the
# pages the user's role may open (core.store.roles). Each restricted page checks the role again.
user = signin.current_user()  # after a reload: resumed from the session cookie, if it still holds
signin.sync_cookie()  # writes the cookie after a sign-in, removes it after a sign-out
if user is None:
    st.navigation([st.Page(signin.sign_in_page, title="Sign in", icon=":material/login:")]).run()
    st.stop()

# Only now: core.app.session and registry load TensorFlow and Keras (about 5 s on a fresh server), which the
# sign-in form does not need; a fresh server showed it after 5.7 s instead of 0.9 s.
from core.app import registry, session  # noqa: E402

session.keep_keras_state()  # cached models are shared; Streamlit must not clear Keras per rerun

navigation = st.navigation([page for page, action in [
    (st.Page("pages/diagnose.py", title="Diagnose", icon=":material/biotech:", default=True), "diagnose"),
    (st.Page("pages/slide.py", title="Slide", icon=":material/grid_view:"), "slides"),
    (st.Page("pages/review.py", title="Review queue", icon=":material/rate_review:"), "review"),
    (st.Page("pages/dataset.py", title="Dataset", icon=":material/bar_chart:"), "dataset"),
    (st.Page("pages/performance.py", title="Model performance", icon=":material/monitoring:"), "performance"),
    (st.Page("pages/compare.py", title="Compare models", icon=":material/compare_arrows:"), "compare"),
    (st.Page("pages/retrain.py", title="Retrain", icon=":material/model_training:"), "retrain"),
    (st.Page("pages/gan_gallery.py", title="GAN gallery", icon=":material/auto_awesome:"), "gallery"),
    (st.Page("pages/audit.py", title="Audit log", icon=":material/history:"), "audit"),
] if can(user["role"], action)])


def model_label(folder: str) -> str:
    """Badge plus where the folder is: labels must be unique (the widget keeps the label, and a
    retrained copy of a model often has the same name)."""
    where = registry.short_location(folder)
    try:  # A broken folder (its card, its model.keras) stays listed, with why it cannot be used.
        problem = session.model_problem(folder)
        return f"{where} (unusable: {problem})" if problem else f"{registry.model_badge(session.model_card(folder))} · {where}"
    except Exception as problem:
        return f"{where} (unusable: {problem})"


with st.sidebar:
    if session.single_user_mode():
        st.warning("Single-user local mode (BREAKHIS_SINGLE_USER): no sign-in; everything is recorded as "
                   "'local'.", icon=":material/person:")
    else:
        st.caption(f"Signed in as **{session.plain(user['name'])}** ({user['role']})")
        st.button("Sign out", key="sign_out", on_click=session.sign_out)
    st.subheader("Active model")
    problems = registry.model_setup_problems()  # a configured folder the app cannot use: said, not replaced silently
    if problems and can(user["role"], "activate_model"):  # they name server paths: administrators only
        for problem in problems:
            st.warning(problem, icon=":material/settings_alert:")
    elif problems:
        st.warning("The deployment's model settings name a folder that cannot be used; the app uses another model "
                   "meanwhile. Ask an administrator.", icon=":material/settings_alert:")
    models = session.models_for(user["role"])  # a pathologist: the deployment's models, not Retrain's runs
    if not models:
        st.error(f"{registry.no_model_text()}. Train one on the Retrain page." if can(user["role"], "retrain")
                 else f"{registry.no_model_text()}. Ask an administrator.")
        st.session_state.pop(session.ACTIVE_MODEL_KEY, None)
    else:
        if session.active_model() not in models:
            session.set_active_model(session.first_usable(models), audited=False)
        # The choice lives in a plain session key: widget state does not survive page switches
        # under st.navigation, and the Retrain page can change the active model too.
        st.session_state["model_picker"] = session.active_model()
        folder = st.selectbox("Model", models, format_func=model_label, key="model_picker",
                              help="Models found in models/ and runs/." if can(user["role"], "activate_model")
                              else "The deployment's models (models/); Retrain's runs are for administrators.",
                              on_change=lambda: session.set_active_model(st.session_state["model_picker"]))
        unusable = session.model_problem(folder)  # e.g. the active model's model.keras went missing since
        if unusable:
            st.error(f"This model folder cannot be used: {unusable}. Choose another model.")
        try:
            info = registry.describe_model(session.model_card(folder))
        except Exception as problem:
            if not unusable:
                st.error(f"This model folder cannot be used: {problem}")
        else:
            if info["demo"]:
                st.badge("DEMO", icon=":material/warning:", color="red")
                st.caption("Demo model: it shows how the app works. Its predictions are "
                           "not a diagnosis and it has no valid accuracy.")
            elif info["limited"]:
                st.badge("LIMITED DATA", icon=":material/warning:", color="orange")
                limited = f"{sentence(info['evidence'])}. Measured: {info['measured'] or 'not evaluated'}."
                st.caption(limited, help=glossary.explain(limited))  # pooled out-of-fold, case x tumour-type rows
            st.markdown(f"**{info['name']}**  \n"
                        f"Backbone: {info['backbone']} ({info['hierarchy']})  \n"
                        f"Trained on: {info['data']}  \n"
                        f"Split: {info['split']}", help=glossary.explain(info["split"]))
    st.caption("Research use only. Not a medical device.")
    if not session.single_user_mode():
        session.watch_session()  # an unattended tab clears itself after the idle limit
session.record_ended_job()  # a job that ended while its server was down is in the audit trail, once

run_ended = session.person_run_end()
try:
    navigation.run()
finally:  # also when the page stops or reruns (st.stop, st.rerun raise)
    run_ended()
