"""Sign-in sessions that survive a page reload: a signed, expiring token bound to a database row.

The browser keeps a cookie holding a token; the token carries only a random session id (`jti`)
and its expiry (`exp`), signed with HMAC-SHA256. Everything else comes from the database at every
use: the `sessions` row (who, created, last seen, revoked) and the account's `users` row (still
active, its role). So:

- a pathologist's cookie never opens an admin page: the role is the account's, read from the
  database, never from the token (a token with extra claims gains nothing);
- sign-out revokes the row, and disabling an account or setting a new password revokes all of that
  account's rows (`revoke_all`, called by core.store.accounts in the same transaction): a copied
  cookie is refused afterwards although it is still validly signed;
- idle expiry is the app's rule (BREAKHIS_SESSION_MINUTES) checked against the row's `last_seen`,
  and a token never lives longer than MAX_HOURS whatever the activity.

The row's key is the SHA-256 of the session id, not the id: a copy of the database cannot be turned
into a cookie for an existing session, even together with the signing key.

Why PyJWT: a maintained, widely reviewed, pure-Python implementation of a standard token format
(RFC 7519); decoding pins the algorithm (no "none", no algorithm confusion) and requires the
claims we rely on. itsdangerous would sign as well, but its expiry is a timestamp the caller must
remember to check (`max_age` at load time), while a JWT carries its `exp` and is a format an
auditor or a reverse proxy already knows.

The signing key: BREAKHIS_SESSION_KEY (at least 32 characters) if set, else the file
BREAKHIS_DATA_DIR/session.key, 32 random bytes written on first start with mode 0600. By default
that file is data/session.key inside the checkout (git-ignored), next to the database: a copy or
backup of the data folder carries both. In production, set BREAKHIS_SESSION_KEY from the
deployment's secret store, so that the key lives apart from the database and its backups. The key
is never committed, never logged, and neither is a token; replacing the key signs everyone out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import os
import re
import secrets
import tempfile
import time
from pathlib import Path

import jwt
from sqlalchemy import select, update

from core.paths import data_dir
from core.store.audit import Store
from core.store.db import private_folder
from core.store.models import User, WebSession, utc_now

MAX_HOURS = 12  # a token and its cookie last one working day at most, however active the user is
TOUCH_SECONDS = 30  # `last_seen` is written at most this often (idle expiry is checked to that precision)
KEY_FILE, KEY_ENV, MIN_KEY_CHARS = "session.key", "BREAKHIS_SESSION_KEY", 32
KEY_WAIT_SECONDS = 2.0  # a key file shorter than a key is re-read this long before it is called damaged
ALGORITHM = "HS256"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")  # a compact JWT, nothing else
MAX_TOKEN_CHARS = 512


class SessionKeyError(RuntimeError):
    """The signing key cannot be read or created (the message says where; it never holds the key)."""


@dataclasses.dataclass(frozen=True)
class Check:
    """The outcome of checking a token or a session: `user` {"name", "role"} when it holds, else
    None and `reason` says why (tampered, other key, expired, unknown, revoked, idle, disabled)."""

    user: dict | None
    reason: str
    session: str | None = None  # the row's key (a digest, safe to keep in server memory)
    name: str | None = None  # the account the row belongs to, when known (for the audit row)


def signing_key(folder: Path | None = None) -> bytes:
    """BREAKHIS_SESSION_KEY, else the data folder's key file (created with mode 0600 if absent)."""
    named = os.environ.get(KEY_ENV, "")
    if named:
        if len(named) < MIN_KEY_CHARS:
            raise SessionKeyError(f"{KEY_ENV} must have at least {MIN_KEY_CHARS} characters")
        return named.encode("utf-8")
    path = Path(folder or data_dir()) / KEY_FILE
    try:
        private_folder(path.parent)
        if not path.exists():
            _create_key_file(path)
        if not path.is_file():  # checked before the chmod: a folder or device there is not ours to change
            raise SessionKeyError(f"the session key file {path} is not a file: move it away to make a new key")
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # a copy restored with looser permissions is tightened
        key = _read_key(path)
    except OSError as problem:
        raise SessionKeyError(f"the session key file {path} cannot be used: {problem.strerror}") from None
    except UnicodeDecodeError:  # binary bytes (a damaged or overwritten file): never a key this code wrote
        raise SessionKeyError(f"the session key file {path} is damaged (not text): remove it to make a new one "
                              "(everyone is signed out)") from None
    if len(key) < MIN_KEY_CHARS:
        raise SessionKeyError(f"the session key file {path} is damaged (too short): remove it to make a new one")
    return key.encode("utf-8")


