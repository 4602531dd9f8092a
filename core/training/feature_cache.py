"""Fast mode's frozen-backbone features, kept on disk between runs.

On a CPU, extracting DenseNet121 features of every image is nearly all of a fast run; the heads
train in seconds. A second fast run on the same images with other head settings (units,
dropout, learning rate, epochs, balancing) reads the features instead. An image's features
are keyed by everything they depend on, so a stale feature is never used:
- the frozen extractor's weights (SHA-256 of every weight, i.e. backbone and initialisation),
- the preprocessing (input size, the resize described by core.data.preprocess.DESCRIPTION,
  the stain normaliser and its fitted reference),
- the image's content (SHA-256 of the file's bytes, so renamed or moved files still hit).

Layout: ROOT/<weights+preprocessing digest>/<content digest>.npz, one file per image, written
to a temporary name and renamed, so an interrupted run leaves no half-written entries. ROOT is
BREAKHIS_FEATURE_CACHE or ~/.cache/breakhis/features. Why our own: Keras and tf.data have no
content-addressed cache (tf.data's cache is keyed by a file name and is rebuilt per pipeline).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from core.data.preprocess import DESCRIPTION as PREPROCESSING
from core.digests import file_sha256, weights_sha256


def cache_root() -> Path:
    return Path(os.environ.get("BREAKHIS_FEATURE_CACHE") or Path.home() / ".cache" / "breakhis" / "features")


def content_digest(path) -> str:
    """An image's cache key: the SHA-256 of its bytes (first 32 hex digits)."""
    return file_sha256(path)[:32]


def extractor_key(extractor, input_size: int, normalizer: dict | None) -> str:
    """Digest of the extractor's weights and the preprocessing its input went through."""
    settings = {"preprocessing": PREPROCESSING.format(size=input_size), "normalizer": normalizer or {}}
    return weights_sha256(extractor.weights, json.dumps(settings, sort_keys=True, default=str).encode())[:32]


class FeatureCache:
    """Per-image feature tuples (one array per tap) of one extractor and preprocessing."""

    def __init__(self, key: str, root: Path | None = None):
        self.folder = (root or cache_root()) / key
        self.hits = self.misses = 0

    def _file(self, digest: str) -> Path:
        return self.folder / f"{digest}.npz"

    def get(self, digest: str) -> tuple[np.ndarray, ...] | None:
        try:
            with np.load(self._file(digest)) as stored:
                features = tuple(stored[f"tap{i}"] for i in range(len(stored.files)))
        except (OSError, ValueError, KeyError):  # absent, or damaged: extract again
            self.misses += 1
            return None
        self.hits += 1
        return features

    def put(self, digest: str, features: tuple[np.ndarray, ...]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, **{f"tap{i}": np.asarray(f) for i, f in enumerate(features)})
            os.replace(temporary, self._file(digest))
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
