"""Streamlit glue for what a signed-in user does: the permission checks, the audit rows of what a page
shows, the review form, the idle watch; and `plain`, for text the app did not write.

Split from core.app.session (which re-exports these names for the pages); the logic they wrap lives
in core.store (accounts, sessions, audit, reviews) and core.app.records.
"""

from __future__ import annotations

import hashlib
import logging
import re

import streamlit as st

from core.app.signin import current_user, nothing_lost, session_minutes, store
from core.model.predict import Predictor
from core.store.db import StoreError
from core.store.roles import can

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- text from users

_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character


def plain(text) -> str:
    """`text` the app did not write (a file name, a comment, an account name, a message quoting a file
    name) escaped for the Markdown of st.markdown, st.caption, st.error...: shown as typed. Streamlit
    (1.67) has no helper, and its Markdown makes `![x](http://host/p.png)` an image every viewer's browser
    fetches, `[sign in](http://host)` or a bare address a link, `:red[...]` colour, `$...$` a formula.
    CommonMark lets a backslash escape any ASCII punctuation, which disarms them all; a line break
    becomes a space (no new block)."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(str(text).splitlines()))


def model_identity(predictor: Predictor) -> tuple[str, str]:
    """(model folder, card sha256): stable across reloads, unlike id(), which Python reuses."""
    folder = str(predictor.folder.resolve()) if predictor.folder else f"in-memory model {id(predictor)}"
    return folder, str(predictor.card.get("sha256", ""))


# ---------------------------------------------------------------- sign-in, roles and the audit trail
# Sign-in's glue is core.app.signin (the pages call it through these names); the logic lives in
# core.store (accounts, sessions, audit, reviews) and core.app.records; this is the audit glue.


def audit_diagnosis(predictor: Predictor, results: list, items: list[tuple[str, bytes]], settings: dict) -> dict:
    """Record what the page shows and keep the images when the deployment enables it;
    {records.audit_key(result): audit id}.

    A result's audit identity is its image, the model and the settings that change what its row records
    (records.diagnosis_settings): each is recorded once in a session, so a display change (the heat-map
    method), a page visit, or settings changed and changed back add no row, and a new image in the upload
    adds its own row only. A diagnosis the audit trail cannot take (a busy or damaged database) is not
    shown: a message, and the page stops with its images and settings kept, so trying again records it.
    Keeping the images is separate: the rows are marked written first (never written twice), and images
    that cannot be kept are a warning on a diagnosis that is shown, tried again on the next run."""
    from core.app import records

    recorded = st.session_state.setdefault("_audited", {})  # {(model, audit key, settings): audit id}
    identity = lambda r: (model_identity(predictor), records.audit_key(r), _frozen(settings))  # noqa: E731
    new = [r for r in results if r.ok and identity(r) not in recorded]
    if new:
        user = _acting_user()
        try:
            ids = records.record_diagnosis(store(), user["name"], new, predictor, settings)
        except StoreError as problem:
            st.error(nothing_lost(f"{problem} The diagnosis is shown once it is recorded."),
                     icon=":material/database:")
            st.stop()
        recorded.update({identity(r): ids[records.audit_key(r)] for r in new})
    kept = st.session_state.setdefault("_kept_images", set())  # SHA-256 of the images kept in this session
    waiting = [r for r in results if r.ok and r.sha256 not in kept]
    if waiting and _keep_images(waiting, items):
        kept.update(r.sha256 for r in waiting)
    return {records.audit_key(r): recorded[identity(r)] for r in results if r.ok}


def _frozen(value):
    """A settings dict (nested dicts included) as a hashable, order-free key."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return tuple(map(_frozen, value)) if isinstance(value, list) else value


def _keep_images(results: list, items: list[tuple[str, bytes]]) -> bool:
    """Keep the analysed images when the deployment enables it (BREAKHIS_KEEP_IMAGES); whether nothing is
    left to keep. A folder that cannot be written is a warning: the diagnosis stands without them."""
    from core.store.images import ImageStore, keeping_images

    if not keeping_images():
        return True
    kept, analysed = ImageStore(), {r.sha256 for r in results if r.ok}
    try:
        for _, data in items:
            if hashlib.sha256(data).hexdigest() in analysed:
                kept.put(data)
    except (OSError, StoreError) as problem:
        # The setting and the folder are the server's: named to administrators only (as app.py's model settings).
        fix = ("The data folder's images/ must be a writable folder (BREAKHIS_KEEP_IMAGES is on)."
               if can((current_user() or {}).get("role"), "activate_model") else
               "Tell an administrator: the server's folder for kept images cannot be written.")
        st.warning(f"The images could not be kept for the Review queue ({plain(problem)}). The diagnosis is "
                   f"recorded and shown; its audit rows have each image's SHA-256. {fix}", icon=":material/hide_image:")
        return False
    return True


