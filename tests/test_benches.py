"""Benchmarks must not rot unseen: every bench in bench/ (any script there with a __main__ block, found
by glob, so a new one is included) runs as the README documents it, `python bench/NAME.py --smoke`
from the repository root with no PYTHONPATH, exits 0 and ends its output with its JSON object.
CI runs the test suite, so CI runs every bench this way."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
# What each bench's JSON must hold besides "bench", "smoke" and "machine" (a new bench: those three).
EXPECTED = {
    "app_load": ("apptest", "signed_in"),
    "audit_load": ("baseline_one_session", "load", "crash"),
    "diagnose": ("diagnosis_s", "ratio", "steps_s"),
    "fast_full": ("first_run_s", "second_run_with_other_heads_s"),
    "gan_sample": ("generators", "meets_goal"),
    "gpu_train": ("sweep", "best_images_per_s"),
    "slide": ("throughput", "memory", "dask"),
    "stain_shift": ("without_normalisation", "with_normalisation"),
    "train_input": ("pipeline", "training", "ratio"),
    "trust_synthetic": ("calibration_of_member0_on_test", "ensemble", "members"),
}


def benches() -> list[Path]:
    return sorted(p for p in BENCH.glob("*.py") if re.search(r"^if __name__ == .__main__.:", p.read_text(), re.M))


def last_json(stdout: str) -> dict:
    """The JSON object the output ends with (printed indented, or on one line)."""
    lines = stdout.rstrip().splitlines()
    for start in reversed([i for i, line in enumerate(lines) if line.startswith("{")]):
        try:
            return json.loads("\n".join(lines[start:]))
        except json.JSONDecodeError:
            continue
    raise AssertionError(f"no JSON object at the end of the output:\n{stdout[-2000:]}")


def test_the_glob_finds_every_bench_and_the_readme_documents_each():
    names = {p.stem for p in benches()}
    assert set(EXPECTED) <= names and "common" not in names
    readme = (REPO / "README.md").read_text()
    for name in names:
        assert f"python bench/{name}.py" in readme, f"README does not document bench/{name}.py"
    assert "PYTHONPATH" not in "\n".join(line for line in readme.splitlines() if "bench/" in line)


def test_documented_slide_call_examples_name_a_model_with_test_patients():
    """bench/slide_call.py's default --split test rebuilds the model's own test split: an example
    naming a cross-validated final model (models/default learnt from every patient) fails as typed."""
    from core.training.runcard import cross_validation_folds

    texts = (REPO / "README.md").read_text() + (BENCH / "slide_call.py").read_text()
    examples = re.findall(r"python bench/slide_call\.py --model [^\n]*", texts)
    assert examples
    for line in examples:
        model = line.split()[3]
        if "--split unseen" not in line:
            assert not cross_validation_folds(json.loads((REPO / model / "card.json").read_text())), line


def test_no_bench_imports_the_tests():
    for path in BENCH.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n == "tests" or n.startswith("tests.")], path.name


def test_last_json_reads_an_indented_object_after_other_output():
    assert last_json('training...\n{"a": 1}\n{\n  "bench": "x",\n  "b": {\n    "c": 2\n  }\n}\n') == \
        {"bench": "x", "b": {"c": 2}}
    with pytest.raises(AssertionError, match="no JSON"):
        last_json("done\n{ not json\n")


@pytest.mark.parametrize("bench", benches(), ids=lambda path: path.stem)
def test_every_bench_runs_in_smoke_mode_and_ends_with_its_json(bench):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, f"bench/{bench.name}", "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-3000:]}"
    result = last_json(done.stdout)
    assert result["bench"] == bench.stem and result["smoke"] is True
    assert result["machine"]["core"] == str(REPO / "core")  # this checkout's code, not another install's
    assert [key for key in EXPECTED.get(bench.stem, ()) if key not in result] == []
    if bench.stem == "app_load" and os.path.exists("/usr/bin/chromium"):  # its Chromium sessions ran too
        assert result["browser"]["1"]["server_cpu_s_per_upload"] > 0 and result["signed_in"] is True


def test_the_profile_groups_samples_by_what_the_server_was_doing():
    from core.testing.profiling import summarise

    runner = "run (/py/threading.py:1);_run_script (/sp/streamlit/runtime/scriptrunner/script_runner.py:9)"
    raw = "\n".join([
        f"{runner};ScriptRunner._on_script_finished (/sp/streamlit/runtime/scriptrunner/script_runner.py:1054) 6",
        f"{runner};<module> (/r/pages/diagnose.py:5);explain (/r/core/model/cam.py:3);call (/sp/tensorflow/x.py:2) 3",
        f"{runner};<module> (/r/pages/diagnose.py:5);image (/sp/streamlit/elements/image.py:7) 1",
        "not a sample line",
    ])
    profile = summarise(raw, rate=100)
    assert profile["samples"] == 10 and profile["cpu_s_sampled"] == 0.1
    assert list(profile["by_activity"]) == ["Streamlit's gc.collect(2) after each run (runner.postScriptGC)",
                                            "model pass (TensorFlow / Keras)",
                                            "pictures encoded for the page (st.image)"]
    assert profile["by_activity"]["model pass (TensorFlow / Keras)"] == {"cpu_s": 0.03, "share": 0.3}
    inclusive = {f["function"]: f["cpu_s"] for f in profile["top_app_functions_inclusive"]}
    assert inclusive == {"<module> (/r/pages/diagnose.py)": 0.04, "explain (/r/core/model/cam.py)": 0.03}


SLOW_RUN_WAITING, FAST_RUN_ENDED = threading.Event(), threading.Event()


def _two_forms():
    import streamlit as st

    import tests.test_benches as here

    if st.session_state.get("slow"):
        here.SLOW_RUN_WAITING.set()
        assert here.FAST_RUN_ENDED.wait(60)  # the other session's run ends meanwhile
    for name in ("first", "second"):
        with st.form(name):
            st.form_submit_button("Save")


@pytest.mark.parametrize("patched", [True, False])
def test_concurrent_apptests_keep_their_forms_only_with_the_patch(patched, monkeypatch):
    """bench/app_load.py runs AppTest sessions in threads; streamlit clears its runtime when any
    one run ends, which breaks the others' forms unless core.testing.apptest patches that."""
    from streamlit.testing.v1 import AppTest

    from core.testing.apptest import run_apptests_concurrently

    if patched:
        run_apptests_concurrently(monkeypatch)
    slow, fast = AppTest.from_function(_two_forms, default_timeout=60), AppTest.from_function(_two_forms, default_timeout=60)
    slow.session_state["slow"] = True
    SLOW_RUN_WAITING.clear(), FAST_RUN_ENDED.clear()
    thread = threading.Thread(target=slow.run)
    thread.start()
    assert SLOW_RUN_WAITING.wait(60)
    fast.run()
    FAST_RUN_ENDED.set()
    thread.join()
    assert not fast.exception
    assert bool(slow.exception) is not patched  # without the patch: StreamlitDuplicateElementKey
