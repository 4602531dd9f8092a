"""Local accounts: argon2 password hashes, two roles, and a lock after repeated failures.

Why argon2-cffi: it is the maintained binding of the Password Hashing Competition winner, with
parameters that it can raise later (`needs_rehash` upgrades old hashes at the next sign-in).
Every sign-in (success or failure) and every account change is an audit row; no password or
hash is ever logged, shown or put in an audit row. Every refusal (unknown name, wrong password,
locked, disabled, single sign-on only) gives the same message (REFUSED) and costs one password
hash, so neither the answer nor its time tells which names exist, and a disabled account's password
is not confirmed (OWASP Authentication Cheat Sheet); the audit row keeps the real reason for the
administrators.

Names follow core.store.names: stored in NFC and looked up in it (the form typed, then NFC, then
NFD, so a name stored before in another form still signs in); a new name has no invisible or
control character and may not read as an existing one (case, compatibility forms).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import secrets
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update

from core.errors import UserInputError
from core.store import names, sessions
from core.store.audit import Store
from core.store.models import User, utc_now
from core.store.roles import ROLES, can  # noqa: F401 - re-exported: accounts.can(role, action)

MAX_FAILURES, LOCK_SECONDS = 5, 60
REFUSED = (f"Wrong name or password, or the account is locked or disabled. After {MAX_FAILURES} failed sign-ins "
           f"an account is locked for {LOCK_SECONDS} seconds; an administrator can re-enable a disabled one.")
MIN_PASSWORD_LENGTH = 8
SYSTEM = "system"  # the user named in rows nobody signed in for (the CLI on the machine itself)

_hasher = PasswordHasher()


class SignInError(UserInputError):
    """Wrong name or password, a locked or disabled account: the message is safe to show."""


def _check_name(name: str) -> None:
    """A new (NFC) name: 1-120 characters, no outer spaces, nothing invisible, not the system user."""
    if odd := sorted({c for c in name if names.refused(c)}):
        raise UserInputError(f"account name {names.shown(name)} is not allowed: it has invisible, control or "
                             f"separator characters ({', '.join(map(names.described, odd))}); only a plain "
                             "space may separate words")
    if not name or len(name) > 120 or name != name.strip() or names.twin_key(name) == SYSTEM:
        raise UserInputError(f"account name {names.shown(name, quoted=True)} is not allowed (1-120 characters, "
                             f"no outer spaces, not '{SYSTEM}' in any case)")


def _check_new(password: str | None, role: str) -> None:
    if role not in ROLES:
        raise UserInputError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    # Only spaces (or tabs, zero-width characters) counted as 8 characters: no character one can see.
    if password is not None and (len(password) < MIN_PASSWORD_LENGTH
                                 or not any(c.isprintable() and not c.isspace() for c in password)):
        raise UserInputError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters, "
                             "not only spaces or invisible ones")


def has_accounts(store: Store) -> bool:
    with store.reading("The accounts could not be read") as session:
        return bool(session.scalar(select(func.count()).select_from(User)))


def list_accounts(store: Store) -> list[dict]:
    """Accounts without their hashes (for the accounts page and `users list`)."""
    with store.reading("The accounts could not be read") as session:
        return [{"name": u.name, "role": u.role, "active": u.active, "sso_only": u.password_hash is None,
                 "created_at": u.created_at, "last_sign_in": u.last_sign_in, "locked_until": u.locked_until}
                for u in session.scalars(select(User).order_by(User.name))]


def add_account(store: Store, name: str, password: str | None, role: str, by: str = SYSTEM) -> str:
    """Create an account (password None: single sign-on only); its name as stored (NFC). Audited as an
    account change by `by`. A name that reads as an existing one ("Admin" beside "admin") is refused."""
    name = names.normal(name)
    _check_name(name)
    _check_new(password, role)
    with store.transaction("The account could not be created") as session:
        if (twin := names.twin(name, session.scalars(select(User.name)))) is not None:
            raise UserInputError(f"an account named {names.shown(twin, quoted=True)} already exists" + (
                "" if twin == name else f"; {names.shown(name, quoted=True)} would read as the same name"))
        session.add(User(name=name, role=role, active=True, failed_sign_ins=0,
                         password_hash=_hasher.hash(password) if password is not None else None))
    store.record("account", by, name, details={"change": "created", "role": role})
    return name


def change_account(store: Store, name: str, by: str, *, role: str | None = None, active: bool | None = None,
                   password: str | None = None) -> str:
    """Change role, enable/disable, or set a new password (which also lifts a lock); the account's
    stored name. Audited.

    Disabling the account or setting a new password revokes all its sign-in sessions (a browser's
    cookie is refused from then on); a role change needs none: every page run reads the role anew."""
    changes, revoked = {}, 0
    with store.transaction("The account could not be changed") as session:
        user = _find(session, name)
        if user is None:
            raise UserInputError(f"no account named {names.shown(name, quoted=True)}")
        name = user.name
        if role is not None and role != user.role:
            _check_new(None, role)
            changes["role"] = [user.role, role]
            user.role = role
        if active is not None and active != user.active:
            changes["active"] = [user.active, active]
            user.active = active
        if password is not None:
            _check_new(password, user.role)
            user.password_hash, user.failed_sign_ins, user.locked_until = _hasher.hash(password), 0, None
            changes["password"] = "changed"  # never the password or its hash
        if "password" in changes or changes.get("active") == [True, False]:
            why = "password changed" if "password" in changes else "account disabled"
            revoked = sessions.revoke_all(session, user.id, why)
    if changes:
        store.record("account", by, name, details={"change": "updated", **changes})
    if revoked:
        store.record("session_revoked", by, name, details={"reason": why, "sessions": revoked})
    return name


def sign_in(store: Store, name: str, password: str, now: datetime.datetime | None = None, *,
            key: bytes | None = None) -> dict:
    """Check a name and password. Returns {"name", "role"}; raises SignInError(REFUSED) otherwise.

    After MAX_FAILURES wrong passwords in a row the account is locked for LOCK_SECONDS (a correct
    password during the lock is refused too, so guessing gains nothing). A refused unknown name is
    recorded masked (masked_name, with `key`: the app passes its session signing key).
    """
    now = now or utc_now()
    with store.transaction("The sign-in could not be checked") as session:
        user = _find(session, name, lock=True)
        if user is None or user.password_hash is None:
            _verify(_dummy_hash(), password)
            outcome = "unknown account" if user is None else "sso-only account"
        elif _locked(user.locked_until, now):
            _verify(_dummy_hash(), password)  # the same cost as any other answer
            outcome = "locked"
        elif not _verify(user.password_hash, password):
            outcome = _count_failure(session, user.id, now)
        elif not user.active:
            outcome = "disabled"
        else:
            rehash = {"password_hash": _hasher.hash(password)} if _hasher.check_needs_rehash(user.password_hash) else {}
            if _update_unless_locked(session, user.id, now, User.id, failed_sign_ins=0, locked_until=None,
                                     last_sign_in=now, **rehash) is None:  # locked by guesses beside this one
                outcome = "locked"
            else:
                outcome, role = "ok", user.role
        if user is not None:
            name = user.name  # as stored: the form typed may differ (NFD)
    if outcome != "ok":
        store.record("sign_in_failed", masked_name(names.normal(name), key) if outcome == "unknown account" else name,
                     details={"reason": outcome})
        raise SignInError(REFUSED)
    store.record("sign_in", name, details={"method": "password"})
    return {"name": name, "role": role}


def masked_name(name: str, key: bytes | None = None) -> str:
    """How the audit trail names a sign-in attempt for an unknown name: "unknown:" and 10 hex digits
    of its HMAC-SHA256, never the text, which may be a password typed into the Name box (OWASP
    Logging Cheat Sheet). The same text gives the same tag, so repeated tries can be followed; the
    key (without one, a key of this process) keeps the tag from being checked against guesses."""
    tag = hmac.new(key or _process_key(), b"unknown account name\0" + name.encode("utf-8"), hashlib.sha256)
    return f"unknown:{tag.hexdigest()[:10]}"


@functools.cache
def _process_key() -> bytes:
    return secrets.token_bytes(32)


# The failure count and the lock are read and written by UPDATE statements, never as
# `user.failed_sign_ins += 1` in Python: guesses that arrive together (several tabs or a script,
# each Streamlit session in its own thread) would each add 1 to the same old count, and SQLite
# ignores SELECT ... FOR UPDATE, so the lock would never engage. The first UPDATE of a transaction
# holds the row (PostgreSQL) or the database's write lock (SQLite) until it commits.

def _count_failure(session, user_id: int, now: datetime.datetime) -> str:
    """One more wrong password, counted in the database; the MAX_FAILURES-th locks the account."""
    failures = _update_unless_locked(session, user_id, now, User.failed_sign_ins,
                                     failed_sign_ins=User.failed_sign_ins + 1)
    if failures is None:  # locked by the guesses that arrived together with this one
        return "locked"
    if failures < MAX_FAILURES:
        return "wrong password"
    session.execute(update(User).where(User.id == user_id)
                    .values(locked_until=now + datetime.timedelta(seconds=LOCK_SECONDS), failed_sign_ins=0)
                    .execution_options(synchronize_session=False))
    return "wrong password; locked"


def _update_unless_locked(session, user_id: int, now: datetime.datetime, returning, **values):
    """Set `values` on the account unless it is locked at `now`: the `returning` column, or None."""
    not_locked = User.locked_until.is_(None) | (User.locked_until <= now)
    return session.scalar(update(User).where(User.id == user_id, not_locked).values(**values)
                          .returning(returning).execution_options(synchronize_session=False))


def _locked(locked_until: datetime.datetime | None, now: datetime.datetime) -> bool:
    return locked_until is not None and locked_until > now


def sso_account(store: Store, name: str) -> dict | None:
    """The account an identity provider's user (its verified e-mail) opens: an active account made
    for single sign-on (`users add EMAIL --sso-only`, no password), else None. A password account,
    an admin's included, is never reached this way, whatever e-mail an identity claims."""
    with store.reading("The account could not be read") as session:
        user = _find(session, name)
        if user is None or user.password_hash is not None or not user.active:
            return None
        return {"name": user.name, "role": user.role}


def _find(session, name: str, lock: bool = False) -> User | None:
    """The account `name` names: exactly as typed, else its NFC form (how names are stored now), else
    its NFD form (a name stored decomposed before names were normalised). Never by case."""
    forms = list(dict.fromkeys([name, names.normal(name), unicodedata.normalize("NFD", name)]))
    query = select(User).where(User.name.in_(forms))
    found = {user.name: user for user in session.scalars(query.with_for_update() if lock else query)}
    return next((found[form] for form in forms if form in found), None)


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash("not the password of anyone")


def _verify(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False
