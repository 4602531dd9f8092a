"""JSON files that other processes read while they are written: one atomic writer for all.

Cards, metrics, run configs, job state and provenance are read by the app while training or
sampling writes them. Writing to a temporary file in the same folder and renaming it over the
target means a reader sees the old file or the new one, never half of one. No TensorFlow here:
the app's job page reads job state through this module without loading Keras.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def plain(value, unknown=None):
    """`value` as standard JSON values, at any depth: numpy scalars and arrays as numbers and lists, paths as
    text, NaN and infinities as None (null). json.dump writes NaN and Infinity, which are not JSON: browsers'
    JSON.parse, jq and PostgreSQL refuse a card holding an undefined metric written so. Any other type is
    refused (TypeError), or given to `unknown` (the progress stream writes it as text: a log line must never
    stop a training)."""
    if isinstance(value, dict):
        return {str(key): plain(item, unknown) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item, unknown) for item in value]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return plain(value.tolist(), unknown)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, int)):
        return value
    if unknown is not None:
        return unknown(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    """Write `data` as indented standard JSON (NaN and infinities as null) to `path` via a same-folder
    temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False, encoding="utf-8") as handle:
        try:
            json.dump(plain(data), handle, indent=2, allow_nan=False)
        except BaseException:
            handle.close()
            os.unlink(handle.name)
            raise
        temporary = handle.name
    os.chmod(temporary, 0o644)  # mkstemp makes it private; these files are meant to be read
    os.replace(temporary, path)
    return path


def read_json(path: str | os.PathLike):
    """The parsed file; raises OSError / ValueError (json.JSONDecodeError is one) as json does."""
    return json.loads(Path(path).read_text(encoding="utf-8"))