def audit_slide(predictor: Predictor, name: str, sha256: str, summary: dict, settings: dict) -> int:
    """Record a slide (or tiled upload) run once per model, file and settings; its audit id."""
    from core.app import records

    key = ("_audited_slide", model_identity(predictor), name, sha256, tuple(sorted(settings.items())))
    if key not in st.session_state:
        user = _acting_user()
        try:
            st.session_state[key] = records.record_slide(store(), user["name"], name, sha256, predictor, summary,
                                                         settings)
        except StoreError as problem:  # as a diagnosis: not shown before it is recorded
            st.error(nothing_lost(f"{problem} The result is shown once it is recorded."), icon=":material/database:")
            st.stop()
    return st.session_state[key]


def review_form(audit_id: int | None, key: str, image_shown: bool = True, seen: int | None = None,
                row: dict | None = None) -> None:
    """Agree or correct one result (a new audit row referring to it), with a comment: the form of
    each Diagnose result and of each Review queue entry. Without the image on screen (`image_shown`
    False: a queue card when images are not kept) the reviewer must tick that they reviewed the
    original image or glass (core.store.reviews.submit). `seen`: the result's newest review on show
    (None: none), so a review another user saved since is named when this one is saved. `row`: the
    result's audit row (read here when not given): the form says what "agree" confirms of it.

    Save runs as the button's callback, before the page: a card that has left the list by then (a
    newer referred result came first, another reviewer saved first) is saved or refused all the same,
    and what happened is said here or, for a card no longer shown, by show_review_notes."""
    from core.data.labels import CLASSES, SUBTYPES, pretty
    from core.store import reviews

    if audit_id is None:
        return
    row = row or _result_row(audit_id)
    settled = row is None or reviews.subtype_reliable(row)  # else "agree" leaves the subtype not assessed
    unchanged = lambda c: pretty(c) if c else "(unchanged)"  # noqa: E731
    with st.expander(f"Review (audit #{audit_id})"), st.form(f"review_{key}"):
        st.radio("Verdict", ["agree", "correct"], horizontal=True, key=f"verdict_{key}")
        if row is not None:
            st.caption(agree_meaning(row))
        st.selectbox("Class", [None, *CLASSES], format_func=unchanged, key=f"label_{key}")
        st.selectbox("Subtype", [None, *SUBTYPES], key=f"subtype_{key}",
                     format_func=unchanged if settled else lambda c: pretty(c) if c else "(not assessed)")
        st.text_input("Comment", key=f"comment_{key}")
        if not image_shown:
            st.checkbox(reviews.ORIGINAL_REVIEWED, key=f"original_{key}",
                        help="The image is not shown here: the review is of the original.")
        st.form_submit_button("Save review", on_click=_save_review, args=(audit_id, key, image_shown, seen))
        note = st.session_state.get(_REVIEW_NOTES, {}).pop(key, None)
        if note:
            getattr(st, note[0])(note[1])


def agree_meaning(row: dict) -> str:
    """What "agree" records for the result row `row` (core.store.reviews._verdict): its call, and its
    subtype only where the app shows that as a finding (reviews.subtype_reliable)."""
    from core.data.labels import pretty
    from core.evaluation.subtype_trust import SUBTYPE_NOT_RELIABLE
    from core.store import reviews

    called, subtype = reviews.model_call(row)
    if called is None:
        return "The model made no call here: choose 'correct' and the class (and subtype) it should be."
    if reviews.subtype_reliable(row):
        return f"'agree' confirms the model's call: {pretty(called)}, {pretty(subtype)}."
    why = ("a slide call has no subtype" if row["kind"] == "slide" else
           f"the model's subtype ({pretty(subtype)}) is {SUBTYPE_NOT_RELIABLE}" if row["details"].get("subtype_reliable")
           is False else "this older result does not record whether its subtype is reliable")
    other = f" ('correct' for another than {pretty(subtype)})" if subtype else ""
    return (f"'agree' confirms the class only ({pretty(called)}): {why}, so the subtype is recorded as not assessed "
            f"unless you choose one under Subtype{other}.")


def _result_row(audit_id: int) -> dict | None:
    """The result row a form reviews, read once per session (audit rows never change); None if the
    database cannot say now (the form is shown without the note)."""
    rows = st.session_state.setdefault("_result_rows", {})
    if audit_id not in rows:
        try:
            rows[audit_id] = store().event(audit_id)
        except StoreError:
            return None
    return rows[audit_id]


_REVIEW_NOTES = "_review_notes"  # {form key: (level, message)} of saves not yet shown


