"""The store when its environment is bad: a damaged database read by a page, a failed first migration,
an in-memory URL, a damaged or misplaced key file, an unreadable kept image, a file that is not the app's.
Each is a StoreError (or SessionKeyError) saying what is wrong and what to do, never a driver's traceback,
and a file that is not the app's is left as it was."""

import os
import sqlite3

import pytest

from core.store import reviews
from core.store.audit import Store
from core.store.db import StoreError, make_engine


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
        with pytest.raises(StoreError, match="The audit trail could not be read: the database refused it"):
            read()
    store.close()
