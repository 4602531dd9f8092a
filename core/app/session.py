"""Streamlit glue shared by the pages: cached models, per-session memory, the active model.

Everything here needs a Streamlit session; the logic it wraps lives in core.app.registry (what
can be shown) and core.app.service (the diagnosis), which are tested without Streamlit. One
loaded model serves every session (st.cache_resource; Predictor is thread-safe); everything a
user uploads or sees stays in that user's session state, never in a shared cache or on disk.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import streamlit as st

from core.app import registry, service
from core.app.audit_glue import (  # noqa: F401 - re-exported: the pages and app.py call session.*
    IDLE_POLL_SECONDS,
    audit,
    audit_diagnosis,
    audit_slide,
    leave_when_signed_out,
    model_identity,
    permitted,
    plain,
    record_ended_job,
    review_form,
    show_review_notes,
    watch_session,
)
from core.app.signin import (  # noqa: F401 - re-exported: the pages and app.py call session.*
    USER_KEY,
    current_user,
    nothing_lost,
    person_run_end,
    require,
    session_minutes,
    sign_in_page,
    sign_out,
    single_user_mode,
    sso_configured,
    store,
    sync_cookie,
)
from core.errors import ModelFolderError
from core.model.cam import explain
from core.model.folders import files_problem, read_card
from core.model.loading import load_predictor
from core.model.predict import Predictor
from core.paths import runs_dir
from core.store.db import StoreError
from core.store.roles import can

# ---------------------------------------------------------------- models

@st.cache_resource(show_spinner="Loading model...", max_entries=4)
def _load_predictor(folder: str, stamp: float) -> Predictor:
    # One instance per model folder for the whole server: Predictor is thread-safe.
    predictor = load_predictor(folder)
    _warm_up(predictor)
    return predictor


def _warm_up(predictor: Predictor) -> None:
    """Trace the prediction and Grad-CAM graphs now, behind the loading spinner, so the first
    upload is as fast as the next ones (DenseNet121 on CPU: ~10 s of tracing otherwise).

    The Grad-CAM part is best effort: a model that predicts but cannot be explained must still
    give predictions (the page then says why the heat maps are missing).
    """
    blank = np.full((predictor.input_size, predictor.input_size, 3), 200, np.uint8)
    predictor.predict([blank])
    try:
        explain(predictor, blank, "gradcam")
    except Exception as problem:  # noqa: BLE001 - explained again (with a message) on first use
        logging.getLogger(__name__).warning("Grad-CAM warm-up failed for %s: %s: %s", predictor.name,
                                            type(problem).__name__, problem)


def get_predictor(folder: str) -> Predictor:
    """Cached, shared predictor; raises the loader's clear error for a bad folder."""
    return _load_predictor(str(Path(folder).resolve()), registry.stamp(folder))


# ---------------------------------------------------------------- explanations

_CAM_CACHE_KEY = "_explanations"
_CAM_CACHE_SIZE = 64


def explanations(predictor: Predictor, result: service.ImageResult, method: str) -> tuple:
    """(stage-1, stage-2) Explanation of one image's shown class and subtype, at display size.

    Grad-CAM of the shown prediction comes from the diagnosis pass itself (no model work here).
    Other methods, or targets the pass did not explain, run now and are remembered in this
    session only (not st.cache_data), so one user's images are never kept for another.
    """
    p = result.prediction
    from_the_pass = result.gradcam_maps() if method == "gradcam" else None
    if from_the_pass is not None:
        return from_the_pass
    if method == "gradcam" and result.gradcam_error:
        raise RuntimeError(result.gradcam_error)
    cache = st.session_state.setdefault(_CAM_CACHE_KEY, {})
    key = (model_identity(predictor), result.digest, method, p.label, p.subtype, result.magnification)
    if key not in cache:
        if len(cache) >= _CAM_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        maps = explain(predictor, result.image.rgb, method, p.label, p.subtype, size=result.display.shape[:2],
                       magnification=result.magnification).explanations
        cache[key] = (maps["stage1"], maps["stage2"])
    return cache[key]


# ---------------------------------------------------------------- session glue

