"""The content-addressed image store: kept only when the deployment switches it on.

By default no uploaded image touches the disk; the audit trail keeps the SHA-256 of its bytes
only, and review happens while the image is on screen. With BREAKHIS_KEEP_IMAGES=1 each analysed
image is written once, named by its SHA-256 (data/images/ab/abcdef...), so the review queue can
show it later and reviewed images can be exported for training. The same bytes are stored once
however often they are uploaded, and a file's name is its checksum, so a damaged copy is detected.
Whether an image should be here is the audit row's to say (records.image_row writes `image_kept`: the
deployment kept images when it was analysed), not a second list beside the database: read() is told,
and says MISSING for an image that should be here and is not, so a deleted patient image or bit rot
shows on its Review card instead of looking like one that was never kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.paths import data_dir, switch_setting
from core.store.db import private_folder

log = logging.getLogger(__name__)

KEPT, NOT_KEPT, MISSING, DAMAGED, UNREADABLE = "kept", "not kept", "missing", "damaged", "unreadable"


@dataclass(frozen=True)
class Kept:
    """What the store has of one image: its bytes when `status` is KEPT; otherwise None, and for
    UNREADABLE the reason (its permissions, a disk error)."""

    status: str
    data: bytes | None = None
    problem: str = ""


def keeping_images() -> bool:
    """Whether the deployment enabled keeping images (BREAKHIS_KEEP_IMAGES)."""
    return switch_setting("BREAKHIS_KEEP_IMAGES")


class ImageStore:
    """Bytes by SHA-256 under `root` (default: the data folder's images/)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else data_dir() / "images"

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store `data` (once) and return its SHA-256; written atomically (temp file + rename)."""
        sha256 = hashlib.sha256(data).hexdigest()
        target = self.path(sha256)
        if not target.is_file():
            private_folder(self.root)  # patient images: the app's own user only, as the database
            private_folder(target.parent)
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, target)
        return sha256

    def read(self, sha256: str, expected: bool = False) -> Kept:
        """The image, or why not: NOT_KEPT (no file, none expected), MISSING (no file, but its audit row
        says it was kept: `expected`), DAMAGED (its bytes no longer match their SHA-256) or UNREADABLE;
        each but NOT_KEPT is logged with the file."""
        target = self.path(sha256)
        try:
            if not target.is_file():
                if not expected:
                    return Kept(NOT_KEPT)
                log.warning("the kept image %s is missing: its audit row says it was kept", target)
                return Kept(MISSING)
            data = target.read_bytes()
        except OSError as problem:
            log.warning("the kept image %s cannot be read: %s", target, problem.strerror or problem)
            return Kept(UNREADABLE, problem=str(problem.strerror or problem))
        if hashlib.sha256(data).hexdigest() != sha256:
            log.warning("the kept image %s is damaged: its bytes no longer match their SHA-256", target)
            return Kept(DAMAGED)
        return Kept(KEPT, data)

    def get(self, sha256: str) -> bytes | None:
        """The bytes, or None if not kept, missing, unreadable or damaged (read() says which): the
        training export skips them all alike."""
        return self.read(sha256).data
