"""What every benchmark shares: its `--smoke` flag, its one JSON object (printed and, with a path,
written) and the machine it was measured on. `main()` ends with `return emit(result, args.out, args.smoke)`.

Imported first by every bench (`python bench/NAME.py` puts bench/ on the path): it puts this
checkout ahead of an installed copy, so a bench measures the code next to it even where
`pip install -e` points at another checkout.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
if str(CHECKOUT) not in sys.path[:2]:
    sys.path.insert(1, str(CHECKOUT))  # after bench/ itself; `core` is this checkout's

SMOKE_HELP = ("tiny sizes, seconds: checks that the bench runs end to end (CI runs every bench so, "
              "tests/test_benches.py); its figures measure nothing")


def add_smoke(parser) -> None:
    """The `--smoke` flag every bench has."""
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def machine() -> dict:
    """Where the numbers come from: Python, platform, CPU count, the versions of what is loaded, the
    Keras backend and its devices (core.backends.machine, what a GAN session records too, when the
    bench loaded Keras) and the checkout whose `core` was measured."""
    versions = {name: sys.modules[name].__version__ for name in ("tensorflow", "keras", "jax", "numpy")
                if name in sys.modules}
    if "keras" in sys.modules:
        from core.backends import machine as backend_machine

        seen = backend_machine()
        versions |= {"keras_backend": seen["backend"], "gpus": seen["gpus"]}
    code = sys.modules["core"].__file__ if "core" in sys.modules else None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            **versions, "core": str(Path(code).parent) if code else None}


def emit(result: dict, out: Path | None = None, smoke: bool = False) -> int:
    """Print (and with `out`, write) the result, with the bench's name and machine; returns the exit
    status 0. A smoke run says so in its JSON and writes no file (its figures measure nothing)."""
    name = Path(sys.modules["__main__"].__file__).stem if hasattr(sys.modules["__main__"], "__file__") else None
    result = {"bench": result.get("bench", name), "smoke": smoke, **result}
    result.setdefault("machine", machine())
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if out and not smoke:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0
