"""What every benchmark ends with: its one JSON object, printed and (with a path) written, and the
machine it was measured on. `main()` ends with `return emit(result, args.out)`."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def machine() -> dict:
    """Where the numbers come from: Python, platform, CPU count, the versions of what is loaded and the
    Keras backend."""
    versions = {name: sys.modules[name].__version__ for name in ("tensorflow", "keras", "jax", "numpy")
                if name in sys.modules}
    if "keras" in sys.modules:
        versions["keras_backend"] = sys.modules["keras"].backend.backend()
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(), **versions}


def emit(result: dict, out: Path | None = None) -> int:
    """Print (and with `out`, write) the result; returns the exit status 0."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0