def _create_key_file(path: Path) -> None:
    """A new key, written and synced aside (mkstemp: mode 0600), then hard-linked into place: the
    file appears whole or not at all, and of processes starting together the first link wins and
    every one of them reads that key. Where hard links are not supported, it is created in place
    (O_EXCL) and a reader beside it waits for the write (_read_key)."""
    key = secrets.token_hex(32)
    handle, temporary = tempfile.mkstemp(prefix=f".{KEY_FILE}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(key)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process was first: its key is the one
        except OSError:  # no hard links on this file system
            with contextlib.suppress(FileExistsError), \
                    os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
                file.write(key)
    finally:
        os.unlink(temporary)


def _read_key(path: Path) -> str:
    """The key file's text; one shorter than a key is read again for up to KEY_WAIT_SECONDS, as
    another process (or an older version of this code) may be writing it."""
    deadline = time.monotonic() + KEY_WAIT_SECONDS
    while len(key := path.read_text().strip()) < MIN_KEY_CHARS and time.monotonic() < deadline:
        time.sleep(0.05)
    return key


def digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def key_id(key: bytes) -> str:
    """A short fingerprint of a signing key for the token's `kid` header (RFC 7515): a cookie signed
    by a replaced key is told from an altered one. A SHA-256 prefix of a 256-bit random key tells
    nothing about the key."""
    return hashlib.sha256(b"breakhis session key id:" + key).hexdigest()[:16]


def make_token(key: bytes, session_id: str, expires: datetime.datetime) -> str:
    return jwt.encode({"jti": session_id, "exp": int(expires.timestamp())}, key, algorithm=ALGORITHM,
                      headers={"kid": key_id(key)})


def read_token(token: str, key: bytes, now: datetime.datetime | None = None) -> tuple[str | None, str]:
    """(session id, "ok") for a well-signed, unexpired token; (session id, "expired") for a
    well-signed, expired one (its row is revoked and its account named in the audit row); (None,
    "other key") for one whose header names another signing key (the key was replaced, or the
    header was forged: refused either way); else (None, "tampered")."""
    now = now or utc_now()
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not _TOKEN.match(token):
        return None, "tampered"
    try:  # exp is compared below with `now` (so that tests can move the clock); its presence is required here
        claims = jwt.decode(token, key, algorithms=[ALGORITHM],
                            options={"require": ["exp", "jti"], "verify_exp": False})
    except jwt.InvalidTokenError:
        return None, "other key" if _names_another_key(token, key) else "tampered"
    if not isinstance(claims["jti"], str) or not isinstance(claims["exp"], int | float):
        return None, "tampered"
    if claims["exp"] <= now.timestamp():
        return claims["jti"], "expired"
    return claims["jti"], "ok"


def _names_another_key(token: str, key: bytes) -> bool:
    try:
        named = jwt.get_unverified_header(token).get("kid")
    except jwt.InvalidTokenError:
        return False
    return isinstance(named, str) and named != key_id(key)


def start(store: Store, name: str, key: bytes, now: datetime.datetime | None = None) -> tuple[str, str]:
    """A new session row for account `name`: (its key, the token for the cookie). The token is
    returned to be written once into the browser; it is never stored or logged."""
    now = now or utc_now()
    session_id = secrets.token_urlsafe(32)
    expires = now + datetime.timedelta(hours=MAX_HOURS)
    with store.transaction("The session could not be started") as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise ValueError(f"no account named {name!r}")
        session.add(WebSession(id=digest(session_id), user_id=user.id, created_at=now, last_seen=now,
                               expires_at=expires))
    return digest(session_id), make_token(key, session_id, expires)


def check(store: Store, session_key: str, idle_minutes: float, now: datetime.datetime | None = None) -> Check:
    """Whether the session still holds, with the account's current name and role; notes the use.

    Refused (and revoked from then on, so that a later check says "revoked"): idle for longer than
    `idle_minutes`, past its expiry, or its account disabled."""
    now = now or utc_now()
    with store.transaction("The session could not be checked") as session:
        row = session.get(WebSession, session_key, with_for_update=True)
        if row is None:
            return Check(None, "unknown")
        user = session.get(User, row.user_id)
        name = user.name if user is not None else None
        if row.revoked_at is not None:
            return Check(None, "revoked", session_key, name)
        reason = ("disabled" if user is None or not user.active else
                  "expired" if row.expires_at <= now else
                  "idle" if now - row.last_seen > datetime.timedelta(minutes=idle_minutes) else "ok")
        if reason != "ok":
            row.revoked_at, row.revoked_reason = now, reason
            return Check(None, reason, session_key, name)
        if now - row.last_seen >= datetime.timedelta(seconds=TOUCH_SECONDS):
            row.last_seen = now
        return Check({"name": user.name, "role": user.role}, "ok", session_key, name)


def resume(store: Store, token: str, key: bytes, idle_minutes: float, now: datetime.datetime | None = None) -> Check:
    """Sign in from a cookie's token after a reload. Audited: "session_resumed", or a
    "sign_in_failed" row saying why the cookie was refused (never the token itself)."""
    now = now or utc_now()
    session_id, reason = read_token(token, key, now)
    checked = check(store, digest(session_id), idle_minutes, now) if session_id else Check(None, reason)
    if reason == "expired" and checked.reason in ("ok", "idle"):  # the token's exp is the row's, cut to the second
        revoke(store, checked.session, reason, now)
        checked = Check(None, reason, checked.session, checked.name)
    if checked.user is not None:
        store.record("session_resumed", checked.user["name"], details={"method": "session cookie"})
    else:
        store.record("sign_in_failed", checked.name or "unknown",
                     details={"method": "session cookie", "reason": checked.reason})
    return checked


def revoke(store: Store, session_key: str, reason: str, now: datetime.datetime | None = None) -> bool:
    """Revoke one session (sign-out); whether it was still live."""
    return _update_live(store, session_key, "The session could not be ended",
                        revoked_at=now or utc_now(), revoked_reason=reason[:40])


def touch(store: Store, session_key: str, now: datetime.datetime | None = None) -> bool:
    """Mark a live session used now, whatever TOUCH_SECONDS: the end of a long run a person caused (a slide),
    whose start was the last use `check` saw (core.app.signin.person_run_end); whether it was still live."""
    return _update_live(store, session_key, "The session could not be marked used", last_seen=now or utc_now())


def _update_live(store: Store, session_key: str, failure: str, **values) -> bool:
    with store.transaction(failure) as session:
        done = session.execute(update(WebSession).where(WebSession.id == session_key, WebSession.revoked_at.is_(None))
                               .values(**values))
        return bool(done.rowcount)


def revoke_all(session, user_id: int, reason: str, now: datetime.datetime | None = None) -> int:
    """Revoke every live session of an account inside the caller's transaction; how many."""
    done = session.execute(update(WebSession).where(WebSession.user_id == user_id, WebSession.revoked_at.is_(None))
                           .values(revoked_at=now or utc_now(), revoked_reason=reason[:40]))
    return done.rowcount or 0


def live_sessions(store: Store, name: str) -> int:
    """How many unrevoked sessions an account has (for `users list` and the tests)."""
    with store.reading("The sessions could not be read") as session:
        return len(session.scalars(select(WebSession.id).join(User, User.id == WebSession.user_id)
                                   .where(User.name == name, WebSession.revoked_at.is_(None))).all())
