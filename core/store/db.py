"""Opening the database: which one, its SQLite settings, the migrations, and clear refusals.

SQLite (one file under BREAKHIS_DATA_DIR, created on first start) unless BREAKHIS_DATABASE_URL
names another database, e.g. postgresql+psycopg://user@host/breakhis. Opening always migrates to
the newest schema this code knows (Alembic), so the app and `python -m core db upgrade` agree.
What is never done: altering a database stamped by a newer version of the app, or touching a file
that is not a readable, writable SQLite database, or a database that holds another application's
tables. Those are refused with a StoreError that says what is wrong and what to do, before anything
is written. A migration is all or nothing, on SQLite too (`_migrating`): one that fails part-way
leaves the database as it found it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import stat
import weakref
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Engine, create_engine, event, inspect, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError, OperationalError

from core.errors import UserInputError
from core.paths import data_dir
from core.store import chain

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_FILE = "breakhis.db"
DEPLOYED = {"session.key": Path.is_file, "images/": Path.is_dir}  # what a deployment leaves beside its database
BUSY_TIMEOUT_MS = 10_000  # concurrent writers wait this long for SQLite's one write lock
log = logging.getLogger(__name__)
_OPENED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # engine: (its SQLite file, (st_dev, st_ino))


class StoreError(UserInputError):
    """The database the deployment points at cannot be used as it is (damaged, read-only, from a
    newer version, unreachable). The message says why; nothing was changed."""


@contextlib.contextmanager
def store_errors(what: str):
    """Turn the driver's error while reading or writing into a StoreError a page can show.

    A busy database (another process held SQLite's write lock for longer than BUSY_TIMEOUT_MS) or an
    unreachable server would otherwise reach the page as a traceback. `what` starts the message;
    the driver's own words go to the log only, as they may name the server.
    """
    try:
        yield
    except OperationalError as problem:
        log.warning("%s: %s", what, problem.orig)
        raise StoreError(f"{what}: the database is busy or unavailable; try again in a moment.") from None
    except DBAPIError as problem:
        raise StoreError(f"{what}: the database refused it ({problem.orig}).") from None


def database_url() -> str:
    """BREAKHIS_DATABASE_URL, or the SQLite file in the data folder."""
    named = os.environ.get("BREAKHIS_DATABASE_URL")
    if named:
        return named
    return f"sqlite:///{data_dir() / SQLITE_FILE}"


def parse_url(url: str | URL) -> URL:
    """The parsed URL, or a StoreError that does not quote it (the text may hold a password)."""
    try:
        return make_url(url)
    except (ArgumentError, ValueError):  # e.g. a port that is not a number: int() raised ValueError
        raise StoreError("the database URL (BREAKHIS_DATABASE_URL) cannot be read: expected e.g. "
                         "postgresql+psycopg://user@host:5432/breakhis (it is not repeated here: it may hold "
                         "a password)") from None


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return parse_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(connection, _record, read_only: bool = False) -> None:
    # WAL: readers never block the writer and a killed server loses no committed row. FULL
    # synchronous: a commit the page confirmed is on disk even after a power cut, not only a crash.
    # Read-only: neither (switching to WAL rewrites the file's header).
    cursor = connection.cursor()
    for pragma in (() if read_only else ("journal_mode=WAL", "synchronous=FULL")) + (
            "foreign_keys=ON", f"busy_timeout={BUSY_TIMEOUT_MS}"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def private_folder(folder: Path) -> None:
    """Create `folder` (and its parents) for the app's own user only (0700): the data folder holds
    the audit trail, the password hashes and the session key. An existing folder is left as it is.
    Each missing parent is made here too: `mkdir(parents=True)` gives parents the umask's mode (0755)."""
    if not folder.parent.exists():
        private_folder(folder.parent)
    folder.mkdir(mode=0o700, exist_ok=True)


def _private_files(path: Path) -> None:
    """The database and its -wal/-shm files readable by the app's own user only (0600), like
    session.key: a new file is created so (SQLite gives -wal and -shm the mode of the database
    file), one left readable by others (an earlier version, a restored copy) is tightened."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if (mode := stat.S_IMODE(file.stat().st_mode)) & 0o077:
                file.chmod(mode & 0o700)
        except FileNotFoundError:
            continue
        except OSError as problem:  # another user's file the app may write but not chmod
            log.warning("could not make %s private: %s", file, problem.strerror)


def _check_sqlite_file(path: Path, new_database: bool = False) -> None:
    """Refuse a file we could not use without damaging or overwriting it; make it private. A missing file is
    created (a first start) unless its folder shows an earlier deployment (_missing) and not `new_database`."""
    if not path.exists():
        if not new_database:
            refuse_missing(path)
        try:
            private_folder(path.parent)
        except OSError as problem:
            raise StoreError(f"cannot create the data folder {path.parent}: {problem}. "
                             "Set BREAKHIS_DATA_DIR to a writable folder.") from None
        if not os.access(path.parent, os.W_OK):
            raise StoreError(f"the data folder {path.parent} is not writable. "
                             "Set BREAKHIS_DATA_DIR to a writable folder.")
        _private_files(path)
        return
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK):
        raise StoreError(f"the database file {path} (or its folder) is read-only. The app needs to write "
                         "its audit trail there: make it writable or set BREAKHIS_DATA_DIR; nothing was changed.")
    _check_contents(path)
    _private_files(path)


def _check_contents(path: Path) -> None:
    """Refuse an existing path that is not a file, not SQLite, or another application's database (read only)."""
    if not path.is_file():
        raise StoreError(f"the database path {path} is not a file.")
    with path.open("rb") as handle:
        header = handle.read(16)
    if header and header != b"SQLite format 3\x00":
        raise StoreError(f"the database file {path} is not an SQLite database (damaged or another file). "
                         "It was left untouched: restore it from a backup, or move it away to start a new one.")
    if foreign := _unstamped_tables(path):
        raise _not_ours(str(path), foreign)


def _read_only_option(path: Path) -> tuple[str, str]:
    """The SQLite URI option that reads `path` without writing to it (the app's own connections would switch
    it to WAL mode): with no -wal file everything is in the file itself, so it is opened immutable (no -wal or
    -shm made), else read-only."""
    return ("mode", "ro") if path.with_name(path.name + "-wal").exists() else ("immutable", "1")


def _unstamped_tables(path: Path) -> list[str]:
    """The tables of an existing SQLite file that has no schema revision of this app: another
    application's, or (before migrations were all or nothing) a first migration that failed part-way.

    Read without writing to the file (_read_only_option). A damaged file reads as [] here; the migration then
    refuses it (_opening)."""
    uri = f"{path.resolve().as_uri()}?{'='.join(_read_only_option(path))}"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
            tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "alembic_version" in tables and connection.execute("SELECT 1 FROM alembic_version").fetchone():
                return []
    except sqlite3.DatabaseError:
        return []
    return sorted(tables - {"alembic_version"})


def refuse_missing(path: Path) -> None:
    """StoreError if the database file `path`, not there, sits in a folder with an earlier deployment's files:
    that is no first start (a failed mount, a restore that left the database out, a deletion), and a new empty
    database would hide every account and audit row of that deployment behind a "first start"."""
    if left := [name for name, found in DEPLOYED.items() if found(path.parent / name)]:
        raise StoreError(f"the database {path} is missing, but its folder holds an earlier deployment's "
                         f"{' and '.join(left)}: it was deleted, moved or not restored. Nothing was created: restore "
                         "it from a backup, or run `python -m core db upgrade` to start a new, empty one "
                         "deliberately.")


def _not_ours(where: str, tables: list[str]) -> StoreError:
    shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
    return StoreError(f"the database {where} holds tables ({shown}) but no schema revision of this app: it is "
                      "another application's database. It was left untouched: point BREAKHIS_DATA_DIR or "
                      "BREAKHIS_DATABASE_URL at another database, or move the file away to start a new one.")


def _check_readable(path: Path) -> None:
    """Refuse, for reading only, a file that is not there or not readable, or not a database of this app."""
    if not path.exists():
        raise StoreError(f"there is no database at {path} (nothing to read; `python -m core db upgrade` or the "
                         "app's first start creates one).")
    if path.is_file() and not os.access(path, os.R_OK):
        raise StoreError(f"the database file {path} cannot be read by this user; nothing was changed.")
    _check_contents(path)


def sqlite_file(url: str | URL) -> Path | None:
    """The file an SQLite URL names (None for another database or an in-memory one)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database)
    return None


def _in_memory(parsed: URL) -> bool:
    """sqlite:///file::memory:?uri=true or ...?mode=memory: a URI filename that is no file either."""
    return parsed.database.startswith("file::memory:") or parsed.query.get("mode") == "memory"


def make_engine(url: str | None = None, read_only: bool = False, new_database: bool = False) -> Engine:
    """An engine for `url` (default: database_url()); SQLite files are checked and get WAL mode. A missing
    file is created, but beside an earlier deployment's files only with `new_database` (`db upgrade`).

    `read_only` (`db status`, `db verify`, `users list`): an existing SQLite file opened so that nothing can
    write to it (_read_only_option), with no journal mode set, no chmod and no need of write access: checking
    a copy kept as evidence must not change it, and a write-protected copy must still be readable."""
    parsed = parse_url(url or database_url())
    if parsed.get_backend_name() == "sqlite":
        if (path := sqlite_file(parsed)) is None or _in_memory(parsed):
            raise StoreError("the database URL (BREAKHIS_DATABASE_URL) names an in-memory SQLite database, which "
                             "keeps no audit trail (each server thread would get an empty one, and a restart loses "
                             "it): name a file, e.g. sqlite:////srv/breakhis/breakhis.db, or a database server")
        if not path.is_absolute():
            raise StoreError(f"the database is a relative path ({path}), i.e. a different file in every folder the "
                             "server or a command is started from (a sign-in or audit row written from one would "
                             "be missing from the other): set BREAKHIS_DATA_DIR or BREAKHIS_DATABASE_URL to an "
                             "absolute path, e.g. sqlite:////srv/breakhis/breakhis.db")
        if read_only:
            _check_readable(path)
            parsed = URL.create("sqlite+pysqlite", database=path.resolve().as_uri(),
                                query=dict([_read_only_option(path), ("uri", "true")]))
        else:
            _check_sqlite_file(path, new_database)
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
        event.listen(engine, "connect", functools.partial(_sqlite_pragmas, read_only=read_only))
        if not read_only:
            _OPENED[engine] = path, _identity(path)
        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True)
    except ArgumentError:  # NoSuchModuleError: a dialect or driver that is not installed
        raise StoreError(f"the database URL names {parsed.drivername!r}, which this installation cannot use "
                         "(e.g. postgresql+psycopg)") from None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def still_at_its_path(engine: Engine) -> None:
    """StoreError if the SQLite file `engine` opened is no longer the file at its path (one os.stat).

    SQLite writes into the file it holds open: one deleted while the app runs took every later sign-in,
    diagnosis and review silently, all lost at the next start (which then made a new database); one moved
    away took them away from the database the path names. Called before each write and each page run."""
    if (opened := _OPENED.get(engine)) is None or (now := _identity(opened[0])) == opened[1]:
        return
    path, what = opened[0], "deleted or moved away" if now is None else "replaced by another file"
    log.warning("the database file %s was %s while open; until this process (pid %d) stops, the file it opened "
                "can be copied from /proc/%d/fd/", path, what, os.getpid(), os.getpid())
    raise StoreError(f"the database file {path} was {what} while the app was running, so nothing more is "
                     "written to the file it had opened. Put the database back at that path (the moved file or a "
                     "backup) and restart the app.")


