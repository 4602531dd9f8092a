"""`python -m core db ...` and `users ...` on both databases: passwords prompted, never arguments."""

import contextlib
import getpass
import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from core.cli import main
from core.store import accounts
from core.store.audit import Store
from core.store.db import revisions


@pytest.fixture
def cli_store(store_url, monkeypatch):
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", store_url)
    return store_url


def prompts(monkeypatch, *answers):
    replies = iter(answers)
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(replies))


def test_db_upgrade_then_users_add_and_sign_in(cli_store, monkeypatch, capsys):
    assert main(["db", "upgrade"]) == 0
    assert f"schema empty -> {revisions()[1]}" in capsys.readouterr().out  # every migration, up to the newest
    assert main(["db", "upgrade"]) == 0 and "up to date" in capsys.readouterr().out
    prompts(monkeypatch, "s3cret-pass", "s3cret-pass")
    assert main(["users", "add", "chief", "--role", "admin"]) == 0
    prompts(monkeypatch, "one-password", "another-one")
    assert main(["users", "add", "pat", "--role", "pathologist"]) == 2
    assert "differ" in capsys.readouterr().err
    assert main(["users", "add", "pat", "s3cret-pass"]) == 2  # no password argument exists
    store = Store.open(cli_store)
    assert accounts.sign_in(store, "chief", "s3cret-pass")["role"] == "admin"
    assert [a["name"] for a in accounts.list_accounts(store)] == ["chief"]
    assert store.events(kinds="account")[0]["user"] == "system"
    prompts(monkeypatch, "new-password", "new-password")
    assert main(["users", "set", "chief", "--role", "pathologist", "--password"]) == 0
    assert accounts.sign_in(store, "chief", "new-password")["role"] == "pathologist"
    capsys.readouterr()
    assert main(["users", "list"]) == 0
    listed = capsys.readouterr().out
    assert "chief\tpathologist\tactive" in listed and "argon2" not in listed and "new-password" not in listed
    store.close()


def test_db_status_creates_nothing(tmp_path, monkeypatch, capsys):
    """A status pointed at a folder without a database (or a mistyped one) says so and writes nothing."""
    monkeypatch.delenv("BREAKHIS_DATABASE_URL", raising=False)
    folder = tmp_path / "no-such" / "data"
    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(folder))
    assert main(["db", "status"]) == 0
    said = capsys.readouterr().out
    assert f"sqlite:///{folder / 'breakhis.db'}: no database yet" in said and "db upgrade" in said
    assert not (tmp_path / "no-such").exists()
    assert main(["db", "upgrade"]) == 0 and main(["db", "status"]) == 0
    assert f"schema {revisions()[1]} (this version's newest: {revisions()[1]})" in capsys.readouterr().out


def test_db_upgrade_refuses_a_newer_database(cli_store, capsys):
    from sqlalchemy import text

    store = Store.open(cli_store)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    store.close()
    assert main(["db", "upgrade"]) == 2
    assert "newer version of the app" in capsys.readouterr().err


def test_reviews_export_says_what_it_left_out(cli_store, tmp_path, monkeypatch, capsys):
    """The export's summary on the command line, the images superseded by a newer review included."""
    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(tmp_path / "data"))
    assert main(["reviews", "export", str(tmp_path / "export")]) == 0
    said = capsys.readouterr().out
    assert said.startswith("wrote 0 reviewed images") and "0 older reviews of an exported image" in said


@pytest.mark.parametrize("where", ["127.0.0.1:1", "db.example:notaport", "[::1"])
def test_an_unreachable_or_malformed_database_url_is_a_message_without_the_password(where, monkeypatch, capsys):
    """An unreachable server, a port that is not a number, a URL that does not parse: each store
    command says so in one line (exit 2), never a traceback, and never prints the URL's password."""
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", f"postgresql+psycopg://alice:S3cretPW@{where}/breakhis")
    for command in (["db", "status"], ["db", "upgrade"], ["users", "list"]):
        assert main(command) == 2, command
        out, err = capsys.readouterr()
        assert [line for line in err.splitlines() if line.startswith("error: ")] == [err.strip()], err
        assert "Traceback" not in out + err and "S3cretPW" not in out + err


@contextlib.contextmanager
def write_protected(path):
    """`path` made read-only: mode 0444 and, as root (whom a mode does not stop), `chattr +i` where it can be set,
    else the access check told what a user would see (as tests/test_store.py does)."""
    path.chmod(0o444)
    root = os.geteuid() == 0
    immutable = root and shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)]).returncode == 0
    with pytest.MonkeyPatch.context() as patch:
        if root and not immutable:
            real_access = os.access
            patch.setattr(os, "access", lambda p, mode: real_access(p, mode) and not (mode & os.W_OK and
                                                                                        Path(p) == path))
        try:
            yield
        finally:
            if immutable:
                subprocess.run(["chattr", "-i", str(path)], check=True)


def test_the_read_only_commands_leave_the_file_as_it_was_and_read_a_write_protected_copy(tmp_path, monkeypatch,
                                                                                          capsys):
    """`db verify`, `db status` and `users list`, documented read-only, opened the database as the app does: a copy
    in rollback-journal mode came out in WAL mode and 0600 (other bytes: evidence changed by checking it), and a
    write-protected copy was refused as "read-only"."""
    live = Store.open(f"sqlite:///{tmp_path / 'live' / 'breakhis.db'}")
    accounts.add_account(live, "chief", "s3cret-pass", "admin")
    copy = tmp_path / "copy" / "breakhis.db"
    copy.parent.mkdir()
    with contextlib.closing(sqlite3.connect(copy)) as kept:
        with contextlib.closing(sqlite3.connect(tmp_path / "live" / "breakhis.db")) as source:
            source.backup(kept)
        kept.execute("PRAGMA journal_mode=DELETE")
    live.close()
    copy.chmod(0o644)
    before = hashlib.md5(copy.read_bytes()).hexdigest()
    monkeypatch.delenv("BREAKHIS_DATABASE_URL", raising=False)
    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(copy.parent))

    def read_only_commands():
        assert main(["db", "verify"]) == 0 and "hash chain intact" in capsys.readouterr().out
        assert main(["db", "status"]) == 0 and f"schema {revisions()[1]}" in capsys.readouterr().out
        assert main(["users", "list"]) == 0 and "chief\tadmin\tactive" in capsys.readouterr().out

    read_only_commands()
    assert hashlib.md5(copy.read_bytes()).hexdigest() == before and stat.S_IMODE(copy.stat().st_mode) == 0o644
    assert sorted(os.listdir(copy.parent)) == ["breakhis.db"] and copy.read_bytes()[18:20] == b"\x01\x01"  # not WAL
    with write_protected(copy):
        read_only_commands()
    assert hashlib.md5(copy.read_bytes()).hexdigest() == before
