"""Streamlit glue of sign-in: the store, the signed-in user, sign-out, roles, the sign-in page, and
the session cookie that lets a reload keep the user signed in.

The logic lives in core.store (accounts, sessions, audit) and core.app.cookies; this module only
connects it to a Streamlit session. core.app.session re-exports these names for the pages.

A sign-in (password or single sign-on) starts a database session row and writes its signed token
into a cookie (sync_cookie, called by app.py on every run). A reload opens a new Streamlit session
with empty memory: current_user() then reads the cookie (st.context.cookies) and resumes the row
if it still holds. Every run checks the row again (at most every CHECK_SECONDS): a session revoked
elsewhere (sign-out in another tab, an account disabled, a new password) or idle for longer than
BREAKHIS_SESSION_MINUTES signs this one out too. The role is the account's current role, read from
the database at each check, never from the cookie.
"""

from __future__ import annotations

import logging
import os
import time

import streamlit as st

from core.app import cookies
from core.paths import switch_setting
from core.store.audit import SINGLE_USER

log = logging.getLogger(__name__)

USER_KEY = "_signed_in"
SESSION_KEY, CHECKED_KEY = "_session_row", "_session_checked"  # the row's key (a digest), monotonic time
COOKIE_TODO, SPENT_COOKIE = "_cookie_to_write", "_cookie_spent"  # a token to write ("" removes), a refused one
CHECK_SECONDS = 5  # how often a run re-reads the session row (revocation takes effect within this)
SSO_REFUSED = "_sso_refused"  # {"email", "reason"}: this session's identity opens no account (sign_in_page says why)
ACTIVE_KEY = "_last_active"  # monotonic time of this tab's last run a person caused (not a live view's timer)
RUN_END_KEY = "_last_run_end"  # [monotonic time] that run ended (app.py fills it: person_run_end)
LONG_RUN_SECONDS = 1.0  # a run at least this long marks the session row used at its end too (person_run_end)
COOKIE_REFUSED = "_cookie_refused"  # why the session cookie this tab was opened with was refused (sign_in_page)


@st.cache_resource(show_spinner=False)
def _open_store(url: str):
    from core.store.audit import Store

    return Store.open(url)  # migrates on the first start; one engine for every session


def store():
    """The deployment's store, or a clear message and a stopped page (damaged, read-only, newer, or its file
    deleted, moved or replaced since it was opened: the page's inputs stay in the session)."""
    from core.store.db import StoreError, database_url, still_at_its_path

    try:
        opened = _open_store(database_url())
        still_at_its_path(opened.engine)  # one os.stat; the cached engine would write into the file it holds
        return opened
    except StoreError as problem:
        st.error(f"The app's database cannot be used: {problem}", icon=":material/database:")
        st.stop()


@st.cache_resource(show_spinner=False)
def _signing_key(folder: str) -> bytes:
    from core.store.sessions import signing_key

    return signing_key(folder)


def session_key() -> bytes:
    """The key that signs session cookies (core.store.sessions.signing_key), or a message and a stop."""
    from core.paths import data_dir
    from core.store.sessions import SessionKeyError

    try:
        return _signing_key(str(data_dir()))
    except SessionKeyError as problem:
        st.error(f"Sign-in cannot start: {problem}", icon=":material/key:")
        st.stop()


def single_user_mode() -> bool:
    """BREAKHIS_SINGLE_USER=1: one local user, no sign-in (a workstation), shown as a banner."""
    return switch_setting("BREAKHIS_SINGLE_USER")


def provider_verifies_email() -> bool:
    """BREAKHIS_SSO_VERIFIED_EMAILS=1: the deployment's identity provider issues only addresses its
    organisation controls and leaves the email_verified claim out (Microsoft Entra ID, for one); its
    e-mails then count as verified. Off by default: a provider that lets users choose their e-mail
    would hand out accounts."""
    return switch_setting("BREAKHIS_SSO_VERIFIED_EMAILS")


def session_minutes() -> float:
    """Idle minutes before a session must sign in again: BREAKHIS_SESSION_MINUTES (default 30)."""
    return float(os.environ.get("BREAKHIS_SESSION_MINUTES") or 30)