def keep_keras_state() -> None:
    """Stop Streamlit from calling keras.backend.clear_session() after every script run.

    Streamlit does that to free models a script rebuilds on each run. This app builds none: its
    models are loaded once (st.cache_resource) and shared by all sessions. Clearing TensorFlow's
    kernel cache under them made the next prediction about 10x slower (DenseNet121 on CPU,
    0.15 s -> 1.0-1.7 s, plus a 0.4 s garbage collection per rerun) and could race with another
    session's prediction. Why a private hook: Streamlit has no public option for this (only
    runner.postScriptGC, which is about gc.collect); streamlit is pinned (requirements.txt) and
    the hook is checked by name, so an upgrade that renames it only loses the speed-up.
    """
    from streamlit.runtime.scriptrunner import script_runner

    if hasattr(script_runner, "_clean_problem_modules"):
        script_runner._clean_problem_modules = lambda: None


def require_router() -> None:
    """Make sure a page runs inside app.py's st.navigation (its sidebar and model choice).

    Streamlit treats a pages/ folder next to the entrypoint as a legacy multipage app until the
    first st.navigation call. When the first request after a server start is a deep link
    (e.g. /retrain), it runs pages/retrain.py alone and stays in that mode. Every page calls
    this first: it records what st.navigation itself records, then reruns through app.py.
    Why a private flag: the public way out is to rename pages/, which the project layout keeps;
    st.navigation sets exactly this flag itself (streamlit/commands/navigation.py).
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


ACTIVE_MODEL_KEY = "active_model"


@st.cache_data(show_spinner=False, max_entries=64)
def _card(folder: str, stamp: float) -> dict:
    return read_card(folder)


def model_card(folder: str) -> dict:
    """The card of a model folder without loading the model (cheap, for the sidebar)."""
    return _card(folder, registry.stamp(folder))


@st.cache_data(show_spinner=False, max_entries=64)
def _problem(folder: str, stamp: float) -> str | None:
    try:
        return files_problem(folder, read_card(folder))
    except ModelFolderError as problem:
        return str(problem)


def model_problem(folder: str) -> str | None:
    """Why a model folder cannot be made active (its card unreadable, its model.keras missing or not matching
    the card: what Diagnose's loader refuses), None when it can; hashed once per version of the folder."""
    return _problem(str(Path(folder).resolve()), registry.stamp(folder))


def active_model() -> str | None:
    return st.session_state.get(ACTIVE_MODEL_KEY)


def models_for(role: str | None) -> list[str]:
    """The model folders `role` may make its session's active model (core.store.roles): activate_model,
    all that registry.available_models() finds; choose_model, the deployment's only: the default and
    those outside the runs folder (a run there is an experiment nobody has validated yet)."""
    models = registry.available_models()
    if can(role, "activate_model"):
        return models
    if not can(role, "choose_model"):
        return []
    runs, default = runs_dir().resolve(), str(registry.default_model().resolve())
    return [folder for folder in models if folder == default or not Path(folder).is_relative_to(runs)]


def set_active_model(folder: str, audited: bool = True) -> None:
    """Make `folder` this session's active model (a callback: it runs before app.py's session check).
    A user's choice re-reads the session first (one that ended changes nothing and writes no row) and is
    an audit row; a folder the role may not choose (models_for), or that Diagnose's loader would refuse
    (model_problem), is refused in the sidebar (a callback must not raise). The default picked for a new
    session is not audited."""
    if audited:
        user = permitted("choose_model", fresh=True)
        if user is None:
            return
        if str(Path(folder).resolve()) not in models_for(user["role"]):
            st.sidebar.error("This model cannot be chosen: a pathologist chooses among the deployment's models "
                             "(models/); Retrain's runs, not yet validated, are for an administrator. The active "
                             "model was not changed.")
            return
        problem = model_problem(folder)
        if problem:
            st.sidebar.error(f"This model folder cannot be used: {problem}. The active model was not changed.")
            return
        card = model_card(folder)
    if audited:  # recorded first: a choice the audit trail does not have is not made
        try:
            store().record("model_activated", user["name"], registry.short_location(folder),
                           model=card.get("name"), model_sha256=card.get("sha256"), details={"scope": "session"})
        except StoreError as problem:
            st.sidebar.error(f"{problem} The active model was not changed: choose it again in a moment.",
                             icon=":material/database:")
            return
    st.session_state[ACTIVE_MODEL_KEY] = str(Path(folder).resolve())


def first_usable(models: list[str]) -> str:
    """The model a new session starts with: the first one Diagnose's loader accepts, else the first (whose
    pages then say why it cannot be used)."""
    return next((folder for folder in models if not model_problem(folder)), models[0])


def require_predictor() -> Predictor:
    """The active model's predictor, or a clear message and a stopped page."""
    folder = active_model()
    if not folder:
        st.error("No model is available. Put a model folder in models/ (or train one on the "
                 "Retrain page) and reload.")
        st.stop()
    try:
        return get_predictor(folder)
    except ModelFolderError as problem:
        st.error(f"The active model cannot be used: {problem}. Choose another model in the sidebar.")
        st.stop()


def diagnose_in_session(predictor: Predictor, items: list[tuple[str, bytes]], **options) -> list[service.ImageResult]:
    """`core.app.service.diagnose_items`, with the model outputs remembered for this session.

    Only the model run is cached (keyed by model, items and TTA, and the chosen magnification for a
    model whose views depend on it); the refer threshold and, for other models, the magnification
    are applied on every run, so moving those controls never re-runs the model.
    """
    tta = bool(options.pop("tta", False))
    chosen = service.pass_magnification(predictor, options.get("magnification", service.NOT_STATED))
    key = (model_identity(predictor), tuple((n, hashlib.sha256(d).hexdigest()) for n, d in items), tta, chosen)
    cached = st.session_state.get("_model_outputs")
    if cached is None or cached[0] != key:
        cached = (key, *service.classify(predictor, items, tta, magnification=chosen or service.NOT_STATED))
        st.session_state["_model_outputs"] = cached
    results = service.interpret(predictor, cached[1], cached[2], tta, **options)
    settings = (key, tuple(sorted(options.items())))
    if st.session_state.get("_diagnosis_settings") != settings:  # a prepared report is now stale
        st.session_state["_diagnosis_settings"] = settings
        drop_report()
    return results


_REPORT = "_report"  # (what it was drawn with, the PDF bytes): this session's prepared report


def keep_report(drawn_with: tuple, pdf: bytes) -> None:
    st.session_state[_REPORT] = (drawn_with, pdf)


def drop_report() -> None:
    """Forget the prepared report (the diagnosis it shows changed, or preparing it failed)."""
    st.session_state.pop(_REPORT, None)


def prepared_report(drawn_with: tuple) -> tuple[bytes | None, bool]:
    """(the PDF prepared with these controls or None, whether one exists for other controls)."""
    prepared = st.session_state.get(_REPORT)
    if prepared is None:
        return None, False
    return (prepared[1], False) if prepared[0] == drawn_with else (None, True)


_SHOWN_UPLOADS, _EARLIER_UPLOADS = "_shown_uploads", "_earlier_uploads"


def uploads_across_pages(uploader_was_shown: bool, current: list[tuple[str, bytes]]) -> tuple[list, list]:
    """(all uploaded items to diagnose, those carried over from an earlier visit of the page).

    Streamlit empties a page's file uploader when the user visits another page. So that nothing
    the user uploaded is lost, the images shown last stay in this session's memory (never on
    disk) and come back with the page until the user forgets them.
    """
    state = st.session_state
    if not uploader_was_shown:  # first run of the page since it was (re)opened
        state[_EARLIER_UPLOADS] = state.get(_SHOWN_UPLOADS, [])
    earlier = [item for item in state.get(_EARLIER_UPLOADS, []) if item not in current]
    state[_SHOWN_UPLOADS] = current + earlier
    return current + earlier, earlier


def forget_earlier_uploads() -> None:
    st.session_state[_EARLIER_UPLOADS] = []


_CHOICES = "_kept_choices"


def restore_choices(key: str, options: list) -> None:
    """Give a multiselect back the choices it had when the page last showed it (call before the widget).

    Streamlit drops a widget's value on a run that does not draw it: a visit to another page, or a
    run stopped early (the active model briefly unusable). As for the uploads, the choices are kept
    in a plain session key (keep_choices), and those still offered come back."""
    kept = st.session_state.get(_CHOICES, {})
    if key not in st.session_state and key in kept:
        st.session_state[key] = [choice for choice in kept[key] if choice in options]


def keep_choices(key: str) -> None:
    """Remember a multiselect's choices for restore_choices (call after the widget)."""
    st.session_state.setdefault(_CHOICES, {})[key] = list(st.session_state.get(key) or [])
