"""Throw-away database servers for the store tests: a real PostgreSQL started from Debian's binaries.

Why by hand rather than pytest-postgresql's process fixture: CI runs as root and PostgreSQL
refuses to run as root, so the server must be started as an unprivileged user (`runuser -u
nobody`) in a folder that user owns; this does exactly that, on a Unix socket only (no TCP port
to collide with), and removes everything afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class PostgresServer:
    """initdb + pg_ctl start in a temporary folder; `url(db)` for SQLAlchemy; `stop()` removes it."""

    PORT = 5439  # only the socket file's name: the server listens on no TCP address

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="breakhis-pg-"))
        self.as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, "nobody")
        self.data = self.root / "data"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", "start", "-o",
                  f"-k {self.root} -p {self.PORT} -c listen_addresses='' -c fsync=off -c full_page_writes=off")
        self._databases = 0

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{tool} failed: {done.stderr or done.stdout}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.root}&port={self.PORT}"

    def new_database(self) -> str:
        """A fresh, empty database on this server (one per test), as a URL."""
        import psycopg

        self._databases += 1
        name = f"store_test_{self._databases}"
        with psycopg.connect(host=str(self.root), port=self.PORT, user="postgres", dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