def sso_configured() -> bool:
    """Whether the deployment's secrets configure Streamlit's OpenID Connect sign-in ([auth])."""
    try:
        return "auth" in st.secrets and bool(st.secrets["auth"].get("cookie_secret"))
    except Exception:  # noqa: BLE001 - no secrets file at all: no single sign-on
        return False


def _signed_in(user: dict) -> None:
    """A fresh sign-in: a new session row, and its token for the browser's cookie (sync_cookie)."""
    from core.store.sessions import start

    row, token = start(store(), user["name"], session_key())
    st.session_state.pop(COOKIE_REFUSED, None)
    st.session_state.update({USER_KEY: user, SESSION_KEY: row, CHECKED_KEY: time.monotonic(), COOKIE_TODO: token})


def _browser_token() -> str | None:
    """The session cookie the browser sent when it opened this page (None outside a browser)."""
    token = st.context.cookies.get(cookies.COOKIE)
    return token if isinstance(token, str) and token else None


def _resume_from_cookie() -> dict | None:
    """After a reload: the user of a cookie whose session still holds (audited either way)."""
    from core.store.sessions import digest, resume

    token = _browser_token()
    if token is None or st.session_state.get(SPENT_COOKIE) == digest(token):
        return None
    checked = resume(store(), token, session_key(), session_minutes())
    if checked.user is None:  # the browser forgets it; the sign-in page says why
        st.session_state.update({SPENT_COOKIE: digest(token), COOKIE_TODO: "", COOKIE_REFUSED: checked.reason})
        return None
    st.session_state.update({USER_KEY: checked.user, SESSION_KEY: checked.session, CHECKED_KEY: time.monotonic()})
    return checked.user


def current_user(fresh: bool = False, polled: bool = False) -> dict | None:
    """_current_user; a busy or unreachable database stops the page with a message (never a
    traceback) and keeps the session as it was, so the next run checks again: a session that
    cannot be checked is not honoured, and not ended either."""
    from core.store.db import StoreError

    try:
        return _current_user(fresh, polled)
    except StoreError as problem:
        st.error(nothing_lost(problem), icon=":material/database:")
        st.stop()


def nothing_lost(problem) -> str:
    """A busy, unreachable or damaged database's message (a StoreError's) for a page that keeps serving:
    what the page had stays in this session, so trying again is all the user has to do."""
    return f"{problem} Nothing was lost: reload the page or try again."


def person_run_end():
    """For app.py: a function to call when this run a person caused has ended, page and all. The idle time
    counts from then, not from the run's start: a long run (a slide analysed for minutes) no longer eats
    into the time its results stay on screen before the timer clears them. A run of LONG_RUN_SECONDS or
    more also marks the session row used at its end (the row's own idle check saw only its start);
    shorter ones cost nothing. Not covered: one run longer than the whole limit is signed out at its
    next check within the run (a limit shorter than a page's run: minutes are the deployment's unit).
    Once a page has called st.stop or st.rerun, Streamlit refuses every st.session_state access until
    the run ends, so what the end needs is taken now: a box to fill, the session row and the store."""
    box = st.session_state.setdefault(RUN_END_KEY, [float("-inf")])
    row = st.session_state.get(SESSION_KEY) if st.session_state.get(USER_KEY) is not None else None
    started, database = time.monotonic(), store() if row else None

    def ended() -> None:
        box[0] = time.monotonic()
        if row and box[0] - started >= LONG_RUN_SECONDS:
            from core.store.db import StoreError
            from core.store.sessions import touch

            try:
                touch(database, row)
            except StoreError as problem:  # the tab's own clock still counts from now; the row, from the start
                log.warning("the end of a long run could not be recorded on its session: %s", problem)

    return ended


