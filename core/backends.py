"""Which Keras backends are installed, what each one sees (GPUs), which pipelines each runs, and the
places a training works around one backend: seeding and saving without loading TensorFlow under
another backend, and the training state built before `fit` so TensorFlow traces a step once.

The fields pipeline (core.training.field_fit) runs under any Keras backend; the tfdata pipeline
needs TensorFlow. Keras reads KERAS_BACKEND once, at its first import, so a run's backend is
chosen by the environment of the process that trains (core.app.jobs passes it to the job).

Detection runs in a child process (`python -m core.backends`): a JAX client takes most of a GPU's
memory for itself once started, and the app's server must not hold a GPU that training needs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys

from core.paths import REPO

KERAS_BACKENDS = ("tensorflow", "jax")
TENSORFLOW_ONLY_PIPELINES = ("tfdata",)
PIPELINE_NAMES = {"tfdata": "tf.data", "fields": "Fields"}  # as the Retrain form's Pipeline choice names them
ENVIRONMENT = "KERAS_BACKEND"


def installed_backends() -> list[str]:
    """The Keras backends importable here (without importing them)."""
    return [name for name in KERAS_BACKENDS if importlib.util.find_spec(name) is not None]


def current_backend() -> str:
    """The backend Keras uses in this process (as it would choose it: KERAS_BACKEND, else TensorFlow)."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    return os.environ.get(ENVIRONMENT, "tensorflow")


def probe(backend: str) -> dict:
    """What one backend sees, in this process: {backend, version, gpus: [names], devices: [names]}."""
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
        return {"backend": backend, "version": tf.__version__, "gpus": gpus,
                "devices": [d.name for d in tf.config.list_physical_devices()]}
    if backend == "jax":
        import jax

        devices = jax.devices()
        return {"backend": backend, "version": jax.__version__,
                "gpus": [f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}".strip()
                         for d in devices if d.platform != "cpu"],
                "devices": [f"{d.platform}:{d.id}" for d in devices]}
    raise ValueError(f"unknown Keras backend {backend!r} (one of {KERAS_BACKENDS})")


def machine() -> dict:
    """Where this process runs: the Keras backend and the devices it sees (probe), the CPU count and
    the platform (a GAN session's record, and every bench's JSON)."""
    seen = probe(current_backend())
    return {"backend": seen["backend"], "backend_version": seen["version"], "gpus": seen["gpus"],
            "cpus": os.cpu_count(), "platform": platform.platform()}


def detect(backends=None, timeout: float = 180.0) -> dict[str, dict]:
    """{backend: probe(backend), or {"backend", "error"}} for each installed backend (or those named),
    each probed in its own child process (all at once), without preallocating GPU memory."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_CPP_MIN_LOG_LEVEL": "3"}
    children = {backend: subprocess.Popen([sys.executable, "-m", "core.backends", backend], cwd=REPO, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for backend in (backends or installed_backends())}
    found = {}
    for backend, child in children.items():
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            found[backend] = {"backend": backend, "error": f"no answer within {timeout:.0f} s"}
            continue
        lines = [line for line in out.splitlines() if line.startswith("{")]
        found[backend] = (json.loads(lines[-1]) if child.returncode == 0 and lines else
                          {"backend": backend, "error": (err.strip().splitlines() or ["failed"])[-1]})
    return found


def backend_problem(backend: str, pipeline: str, installed=None) -> str | None:
    """Why `pipeline` cannot train under `backend` here, in words, or None."""
    installed = installed_backends() if installed is None else installed
    if backend not in KERAS_BACKENDS:
        return f"unknown Keras backend {backend!r}: choose one of {list(KERAS_BACKENDS)}"
    if backend not in installed:
        return f"the Keras backend {backend} is not installed here"
    if pipeline in TENSORFLOW_ONLY_PIPELINES and backend != "tensorflow":
        return (f"the {PIPELINE_NAMES.get(pipeline, pipeline)} pipeline (--pipeline {pipeline}) runs on TensorFlow "
                f"only: choose the Fields pipeline (--pipeline fields) to train under {backend}, or the tensorflow "
                "backend")
    return None


def set_seed(seed: int) -> None:
    """keras.utils.set_random_seed, minus its TensorFlow import under another backend (it imports
    TensorFlow wherever it is installed, seconds and hundreds of MB for a JAX run that never uses it)."""
    import keras  # here: importing Keras loads its backend, which detection and the app's form do not need
    import numpy as np

    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    try:
        from keras.src.backend.common import global_state
        from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR
        from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED
    except ImportError:  # another Keras layout: the public call, TensorFlow import and all
        keras.utils.set_random_seed(seed)
        return
    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)


def build_training_state(model, batch) -> None:
    """Create the optimizer's and the compiled losses' variables before `fit`. Keras' TensorFlow trainer
    without a distribution strategy creates them inside the first traced training step, which TensorFlow
    then traces a second time (a tf.function may create variables only in its first trace): measured,
    two traces of every model's step, about 5 s each for the small CNN on 2 CPU cores. Keras builds them
    first itself under JAX and under a strategy, through Trainer._symbolic_build; it is private, so a
    Keras without it keeps the double trace rather than failing. `batch`: one batch, or a tf.data
    dataset's element_spec (only shapes and dtypes are read)."""
    import keras

    build = getattr(model, "_symbolic_build", None)
    if build is not None and keras.backend.backend() == "tensorflow":
        with model.distribute_strategy.scope():  # a model made under a strategy keeps its variables there
            build(data_batch=batch)


@contextlib.contextmanager
def saving_without_tensorflow():
    """Keras' serializer asks whether TensorFlow is installed (`tf.available`, to convert its shapes and dtypes)
    for every object it saves, which imports TensorFlow wherever it is installed: seconds and hundreds of MB in
    a run under another backend that never uses it (each fold's model of a JAX cross-validation). No object of a
    process that has not imported TensorFlow can be a TensorFlow one, so there the save is told it is absent.
    Private Keras names: another Keras layout saves as before."""
    import keras

    try:
        from keras.src.utils.module_utils import tensorflow as lazy
    except ImportError:
        lazy = None
    if lazy is None or keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        yield
        return
    before = lazy._available
    lazy._available = False
    try:
        yield
    finally:
        lazy._available = before


def job_environment(backend: str | None) -> dict[str, str]:
    """What a training job's environment adds to choose its backend."""
    return {ENVIRONMENT: backend} if backend else {}


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))
