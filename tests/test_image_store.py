"""The kept-image store tells an image never kept from one whose file is missing (its audit row says it was
kept), damaged or unreadable: get() returned None for all of them, so bit rot or a deleted patient image
looked like one never kept."""

import hashlib
import logging
from pathlib import Path

from core.store.images import DAMAGED, KEPT, MISSING, NOT_KEPT, UNREADABLE, ImageStore


def test_not_kept_missing_damaged_and_unreadable_are_told_apart(tmp_path, monkeypatch, caplog):
    images = ImageStore(tmp_path / "images")
    intact, damaged, missing, unreadable = (images.put(f"image {i}".encode()) for i in range(4))
    images.path(damaged).write_bytes(b"bit rot")
    images.path(missing).unlink()
    never = hashlib.sha256(b"never stored").hexdigest()
    real_read = Path.read_bytes

    def read_bytes(path):  # chmod 000 does not stop root (CI runs as root)
        if path == images.path(unreadable):
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    caplog.set_level(logging.WARNING, "core.store.images")
    assert images.read(intact).status == KEPT and images.read(intact).data == b"image 0"
    assert [images.read(sha, expected=True).status for sha in (damaged, missing)] == [DAMAGED, MISSING]
    assert [images.read(sha).status for sha in (missing, never)] == [NOT_KEPT, NOT_KEPT]  # no row says it was kept
    assert (images.read(unreadable).status, images.read(unreadable).problem) == (UNREADABLE, "Permission denied")
    assert [images.get(sha) for sha in (damaged, missing, never, unreadable)] == [None] * 4  # get() as before
    assert f"{images.path(damaged)} is damaged" in caplog.text and f"{images.path(missing)} is missing" in caplog.text
