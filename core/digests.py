"""SHA-256 digests the project keys things by: a file's bytes (model files, cached images) and a
model's weights (the feature cache, multi-worker agreement). One place, so every key is computed
the same way. NumPy only: no TensorFlow needed to hash a file."""

from __future__ import annotations

import hashlib
import os

import numpy as np

_BLOCK = 1 << 20  # read files a MiB at a time


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (model files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(weights, *extra: bytes) -> str:
    """Hex SHA-256 of the weights' values as float32 bytes, in order, then of `extra` bytes."""
    digest = hashlib.sha256()
    for weight in weights:
        digest.update(np.ascontiguousarray(np.asarray(weight, np.float32)).tobytes())
    for part in extra:
        digest.update(part)
    return digest.hexdigest()
