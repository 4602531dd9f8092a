"""Run a script under Keras' JAX backend in a fresh process that cannot import TensorFlow.

That process is the GPU machine this project is lent (JAX, no TensorFlow): whatever the script
imports must work there. Tests train a few steps this way and then load the result here, under
TensorFlow, as the app does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

WITHOUT_TENSORFLOW = """
import sys
class NoTensorFlow:  # this process is a machine without TensorFlow (the GPU machine): importing it fails
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras_vis"):
            raise ImportError("no TensorFlow on this machine")
sys.meta_path.insert(0, NoTensorFlow())
"""


def jax_environment() -> dict:
    """This process's environment (read when a child starts: the suite's shared JAX compilation cache) with
    Keras on JAX, on the CPU, and the repository importable."""
    return {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}


def run_under_jax(script: str, *args, timeout: float = 600) -> dict:
    """Run `script` (Python source) with KERAS_BACKEND=jax and TensorFlow unimportable; returns the
    JSON object its last line of output printed. A failure raises with the end of its stderr."""
    done = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW + script, *map(str, args)], env=jax_environment(),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if done.returncode != 0:
        raise AssertionError(f"the JAX process failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
