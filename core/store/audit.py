"""The Store: one open database, and its append-only audit trail.

`Store.open()` opens (and migrates) the deployment's database; `record()` appends one audit row
and returns its id, the number a printed report carries; `events()` / `frame()` / `csv()` read
the trail back with the admin page's filters. There is no method that changes or removes a row,
and the session refuses it too (`_refuse_audit_changes`); on top of that the migration installs a
database trigger, so even a hand-written UPDATE fails. A correction is a new row. Each row is also
linked to the one before it by a hash chain (core.store.chain), written here, so a change made
around the triggers is detected: `check()` (at every open, and `python -m core db verify`). The first
open of a database in a process re-hashes its newest rows; a later one only the rows written since
(all of them while an append-only trigger is missing).
A review must name an account (or the single-user workstation's user).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.metadata
import json
import logging
import tomllib

import pandas as pd
from sqlalchemy import Engine, event, or_, select
from sqlalchemy.orm import Session, sessionmaker

from core.errors import UserInputError
from core.paths import REPO, switch_setting
from core.spreadsheet import spreadsheet_csv
from core.store import chain
from core.store.db import make_engine, safe_url, still_at_its_path, store_errors, upgrade
from core.store.models import AuditEvent, User, utc_now

log = logging.getLogger(__name__)

# What the trail records (the admin page filters on these).
KINDS = ("diagnosis", "slide", "review", "sign_in", "sign_in_failed", "sign_out", "session_resumed",
         "session_revoked", "model_activated", "retrain_launched", "retrain_finished", "retrain_cancelled", "account",
         "reviews_exported")
COLUMNS = ["id", "at", "kind", "user", "subject", "image_sha256", "model", "model_sha256", "app_version",
           "refers_to", "details"]
OPEN_CHECK_ROWS = 10_000  # the newest rows the first Store.open re-hashes (about a second); `db verify` checks all
# Per database URL: this process's newest verdict on its chain, which a later check carries on from
# (chain.verify's `since`), so a later Store.open reads only the rows written since. In memory only: a
# record elsewhere would be one more thing whoever writes the database could rewrite.
_LAST_CHECKED: dict[str, tuple[chain.Verdict, int | None]] = {}  # url: (the last check, _schema_version then)


def _schema_version(engine) -> int | None:
    """SQLite's schema cookie, which every CREATE or DROP (of a trigger too) changes; None elsewhere."""
    if engine.dialect.name != "sqlite":
        return None
    with store_errors("The audit trail's check"), engine.connect() as connection:
        return connection.exec_driver_sql("PRAGMA schema_version").scalar()


SINGLE_USER = "local"  # the user of a single-user workstation (BREAKHIS_SINGLE_USER), core.app.signin's


@functools.cache
def app_version() -> str:
    """The installed package's version (pyproject.toml when run from a checkout)."""
    try:
        return importlib.metadata.version("breakhis-assistant")
    except importlib.metadata.PackageNotFoundError:
        return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


class AppendOnlyError(RuntimeError):
    """Code tried to change or delete an audit row: a bug, never a user action."""


def _refuse_audit_changes(session, _context, _instances) -> None:
    deleted = any(isinstance(o, AuditEvent) for o in session.deleted)
    modified = any(isinstance(o, AuditEvent) and session.is_modified(o) for o in session.dirty)
    if deleted or modified:
        raise AppendOnlyError("audit rows are append-only: record a new row instead")


def _refuse_bulk_audit_changes(state) -> None:
    if (state.is_update or state.is_delete) and any(
            m.class_ is AuditEvent for m in state.all_mappers):
        raise AppendOnlyError("audit rows are append-only: record a new row instead")