def _save_review(audit_id: int, key: str, image_shown: bool, seen: int | None) -> None:
    """The Save button's callback: save (or refuse) what the form held, and leave a note of it. An
    ended session saves nothing: the run that follows shows the sign-in page."""
    from core.store import reviews

    user = permitted("review", fresh=True)  # re-read now: nothing is saved for an ended session
    if user is None:
        return
    state = st.session_state
    try:
        saved = reviews.submit(store(), user["name"], audit_id, state[f"verdict_{key}"], state[f"label_{key}"],
                               state[f"subtype_{key}"], state[f"comment_{key}"], image_shown=image_shown,
                               original_reviewed=state.get(f"original_{key}", False))
        others = reviews.reviewed_meanwhile(store(), audit_id, user["name"], seen, saved)
    except StoreError as problem:  # the form keeps what was typed
        note = ("error", nothing_lost(f"{problem} The review of result #{audit_id} was not saved."))
    except ValueError as problem:
        note = ("error", f"Result #{audit_id}: {problem}")
    else:
        note = ("success", f"Review saved (audit #{saved}) for result #{audit_id}.")
        if others:
            said = "; ".join(f"by {plain(r['user'])} at {r['at']:%Y-%m-%d %H:%M} UTC ({reviews.verdict_text(r)})"
                             for r in others)
            disagree = reviews.discordant(reviews.reviews_of(store(), [audit_id]).get(audit_id, []))
            note = ("warning", f"Result #{audit_id} was reviewed meanwhile {said}. Your review was saved as a second "
                               f"opinion (audit #{saved}); both stay in its history."
                               + (" The reviews disagree: the queue marks the result discordant." if disagree else ""))
    state.setdefault(_REVIEW_NOTES, {})[key] = note


def show_review_notes(where, prefix: str) -> None:
    """Show (once) what happened to the saves of the forms whose key starts with `prefix`, in `where`
    (a container): the Review queue calls it for the cards that have left its list."""
    notes = st.session_state.get(_REVIEW_NOTES, {})
    for key in [k for k in notes if k.startswith(prefix)]:
        level, message = notes.pop(key)
        getattr(where, level)(message)  # st.success, st.warning or st.error


def permitted(action: str, fresh: bool = False, polled: bool = False) -> dict | None:
    """The signed-in user if their role may still do `action`, else None, without a message.

    For a fragment (st.fragment): its reruns skip app.py's current_user() and the page's require(),
    so it checks here and, on None, reruns the whole app (which then shows the sign-in page, or
    leaves out the page the role lost). fresh=True re-reads the session row now (before acting);
    polled=True for a timed rerun, which does not keep the session from idling out."""
    user = current_user(fresh=fresh, polled=polled)
    return user if user is not None and can(user["role"], action) else None


IDLE_POLL_SECONDS = 60  # an unattended tab clears itself at most this long after its idle limit


def watch_session() -> None:
    """Clear an unattended tab (app.py, signed in): a timed fragment re-checks the session every minute
    (a short BREAKHIS_SESSION_MINUTES more often) and, once it has ended (idle, revoked), reruns the whole
    app: the sign-in page, and Streamlit drops the page's images and their /media URLs. The check is
    polled, as Retrain's live view's: the timer is nobody's activity and never keeps a tab signed in."""
    every = min(IDLE_POLL_SECONDS, max(1.0, session_minutes() * 60 / 4))
    st.session_state[_DRAWN_FOR] = (current_user() or {}).get("role")  # the role this run drew its pages for
    st.fragment(leave_when_signed_out, run_every=every)()


_DRAWN_FOR = "_pages_drawn_for_role"
_JOB_END_CHECKED = "_job_end_checked"


def record_ended_job() -> None:
    """Once per browser session (app.py, signed in): a training job that ended while no server watched it
    (the server restarted during it) gets its "retrain_finished" row, as its launcher's (core.app.job_end.record_end,
    which the server's own watch and the Retrain page call too: one row between them), whether or not an
    administrator opens Retrain. A failure is logged: this is no one's request, and Retrain tries again."""
    if st.session_state.get(_JOB_END_CHECKED):
        return
    st.session_state[_JOB_END_CHECKED] = True
    from core.app import job_end, jobs

    try:
        job = jobs.read_job()
        if job is not None:
            job_end.record_end(store(), job)
    except Exception as problem:  # noqa: BLE001 - a busy database, an unwritable runs folder: logged, retried later
        log.warning("the end of the last training job could not be recorded now: %s", problem)


def leave_when_signed_out() -> None:
    """The timer's run: rerun the whole app once this session has ended (idle, revoked, signed out), or
    once its role is no longer the one the pages were drawn for: an administrator demoted while the
    Audit log is open loses it within the minute, not at the next click."""
    user = current_user(polled=True)
    if user is None or user["role"] != st.session_state.get(_DRAWN_FOR, user["role"]):
        st.rerun(scope="app")


def audit(kind: str, subject: str | None = None, once: bool = False, **details) -> int | None:
    """Record one event by the signed-in user (e.g. retraining launched). once=True: not when a row
    of this kind and subject already exists (a finished run seen again by a later page run). A busy or
    damaged database is a message and None: what the user did (e.g. a launched training) has happened,
    and the page goes on; a once=True row is tried again on the next run."""
    try:
        if once and any(e["subject"] == subject for e in store().events(kinds=kind, limit=200)):
            return None
        return store().record(kind, _acting_user()["name"], subject, details=details)
    except StoreError as problem:
        st.error(f"{problem} ({kind.replace('_', ' ')}: {plain(subject)})", icon=":material/database:")
        return None


def _acting_user() -> dict:
    """The user an audit row names; a session that ended during this run records nothing (no "unknown"
    row for a real user's action): the app reruns and shows the sign-in page."""
    user = current_user()
    if user is None:
        st.rerun()
    return user