def _current_user(fresh: bool = False, polled: bool = False) -> dict | None:
    """The signed-in user {"name", "role"} (or the local user in single-user mode), else None.

    A session idle for longer than session_minutes(), or revoked, is signed out (audited). The row
    is re-read at most every CHECK_SECONDS; fresh=True re-reads it now (before an action that
    must not outlive a revocation, e.g. a fragment's button). polled=True: a live view's timed rerun,
    which is no one's activity: reading the row marks it used, so this tab's idle time is counted
    from its last other run instead."""
    if single_user_mode():
        return {"name": SINGLE_USER, "role": "admin"}
    user = st.session_state.get(USER_KEY)
    if user is None:
        user = _resume_from_cookie()
    if user is None and sso_configured() and st.user.is_logged_in:
        user = _sso_user()
    if user is None:
        return None
    now = time.monotonic()
    active = max(st.session_state.get(ACTIVE_KEY, now), st.session_state.get(RUN_END_KEY, [float("-inf")])[0])
    if polled and now - active > session_minutes() * 60:
        sign_out(reason="session expired")
        return None
    if not polled:
        st.session_state[ACTIVE_KEY] = now
    if fresh or now - st.session_state.get(CHECKED_KEY, float("-inf")) >= CHECK_SECONDS:
        from core.store.sessions import check

        checked = check(store(), st.session_state.get(SESSION_KEY) or "", session_minutes())
        if checked.user is None:
            sign_out(reason="session expired" if checked.reason in ("idle", "expired") else f"session {checked.reason}")
            return None
        user = checked.user  # the account's current role
        st.session_state.update({USER_KEY: user, CHECKED_KEY: time.monotonic()})
    return user


def _sso_user() -> dict | None:
    """The account of the identity provider's user, signed in; else None, with why in
    st.session_state[SSO_REFUSED] for the sign-in page (audited once per identity and session).

    Its e-mail must be verified (the OpenID Connect claim email_verified true: a missing claim is not
    a verification) and name an active account made for single sign-on (accounts.sso_account). An
    identity provider that lets users choose their e-mail would otherwise hand out any account."""
    from core.store.accounts import sso_account

    email = str(st.user.get("email") or "")
    if st.session_state.get(SSO_REFUSED, {}).get("email") == email:
        return None
    verified = st.user.get("email_verified") in (True, "true") or provider_verifies_email()  # some send a string
    user = sso_account(store(), email) if verified and email else None
    if user is None:
        reason = "email not verified" if not verified or not email else "no sso account"
        store().record("sign_in_failed", email[:120] or "unknown", details={"method": "oidc", "reason": reason})
        st.session_state[SSO_REFUSED] = {"email": email, "reason": reason}
        return None
    store().record("sign_in", user["name"], details={"method": "oidc"})
    _signed_in(user)
    return user


def _sso_refusal() -> None:
    """Why the identity provider's user was not signed in, and a way out of that login (st.logout),
    so that another identity or the password form can be used."""
    refused = st.session_state[SSO_REFUSED]
    email = refused["email"].replace("`", "") or "(none)"  # shown as code: the claim is not markdown
    if refused["reason"] == "email not verified":
        st.error(f"Your organisation's sign-in did not confirm the e-mail address `{email}` as verified (the "
                 "email_verified claim), so it opens no account here. Ask the identity provider's administrator "
                 "to verify it, or sign in with a name and password.", icon=":material/block:")
    else:
        st.error(f"No active single sign-on account here is named `{email}`. Ask an administrator to create one "
                 "(`python -m core users add EMAIL --sso-only`); an account with a password signs in with the "
                 "form below.", icon=":material/block:")
    st.button("Sign out of your organisation's login", on_click=st.logout, key="sso_sign_out")


def sign_out(reason: str = "signed out") -> None:
    """Forget everything of this session, revoke its row and remove the browser's cookie; a single
    sign-on identity is logged out too (st.logout), or current_user() would sign it straight back in."""
    from core.store.sessions import digest, revoke

    user, row = st.session_state.get(USER_KEY), st.session_state.get(SESSION_KEY)
    for key in [k for k in st.session_state if not str(k).startswith("$$")]:
        del st.session_state[key]  # nothing a user saw stays for the next one
    if row:
        revoke(store(), row, reason)
    token = _browser_token()  # the cookie this page was opened with must not sign it in again
    st.session_state.update({COOKIE_TODO: "", **({SPENT_COOKIE: digest(token)} if token else {})})
    if user:
        store().record("sign_out", user["name"], details={"reason": reason})
    if sso_configured() and st.user.is_logged_in:
        st.logout()  # ends the identity provider's login; the browser then opens a new session