class Store:
    """The database of accounts, audit trail and reviews (thread-safe: one session per call)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.integrity: chain.Verdict | None = None  # the last check(): open() makes one
        event.listen(self.sessions, "before_flush", _refuse_audit_changes)
        event.listen(self.sessions, "do_orm_execute", _refuse_bulk_audit_changes)

    @classmethod
    def open(cls, url: str | None = None) -> "Store":
        """Open and migrate the deployment's database (StoreError, nothing changed, if unusable), then
        check the trail's triggers and newest rows (`check`: what is wrong is logged, kept in `integrity`).
        A later open of the same database in this process carries on from the last check: it reads only
        the rows written since (and that the head it ended on is still there), and repeats what it found."""
        engine = make_engine(url)
        upgrade(engine)
        store = cls(engine)
        store.check(newest=OPEN_CHECK_ROWS, carry_on=True)
        return store

    def check(self, expect: tuple[int, str] | None = None, newest: int | None = None,
              carry_on: bool = False) -> chain.Verdict:
        """Verify the hash chain (all rows, or the `newest`; `carry_on`: from this process's last check of
        this database, when there is one) and the append-only triggers (core.store.chain.verify), log what
        is wrong as a warning and keep the verdict in `integrity` (the Audit log page shows it)."""
        verdict = self._verify(expect, newest, carry_on)
        for problem in verdict.problems():
            log.warning("%s: %s", safe_url(self.engine.url), problem)
        self.integrity = verdict
        return verdict

    def carried_on(self) -> chain.Verdict:
        """This process's last check of this database carried on over the rows written since (only those are
        read): what a reader that must not take a broken row as genuine (the review queue) goes by. Left out of
        `integrity` and the log: the Audit log page says when its check ran, and the reader says what it found.
        While the append-only triggers are missing, every row is read again (_verify)."""
        return self._verify(None, OPEN_CHECK_ROWS, True)

    def _verify(self, expect, newest, carry_on) -> chain.Verdict:
        """Carrying on trusts the rows before the last check's head only while the triggers guard them: with a
        trigger missing now or at that check, or (SQLite) the schema changed since it (a trigger dropped, a row
        edited and the trigger made again between two checks), any row may have been edited, so all are
        re-hashed (about 0.3-0.5 s per 10,000 rows; only then)."""
        key = self.engine.url.render_as_string(hide_password=False)
        since, since_schema = _LAST_CHECKED.get(key, (None, None)) if carry_on else (None, None)
        schema = _schema_version(self.engine)
        verdict = verify_trail(self.engine, expect, newest, since)
        if since is not None and (verdict.missing_triggers or since.missing_triggers or schema != since_schema):
            carried, verdict = verdict, verify_trail(self.engine, expect)
            if verdict.unlike_noted is None:  # the head last checked gone (a cut back): the full check cannot see it
                verdict.unlike_noted = carried.unlike_noted
        _LAST_CHECKED[key] = verdict, schema  # a race between two threads leaves an older head: more rows read next
        return verdict

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return self.sessions()

    @contextlib.contextmanager
    def reading(self, what: str):
        """A session for reads; a busy or unreachable database is a StoreError starting with `what`."""
        with store_errors(what), self.session() as session:
            yield session

    @contextlib.contextmanager
    def transaction(self, what: str):
        """A session in one transaction, committed at the end (rolled back on an error); a busy or
        unreachable database is a StoreError starting with `what` (core.store.db.store_errors), and so is a
        database file no longer at its path (core.store.db.still_at_its_path: nothing is written to it)."""
        still_at_its_path(self.engine)
        with store_errors(what), self.sessions.begin() as session:
            yield session

    # ------------------------------------------------------------ writing

    def record(self, kind: str, user: str, subject: str | None = None, *, image_sha256: str | None = None,
               model: str | None = None, model_sha256: str | None = None, refers_to: int | None = None,
               details: dict | None = None, at: datetime.datetime | None = None) -> int:
        """Append one audit row (committed before this returns) and return its id."""
        return self.record_many([dict(kind=kind, user=user, subject=subject, image_sha256=image_sha256, model=model,
                                      model_sha256=model_sha256, refers_to=refers_to, details=details, at=at)])[0]

    def record_many(self, rows: list[dict]) -> list[int]:
        """Append several rows in one transaction (a diagnosis of many images): all or none.

        Under the database's write lock (chain.lock_tail), each row gets the next id and its link in
        the hash chain, so concurrent writers, in one process or several, still make one valid chain."""
        for row in rows:
            if row["kind"] not in KINDS:
                raise ValueError(f"unknown audit kind {row['kind']!r}; one of {', '.join(KINDS)}")
            if unknown := set(row) - set(chain.HASHED) | ({"id", "app_version"} & set(row)):
                raise TypeError(f"not a column a caller fills: {', '.join(sorted(unknown))}")
        # The details as they will read back (JSON: tuples become lists, keys text), so the hash is the same.
        stamped = [{**{c: row.get(c) for c in chain.HASHED}, "at": row.get("at") or utc_now(),
                    "details": json.loads(json.dumps(row.get("details") or {})), "app_version": app_version()}
                   for row in rows]
        with self.transaction("The audit record could not be written") as session:
            last_id, previous = chain.lock_tail(session.connection())
            _refuse_unknown_reviewers(session, stamped)
            events = []
            for number, row in enumerate(stamped, start=last_id + 1):
                previous = chain.link(previous, {**row, "id": number})
                events.append(AuditEvent(**{**row, "id": number}, chain_sha256=previous))
            session.add_all(events)
            session.flush()
            chain.follow_ids(session.connection(), last_id + len(events))
            return [e.id for e in events]

    # ------------------------------------------------------------ reading

    def events(self, kinds=None, user: str | None = None, since: datetime.datetime | None = None,
               until: datetime.datetime | None = None, image_sha256: str | None = None,
               refers_to: int | None = None, refers_to_any=None, ids=None, limit: int | None = None,
               newest_first: bool = True, audit_id: int | None = None, subject_contains: str | None = None,
               ) -> list[dict]:
        """Audit rows as dicts, filtered; `since` inclusive, `until` exclusive; `audit_id`: that row and
        the rows that refer to it (its reviews); `subject_contains`: any case. A busy, unreachable or
        damaged database is a StoreError the page can show (the Audit log, the Review queue)."""
        query = select(AuditEvent)
        if audit_id is not None:
            query = query.where(or_(AuditEvent.id == audit_id, AuditEvent.refers_to == audit_id))
        if subject_contains:
            query = query.where(AuditEvent.subject.icontains(subject_contains, autoescape=True))
        if kinds:
            query = query.where(AuditEvent.kind.in_([kinds] if isinstance(kinds, str) else list(kinds)))
        if user:
            query = query.where(AuditEvent.user == user)
        if since is not None:
            query = query.where(AuditEvent.at >= since)
        if until is not None:
            query = query.where(AuditEvent.at < until)
        if image_sha256:
            query = query.where(AuditEvent.image_sha256 == image_sha256)
        if refers_to is not None:
            query = query.where(AuditEvent.refers_to == refers_to)
        if refers_to_any is not None:
            query = query.where(AuditEvent.refers_to.in_(list(refers_to_any)))
        if ids is not None:
            query = query.where(AuditEvent.id.in_(list(ids)))
        query = query.order_by(AuditEvent.id.desc() if newest_first else AuditEvent.id)
        if limit:
            query = query.limit(limit)
        with self.reading("The audit trail could not be read") as session:
            return [{c: getattr(e, c) for c in COLUMNS} for e in session.scalars(query)]

    def event(self, audit_id: int) -> dict | None:
        found = self.events(ids=[audit_id])
        return found[0] if found else None

    def frame(self, **filters) -> pd.DataFrame:
        """The filtered trail as a table (details flattened to JSON text), for the page and the CSV."""
        rows = self.events(**filters)
        frame = pd.DataFrame(rows, columns=COLUMNS)
        frame["at"] = [r["at"].isoformat(timespec="milliseconds") for r in rows]
        frame["details"] = [json.dumps(r["details"], sort_keys=True) for r in rows]
        return frame

    def csv(self, **filters) -> bytes:
        """The filtered trail as CSV for a spreadsheet: formulas made inert, UTF-8 with a byte-order mark
        (core.spreadsheet says why)."""
        return spreadsheet_csv(self.frame(**filters))



def verify_trail(engine: Engine, expect: tuple[int, str] | None = None, newest: int | None = None,
                 since: chain.Verdict | None = None) -> chain.Verdict:
    """core.store.chain.verify on the database behind `engine` (read-only; a StoreError the page or the CLI can
    show): Store.check and `python -m core db status|verify`, which must not migrate, both read it here."""
    with store_errors("The audit trail could not be checked"), engine.connect() as connection:
        return chain.verify(connection, expect, newest, since)


def _refuse_unknown_reviewers(session: Session, rows: list[dict]) -> None:
    """A review must name an account (a hand-made or mistyped name would read as a pathologist's
    opinion); the single-user workstation's user is one while that mode is on."""
    named = {row["user"] for row in rows if row["kind"] == "review"}
    if switch_setting("BREAKHIS_SINGLE_USER"):
        named.discard(SINGLE_USER)
    if named and (unknown := named - set(session.scalars(select(User.name).where(User.name.in_(named))))):
        raise UserInputError(f"a review must name an account; {', '.join(sorted(unknown))} is not one. "
                             "Nothing was recorded.")
