"""Tamper evidence for the audit trail: a hash chain over its rows, and a check of its triggers.

The triggers (migrations 0001, 0003) refuse a hand-written UPDATE or DELETE, but whoever can write
the database can drop them. So each row also stores `chain_sha256`: the SHA-256 of the previous
row's hash followed by the row's own canonical content (id included). `verify` recomputes the
chain: a row edited, or a row removed or inserted between two others, breaks it at that id, and a
row written around the store has no hash. What a chain cannot show is the newest rows removed (the
rest is still a valid chain) or the whole chain recomputed after an edit; the head hash `verify`
prints, noted down elsewhere, catches both (`db verify --expect ID:SHA256`).

Rows are linked where they are appended (Store.record_many), inside the transaction that inserts
them, after taking the database's write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: a table lock
that lets readers through), so two writers never link to the same previous row.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re

from sqlalchemy import Connection, and_, func, select, text

from core.store.models import AuditEvent

GENESIS = "0" * 64  # what the first row (and a row after one with no hash) links to
HASHED = ("id", "at", "kind", "user", "subject", "image_sha256", "model", "model_sha256", "app_version",
          "refers_to", "details")  # never change what or how it hashes: every chain kept so far would break
APPEND_ONLY = "audit rows are append-only: record a new row instead"
_ABORT = f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
# name: the statement that creates it (SQLite keeps that text, so it is also what a check compares).
SQLITE_TRIGGERS = {
    "audit_no_update": f"CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit {_ABORT}",
    "audit_no_delete": f"CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit {_ABORT}",
    "audit_no_replace": "CREATE TRIGGER audit_no_replace BEFORE INSERT ON audit "
                        f"WHEN EXISTS (SELECT 1 FROM audit WHERE id = NEW.id) {_ABORT}",
}
PG_FUNCTION_BODY = f"BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END"
PG_FUNCTION = f"CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ {PG_FUNCTION_BODY} $$"
# name: (the statement that creates it, what pg_get_triggerdef says of it with the table unqualified)
PG_TRIGGERS = {
    "audit_no_change": ("CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit FOR EACH ROW "
                        "EXECUTE FUNCTION audit_append_only()",
                        "CREATE TRIGGER audit_no_change BEFORE DELETE OR UPDATE ON audit FOR EACH ROW "
                        "EXECUTE FUNCTION audit_append_only()"),
    "audit_no_truncate": ("CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit FOR EACH STATEMENT "
                          "EXECUTE FUNCTION audit_append_only()",
                          "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit FOR EACH STATEMENT "
                          "EXECUTE FUNCTION audit_append_only()"),
}
BATCH = 5000  # rows read at a time by verify


def canonical(row: dict) -> bytes:
    """The row's content as the chain hashes it: JSON, sorted keys, UTC time to the microsecond."""
    content = {column: row[column] for column in HASHED}
    content["at"] = row["at"].astimezone(datetime.UTC).isoformat(timespec="microseconds")
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def link(previous: str | None, row: dict) -> str:
    """The hash a row stores: SHA-256 of the previous row's stored hash (GENESIS if none) and its content."""
    return hashlib.sha256((previous or GENESIS).encode("ascii") + canonical(row)).hexdigest()


def lock_tail(connection: Connection) -> tuple[int, str | None]:
    """Take the write lock for this transaction (the first statement in it) and return the newest
    row's (id, stored hash), (0, None) for an empty trail: new rows get the ids after it."""
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:  # conflicts with itself and with INSERT, not with SELECT
        connection.exec_driver_sql("LOCK TABLE audit IN SHARE ROW EXCLUSIVE MODE")
    tail = connection.execute(text("SELECT id, chain_sha256 FROM audit ORDER BY id DESC LIMIT 1")).first()
    return (tail[0], tail[1]) if tail else (0, None)


def follow_ids(connection: Connection, last_id: int) -> None:
    """PostgreSQL: move the id sequence past ids the store gave itself (SQLite needs nothing)."""
    if connection.dialect.name != "sqlite":
        connection.execute(text("SELECT setval(pg_get_serial_sequence('audit', 'id'), :last)"), {"last": last_id})


@dataclasses.dataclass
class Verdict:
    """What `verify` found: rows checked, the head (newest row's id and hash) to note down, the rows
    whose hash does not match (edited, or a neighbour removed or inserted), the rows with no hash,
    and the append-only triggers that are missing, disabled or altered."""

    rows: int = 0
    head_id: int | None = None
    head_sha256: str | None = None
    broken: list[int] = dataclasses.field(default_factory=list)
    missing: list[int] = dataclasses.field(default_factory=list)
    gaps: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (id before, id after) of a jump
    missing_triggers: list[str] = dataclasses.field(default_factory=list)
    unlike_noted: int | None = None  # the id of a head noted down earlier that is gone or has another hash
    rows_before: int = 0  # rows older than the ones checked (a check of the newest rows only)
    checked_at: datetime.datetime = dataclasses.field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    @property
    def ok(self) -> bool:
        return not (self.broken or self.missing or self.missing_triggers or self.unlike_noted is not None)

    def scope(self) -> str:
        """Which rows were checked: all of them, or the newest (a check at start-up on a large trail)."""
        if self.rows_before:
            return f"the newest {self.rows} of {self.rows + self.rows_before} rows (`python -m core db verify`: all)"
        return f"all {self.rows} rows"

    def problems(self) -> list[str]:
        """One sentence per finding, the first broken or missing id named."""
        said = []
        if self.broken:
            gap = next((g for g in self.gaps if g[1] == self.broken[0]), None)
            said.append(f"the audit trail's hash chain is broken at id {self.broken[0]} ({len(self.broken)} row(s) in "
                        "all): that row was changed, or a row before it was changed or removed"
                        + (f" ({_missing_ids(*gap)})" if gap else ""))
        if self.missing:
            said.append(f"{len(self.missing)} audit row(s) have no chain hash, the first id {self.missing[0]}: written "
                        "around the app (hand-written SQL)")
        if self.unlike_noted is not None:
            said.append(f"audit row {self.unlike_noted} is gone or no longer has the hash noted down for it: the "
                        "trail was cut back or rewritten after that row")
        if self.missing_triggers:
            said.append(f"the audit trail's append-only triggers are missing, disabled or altered: "
                        f"{', '.join(self.missing_triggers)} (`python -m core db upgrade` recreates them)")
        return said