def sync_cookie() -> None:
    """Write (after a sign-in) or remove (after a sign-out or a refused cookie) the browser's
    session cookie; app.py calls this on every run, right after current_user()."""
    if COOKIE_TODO in st.session_state:
        from core.store.sessions import MAX_HOURS

        token = st.session_state.pop(COOKIE_TODO)
        st.html(cookies.cookie_script(token or None, MAX_HOURS * 3600), unsafe_allow_javascript=True)


def require(action: str) -> dict:
    """The signed-in user if their role may do `action`; else a message and a stopped page (a deep
    link to a page the role may not open renders nothing of it)."""
    from core.store.roles import can

    user = current_user()
    if user is None:
        st.warning("Please sign in.")
        st.stop()
    if not can(user["role"], action):
        st.error("Your role cannot open this page. Ask an administrator.", icon=":material/lock:")
        st.stop()
    return user


def sign_in_page() -> None:
    """The only page a signed-out visitor sees: the form, single sign-on, or the first start.

    A busy or unreachable database (StoreError) is a message on the page, and the form stays as
    it was, so the visitor can simply press the button again."""
    from core.store.accounts import SignInError, has_accounts
    from core.store.accounts import sign_in as check
    from core.store.db import StoreError

    st.title("Sign in")
    if COOKIE_REFUSED in st.session_state:
        st.info(not_resumed(st.session_state[COOKIE_REFUSED]), icon=":material/logout:")
    if sso_configured() and st.user.is_logged_in and SSO_REFUSED in st.session_state:
        _sso_refusal()
    elif sso_configured():
        st.button("Sign in with your organisation", on_click=st.login, key="sso_sign_in")
    try:
        first_start = not has_accounts(store()) and not sso_configured()
    except StoreError as problem:
        st.error(str(problem), icon=":material/database:")
        return
    if first_start:
        st.info("First start: no account exists yet. On this machine, create the first administrator with\n\n"
                "    python -m core users add NAME --role admin\n\n(the password is prompted), then reload. "
                "For a single-user workstation, start the app with BREAKHIS_SINGLE_USER=1 instead.")
        return
    with st.form("sign_in"):
        name = st.text_input("Name", key="sign_in_name")
        password = st.text_input("Password", type="password", key="sign_in_password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        try:
            user = check(store(), name.strip(), password, key=session_key())
            _signed_in(user)  # writes the session row: the database may be busy here too
        except SignInError as problem:
            st.error(str(problem), icon=":material/block:")
        except StoreError as problem:
            st.error(str(problem), icon=":material/database:")
        else:
            st.rerun()


NOT_RESUMED = {  # why a session cookie was refused (core.store.sessions.Check.reason), in plain words
    "other key": "its sign-in cookie was signed with another session key: this server's key was replaced (a key "
                 "rotation or a restored server)",
    "tampered": "its sign-in cookie does not pass this server's signature check: it was altered, or signed "
                "with a key since replaced by a version of the app that did not name its key",
    "unknown": "this server's database has no record of it. The database was probably replaced or restored "
               "from an earlier copy",
    "revoked": "it was ended: signed out in another tab, a new password, or an administrator",
    "idle": "it was idle for longer than the deployment's limit (BREAKHIS_SESSION_MINUTES)",
    "expired": "it reached its maximum length, one working day",
    "disabled": "your account is disabled; ask an administrator",
}


def not_resumed(reason: str) -> str:
    """The sign-in page's note when the browser's session cookie was refused: the user is not surprised
    by the form, and knows whether anything but signing in again is needed."""
    why = NOT_RESUMED.get(reason, f"it was refused ({reason})")
    return f"Your previous session could not be resumed: {why}. Please sign in again."
