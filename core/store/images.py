"""The content-addressed image store: kept only when the deployment switches it on.

By default no uploaded image touches the disk; the audit trail keeps the SHA-256 of its bytes
only, and review happens while the image is on screen. With BREAKHIS_KEEP_IMAGES=1 each analysed
image is written once, named by its SHA-256 (data/images/ab/abcdef...), so the review queue can
show it later and reviewed images can be exported for training. The same bytes are stored once
however often they are uploaded, and a file's name is its checksum, so a damaged copy is detected.
A ledger (images/kept.txt, one SHA-256 a line, appended as each image is stored) tells an image that
was never kept from one whose file has gone: read() says which, so bit rot or a deleted patient image
shows on its Review card instead of looking like an image that was never kept.
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

LEDGER = "kept.txt"
KEPT, NOT_KEPT, MISSING, DAMAGED, UNREADABLE = "kept", "not kept", "missing", "damaged", "unreadable"
_ledgers: dict[Path, tuple[tuple[int, int], frozenset]] = {}  # a ledger's (mtime, size) and digests, read once


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
            self._note(sha256)
        return sha256

    def read(self, sha256: str) -> Kept:
        """The image, or why not: NOT_KEPT (never stored here), MISSING (stored, its file gone), DAMAGED
        (its bytes no longer match their SHA-256) or UNREADABLE; each but NOT_KEPT is logged with the file."""
        target = self.path(sha256)
        try:
            if not target.is_file():
                if not self._ever_kept(sha256):
                    return Kept(NOT_KEPT)
                log.warning("the kept image %s is missing: it was stored, its file is gone", target)
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

    def _note(self, sha256: str) -> None:
        """Add a stored image to the ledger. The first one written also lists the images an earlier
        version kept without a ledger (O_EXCL: one process makes it; the others append)."""
        ledger = self.root / LEDGER
        try:
            handle, first = os.open(ledger, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600), True
        except FileExistsError:
            handle, first = os.open(ledger, os.O_WRONLY | os.O_APPEND), False
        with os.fdopen(handle, "ab", buffering=0) as file:  # one write: appends from others fall between lines
            names = sorted(f.name for f in self.root.glob("??/*") if len(f.name) == 64) if first else [sha256]
            file.write("".join(f"{name}\n" for name in names).encode())
            os.fsync(file.fileno())

    def _ever_kept(self, sha256: str) -> bool:
        """Whether the ledger lists this image (no ledger: nothing was stored since it was introduced)."""
        ledger = self.root / LEDGER
        try:
            stat = ledger.stat()
        except FileNotFoundError:
            return False
        stamp = (stat.st_mtime_ns, stat.st_size)
        if _ledgers.get(ledger, (None,))[0] != stamp:
            _ledgers[ledger] = (stamp, frozenset(ledger.read_text().split()))
        return sha256 in _ledgers[ledger][1]