def _alembic_config(connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def revisions() -> tuple[set[str], str]:
    """(every revision this code knows, the newest)."""
    script = ScriptDirectory(str(MIGRATIONS))
    return {r.revision for r in script.walk_revisions()}, script.get_current_head()


@contextlib.contextmanager
def _opening(engine: Engine):
    """A server that cannot be reached or a file that is not a database: a StoreError naming the
    database without its password (the driver's words on one line), never a traceback."""
    url = engine.url.render_as_string(hide_password=True)
    try:
        yield url
    except OperationalError as problem:
        said = " ".join(str(problem.orig).split())
        raise StoreError(f"the database {url} cannot be opened ({said}). Nothing was changed.") from None
    except DatabaseError as problem:
        raise StoreError(f"the database {url} is damaged or not a database ({problem.orig}). It was left "
                         "untouched: restore it from a backup, or move it away to start a new one.") from None


def current_revision(engine: Engine) -> str | None:
    with _opening(engine), engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _migrating(engine: Engine):
    """A connection in one transaction that holds the DDL too, committed at the end or rolled back.

    PostgreSQL does this by itself. Python's sqlite3 driver does not: it begins a transaction only
    before INSERT/UPDATE/DELETE, so a CREATE TABLE commits on its own and a migration that failed
    part-way left half a schema. Here the driver's own transaction handling is off for this one
    connection and the migration runs inside an explicit BEGIN IMMEDIATE (which also makes a second
    process starting at the same moment wait, then find the schema already made)."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as connection:
            yield connection
        return
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        level, driver.isolation_level = driver.isolation_level, None
        try:
            with connection.begin():  # its commit and rollback reach the driver's, which end our BEGIN
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                yield connection
        finally:
            driver.isolation_level = level


def restore_triggers(engine: Engine) -> list[str]:
    """Recreate the audit trail's append-only triggers that were dropped, disabled or altered
    (core.store.chain), all in one transaction; their names ([] when all were in place)."""
    with _opening(engine), _migrating(engine) as connection:
        return chain.restore_triggers(connection)


def upgrade(engine: Engine) -> str:
    """Migrate to the newest schema, all or nothing; refuse (StoreError, no change) a database from a
    newer version or one that holds another application's tables."""
    known, head = revisions()
    with _opening(engine) as url:
        current = current_revision(engine)
        if current is not None and current not in known:
            raise StoreError(f"the database {url} was written by a newer version of the app (schema revision "
                             f"{current}; this version knows up to {head}). It was not changed: upgrade the app, "
                             "or point BREAKHIS_DATA_DIR / BREAKHIS_DATABASE_URL at another database.")
        if current != head:
            with _migrating(engine) as connection:
                if current is None and (foreign := sorted(set(inspect(connection).get_table_names())
                                                          - {"alembic_version"})):
                    raise _not_ours(url, foreign)
                command.upgrade(_alembic_config(connection), "head")
            log.info("store %s migrated from %s to %s", url, current, head)
    return head
