"""The package's shape: no import circles, and the light modules stay light (no TensorFlow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.app_helpers import REPO
from tests.import_graph import circles, import_graph


def test_the_core_package_has_no_import_circles():
    graph = import_graph(REPO)
    assert "core.model.predict" in graph["core.model.ensemble"]  # the scan sees real edges
    assert circles(graph) == []


LAYERS = ["data", "model", "evaluation", "training", "gan", "slide", "store", "app", "testing"]  # each imports only those before it
TOP = {"core.cli", "core.__main__"}  # the command line may import anything


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_package_imports_one_after_it():
    upward = [(a, b) for a, edges in import_graph(REPO).items() if a not in TOP for b in edges
              if _layer(b) is not None and (_layer(a) is None or _layer(b) > _layer(a))]
    assert upward == []


def test_only_the_tests_and_benchmarks_import_the_testing_support():
    """core.testing (AppTest and server drivers, synthetic data) is the last layer: no product module,
    the command line included, imports it; the tests and bench/ do."""
    graph = import_graph(REPO)
    assert {"core.testing.apptest", "core.testing.server"} <= set(graph)  # the scan sees the package
    product = [(a, b) for a, edges in graph.items() if not a.startswith("core.testing") for b in edges
               if b.startswith("core.testing")]
    assert product == []


def test_the_scan_finds_a_circle_hidden_in_a_function(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "__init__.py").write_text("")
    (tmp_path / "core" / "a.py").write_text("from core import b\n")
    (tmp_path / "core" / "b.py").write_text("def later():\n    from core.a import thing\n")
    assert circles(import_graph(tmp_path)) == [["core.a", "core.b"]]


def _loaded_after(*modules: str) -> dict:
    """Import `modules` in a fresh interpreter on this checkout; which heavy libraries got loaded."""
    code = (f"import importlib, json, sys; [importlib.import_module(m) for m in {list(modules)!r}]; "
            "import core; print(json.dumps({'core': core.__file__, "
            "'loaded': sorted(m for m in ('tensorflow', 'keras', 'streamlit') if m in sys.modules)}))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["core"].startswith(str(REPO))  # this checkout, not another install
    return result


def test_the_progress_stream_and_the_jobs_code_do_not_load_tensorflow():
    assert _loaded_after("core.training.progress", "core.app.jobs")["loaded"] == []


def test_the_check_sees_tensorflow_when_a_module_does_load_it():
    assert "tensorflow" in _loaded_after("core.model.predict")["loaded"]
