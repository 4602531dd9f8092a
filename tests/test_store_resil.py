"""The store when its environment is bad: a damaged database read by a page, a failed first migration,
an in-memory URL, a damaged or misplaced key file, an unreadable kept image, a file that is not the app's.
Each is a StoreError (or SessionKeyError) saying what is wrong and what to do, never a driver's traceback,
and a file that is not the app's is left as it was."""

import contextlib
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from core.store import accounts, db, reviews, sessions
from core.store.audit import Store
from core.store.db import StoreError, make_engine
from core.store.images import ImageStore


def damaged_store(path) -> Store:
    """A store whose file has a valid header and schema page but damaged pages after them."""
    store = Store.open(f"sqlite:///{path}")
    for number in range(300):
        store.record("diagnosis", "ann", f"image{number}.png", details={"note": "x" * 100})
    store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as handle:
        handle.seek(4096 * 2)
        handle.write(os.urandom(4096 * 4))
    return Store(make_engine(f"sqlite:///{path}"))


def test_reading_a_damaged_audit_trail_is_a_store_error(tmp_path):
    store = damaged_store(tmp_path / "breakhis.db")
    for read in (store.events, store.frame, store.csv, lambda: store.event(1),
                 lambda: reviews.queue(store), lambda: reviews.history(store, case="SOB_B_A-14-22549AB")):
        with pytest.raises(StoreError, match="The audit trail could not be (read|checked): the database refused it"):
            read()
    store.close()


def tables(path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_migration_that_fails_part_way_leaves_no_table_behind(tmp_path, monkeypatch):
    """SQLite's driver committed each CREATE TABLE on its own, so a first migration that failed part-way
    left tables that made every later start fail. Now the migration is one transaction."""
    path = tmp_path / "breakhis.db"
    real_upgrade = db.command.upgrade

    def fails_after_the_first_revision(config, _target):
        real_upgrade(config, "0001")
        raise OperationalError("CREATE TABLE sessions", {}, sqlite3.OperationalError("disk I/O error"))

    monkeypatch.setattr(db.command, "upgrade", fails_after_the_first_revision)
    with pytest.raises(StoreError, match=r"cannot be opened \(disk I/O error\)\. Nothing was changed"):
        Store.open(f"sqlite:///{path}")
    assert tables(path) == set()
    monkeypatch.setattr(db.command, "upgrade", real_upgrade)
    store = Store.open(f"sqlite:///{path}")  # the next start migrates as on a new database
    assert store.record("sign_in", "ann") == 1 and db.current_revision(store.engine) == db.revisions()[1]
    store.close()


@pytest.mark.parametrize("schema", ["CREATE TABLE notes (x TEXT)",
                                    "PRAGMA journal_mode=WAL; CREATE TABLE users (x TEXT)",
                                    "CREATE TABLE alembic_version (version_num TEXT); CREATE TABLE users (x TEXT)"])
def test_another_applications_database_is_refused_untouched(tmp_path, schema):
    """A database with tables and no schema revision of this app (another tool's file, or the half
    schema an earlier version left) is refused: no table added, no mode, header or -wal file changed."""
    path = tmp_path / "breakhis.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.executescript(schema)
    path.chmod(0o644)
    before, names = path.read_bytes(), sorted(os.listdir(tmp_path))
    with pytest.raises(StoreError, match=r"holds tables \((notes|users)\) but no schema revision of this app.*untouched"):
        Store.open(f"sqlite:///{path}")
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == names
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_binary_key_file_is_called_damaged_and_a_key_folder_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.delenv(sessions.KEY_ENV, raising=False)
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / sessions.KEY_FILE).write_bytes(b"\xff\xfe" + bytes(range(256)))
    with pytest.raises(sessions.SessionKeyError, match=r"session.key is damaged \(not text\): remove it"):
        sessions.signing_key(tmp_path / "binary")
    folder = tmp_path / "folder" / sessions.KEY_FILE
    folder.mkdir(parents=True, mode=0o755)
    folder.chmod(0o755)
    with pytest.raises(sessions.SessionKeyError, match="session.key is not a file: move it away"):
        sessions.signing_key(tmp_path / "folder")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite:///:memory:",
                                 "sqlite:///file::memory:?uri=true", "sqlite:///file:x?mode=memory&uri=true"])
def test_an_in_memory_database_is_refused_in_words(url, monkeypatch):
    """Its audit trail would be per thread and lost at a restart (the Audit log crashed: no such table)."""
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", url)
    with pytest.raises(StoreError, match="in-memory SQLite database, which keeps no audit trail.*name a file"):
        Store.open()


@pytest.mark.parametrize("variable, value", [("BREAKHIS_DATABASE_URL", "sqlite:///breakhis.db"),
                                             ("BREAKHIS_DATA_DIR", "relative-data")])
def test_a_relative_database_path_is_refused_in_words(variable, value, tmp_path, monkeypatch):
    """A relative SQLite path is another file from every folder: `python -m core users add` run elsewhere
    wrote its user to a database the server never read."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BREAKHIS_DATABASE_URL", raising=False)
    monkeypatch.setenv(variable, value)
    with pytest.raises(StoreError, match="relative path .*absolute path"):
        Store.open()
    assert list(tmp_path.iterdir()) == []  # no database file was made in the current folder


def test_an_unreadable_kept_image_is_none_not_an_os_error(tmp_path, monkeypatch, caplog):
    images = ImageStore(tmp_path / "images")
    digest = images.put(b"some image bytes")
    assert images.get(digest) == b"some image bytes"
    real_read = Path.read_bytes

    def unreadable(path):  # chmod 000 does not stop root (CI runs as root)
        if path == images.path(digest):
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    assert images.get(digest) is None
    assert f"{images.path(digest)} cannot be read: Permission denied" in caplog.text


@pytest.mark.parametrize("how", ["deleted", "moved away", "replaced"])
def test_a_database_file_gone_from_its_path_while_open_takes_no_more_writes(how, tmp_path):
    """The open engine kept writing sign-ins, diagnoses and reviews into the file it had opened: one deleted
    while the server ran (rows lost at the next start, nothing said) or moved away (rows no longer in the
    database the path names). Each write now checks that the path still names that file (st_dev, st_ino)."""
    path = tmp_path / "data" / "breakhis.db"
    store = Store.open(f"sqlite:///{path}")
    store.record("sign_in", "ann")
    away = tmp_path / "away"
    away.mkdir()
    for name in [n for n in os.listdir(path.parent) if n.startswith(path.name)]:
        os.unlink(path.parent / name) if how == "deleted" else os.rename(path.parent / name, away / name)
    if how == "replaced":
        shutil.copy(away / path.name, path)  # e.g. a backup restored over it: another file (inode)
    said = "deleted or moved away" if how != "replaced" else "replaced by another file"
    for write in (lambda: store.record("diagnosis", "ann", "after.png"),
                  lambda: accounts.add_account(store, "bob", "a long enough password", "pathologist")):
        with pytest.raises(StoreError, match=f"the database file {path} was {said} while the app was running, so "
                                             "nothing more is written"):
            write()
    assert [e["kind"] for e in store.events()] == ["sign_in"] and accounts.list_accounts(store) == []
    assert path.exists() == (how == "replaced")  # nothing made at the path either
    store.close()