def _missing_ids(before: int, after: int) -> str:
    """The ids a gap in the chain lacks, in words: "id 12 is missing" for one, "ids 12-14 are missing" for more."""
    first, last = before + 1, after - 1
    return f"id {first} is missing" if first == last else f"ids {first}-{last} are missing"


def verify(connection: Connection, expect: tuple[int, str] | None = None, newest: int | None = None,
           since: Verdict | None = None) -> Verdict:
    """Recompute the chain (read in batches) and check the triggers; `expect` (id, hash) is a head
    noted down earlier, which must still be there with that hash. `newest`: only the newest rows
    (each linked to the stored hash of the row before them), for a check at every start that stays
    quick on a large trail (about 0.1 ms a row); `rows_before` then says how many were not read.
    `since`: an earlier verdict on this database to carry on from (Store.open's later opens): only the
    rows after its head are read, linked to the head's hash, and its findings are kept; a head that is
    gone or holds another hash is reported (`unlike_noted`) and the `newest` rows are checked instead
    (with `expect`, whose row may lie before that head, `since` is not used)."""
    since = None if expect else since
    verdict, previous, previous_id = Verdict(missing_triggers=missing_triggers(connection)), None, None
    noted = expect is None
    columns = [getattr(AuditEvent, c) for c in (*HASHED, "chain_sha256")]  # typed: read back as written
    after = 0
    if start := _start(connection, verdict, newest, since):
        (after, previous), previous_id = start, start[0]
        verdict.rows_before = connection.scalar(select(func.count()).where(AuditEvent.id <= after))
    while rows := connection.execute(select(*columns).where(AuditEvent.id > after)
                                     .order_by(AuditEvent.id).limit(BATCH)).mappings().all():
        for row in rows:
            stored = row["chain_sha256"]
            if stored is None:
                verdict.missing.append(row["id"])
            elif stored != link(previous, row):
                verdict.broken.append(row["id"])
            if previous_id is not None and row["id"] != previous_id + 1:
                verdict.gaps.append((previous_id, row["id"]))
            previous, previous_id = stored, row["id"]
            if expect and row["id"] == expect[0]:
                noted = stored == expect[1]
        verdict.rows += len(rows)
        after = rows[-1]["id"]
    verdict.head_id, verdict.head_sha256 = previous_id, previous
    if not noted:
        verdict.unlike_noted = expect[0]
    return verdict


def _start(connection: Connection, verdict: Verdict, newest: int | None, since: Verdict | None):
    """(id, stored hash) of the row a partial check links on from (None: read from the first row); a
    verdict carried on from gives its findings to `verdict`."""
    if since is not None and since.head_id is not None:
        held = connection.scalar(select(AuditEvent.chain_sha256).where(AuditEvent.id == since.head_id))
        if held == since.head_sha256:
            verdict.broken, verdict.missing, verdict.gaps = [*since.broken], [*since.missing], [*since.gaps]
            return since.head_id, since.head_sha256
        verdict.unlike_noted = since.head_id  # cut back or rewritten since it was read
    if newest is None:
        return None
    return connection.execute(select(AuditEvent.id, AuditEvent.chain_sha256).order_by(AuditEvent.id.desc())
                              .offset(newest).limit(1)).first()


def vouched(row, broken: list[int]):
    """SQL: the chain vouches for `row` (AuditEvent or an alias of it): it has a chain hash, and not one a
    check (`verify`) found broken. A row written around the app has none; a changed one no longer links."""
    return and_(row.chain_sha256.is_not(None), row.id.not_in(broken))


def missing_triggers(connection: Connection) -> list[str]:
    """The append-only triggers (and PostgreSQL's function) that are absent, disabled or not as made."""
    if connection.dialect.name == "sqlite":
        found = dict(connection.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                                             "AND tbl_name = 'audit'")).all())
        return [name for name, made in SQLITE_TRIGGERS.items() if found.get(name) != made]
    found = {name: re.sub(r" ON \S*audit ", " ON audit ", definition) for name, definition in connection.execute(text(
        "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'audit'::regclass "
        "AND NOT tgisinternal AND tgenabled IN ('O', 'A')")).all()}
    body = connection.execute(text("SELECT prosrc FROM pg_proc WHERE proname = 'audit_append_only'")).scalar()
    missing = [] if (body or "").strip() == PG_FUNCTION_BODY else ["audit_append_only()"]
    return missing + [name for name, (_, made) in PG_TRIGGERS.items() if found.get(name) != made]


def restore_triggers(connection: Connection) -> list[str]:
    """Recreate the append-only triggers that are missing, disabled or altered; their names."""
    missing = missing_triggers(connection)
    if connection.dialect.name == "sqlite":
        for name in missing:
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
            connection.exec_driver_sql(SQLITE_TRIGGERS[name])
        return missing
    if missing:
        connection.exec_driver_sql(PG_FUNCTION)
    for name in missing:
        if name in PG_TRIGGERS:
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON audit")
            connection.exec_driver_sql(PG_TRIGGERS[name][0])
    return missing
