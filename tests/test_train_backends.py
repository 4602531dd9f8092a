"""Training where the compute is (issue 24): the Keras backends a run can use, the job's backend,
the field pack that travels to a GPU machine, and the JAX path free of TensorFlow (CPU only)."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from core import backends
from core.app import jobs, performance, retrain
from core.cli import main
from core.errors import UserInputError
from core.testing.jax_process import jax_environment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_installed_backends_are_the_importable_ones(monkeypatch):
    real = backends.importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None if name == "tensorflow" else real(name))
    assert backends.installed_backends() == ["jax"]  # jax is installed here; tensorflow "is not"
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    assert backends.installed_backends() == []
    assert retrain.backend_choices() == []


def test_what_each_backend_sees_in_words():
    seen = {"tensorflow": {"backend": "tensorflow", "version": "2.21.0", "gpus": [], "devices": ["CPU:0"]},
            "jax": {"backend": "jax", "version": "0.11.2", "gpus": ["gpu:0 NVIDIA H200"], "devices": ["gpu:0"]},
            "other": {"backend": "other", "error": "ImportError: no"}}
    gpu, lines = retrain.device_lines(seen)
    assert gpu is True
    assert lines == ["tensorflow 2.21.0 sees no GPU: it trains on the CPU.",
                     "jax 0.11.2 sees 1 GPU(s): gpu:0 NVIDIA H200.", "other: cannot be used here (ImportError: no)."]
    assert retrain.backend_choices(seen) == ["tensorflow", "jax"]  # one that failed its probe is not offered
    assert retrain.device_lines({"tensorflow": seen["tensorflow"]})[0] is False
    assert "No Keras backend" in retrain.device_lines({})[1][0]


def test_probing_jax_in_process_and_a_broken_backend_in_a_child():
    jax_seen = backends.probe("jax")
    assert jax_seen["backend"] == "jax" and jax_seen["devices"] and jax_seen["version"]
    assert all(not gpu.startswith("cpu") for gpu in jax_seen["gpus"])
    broken = backends.detect(["nosuch"], timeout=60)["nosuch"]
    assert "unknown Keras backend" in broken["error"]


def test_jax_with_the_tfdata_pipeline_is_refused(tmp_path, monkeypatch):
    both = ["tensorflow", "jax"]
    assert "TensorFlow only" in backends.backend_problem("jax", "tfdata", both)
    assert backends.backend_problem("jax", "fields", both) is None
    assert backends.backend_problem("tensorflow", "tfdata", both) is None
    assert "not installed" in backends.backend_problem("jax", "fields", ["tensorflow"])
    assert "unknown" in backends.backend_problem("torch", "fields", both)
    data = tmp_path / "data"
    data.mkdir()
    values = {"data": str(data), "pipeline": "tfdata"}
    with pytest.raises(UserInputError, match="TensorFlow only"):
        retrain.training_config(values, tmp_path / "runs", backend="jax")
    assert retrain.training_config({**values, "pipeline": "fields"}, tmp_path / "runs", backend="jax").pipeline == "fields"
    monkeypatch.setattr(backends, "current_backend", lambda: "jax")  # the CLI refuses it too, before any run
    code = main(["train", "--pipeline", "tfdata", "--data", str(data), "--out", str(tmp_path / "run")])
    assert code == 2 and not (tmp_path / "run").exists()


def test_the_job_trains_with_the_chosen_backend(tmp_path):
    command = [sys.executable, "-c", "import os; print('backend=' + os.environ['KERAS_BACKEND'], flush=True)"]
    job = jobs.start_job(command, tmp_path / "run", {}, root=tmp_path, environment=backends.job_environment("jax"))
    deadline = time.time() + 30
    while "backend=" not in jobs.log_tail(job) and time.time() < deadline:
        time.sleep(0.1)
    assert "backend=jax" in jobs.log_tail(job)
    assert jobs.read_job(tmp_path).environment == {"KERAS_BACKEND": "jax"}
    assert backends.job_environment(None) == {}


def test_the_performance_page_names_the_backend_a_model_was_trained_with():
    card = {"training": {"backend": "jax", "pipeline": "fields", "seconds": 820.4, "epochs": 34},
            "versions": {"keras_backend": "jax", "jax": "0.11.2"}}
    assert performance.backend_text(card).strip() == "Trained with Keras backend jax 0.11.2 in 820 s"
    info = {"name": "m", "demo": False, "limited": False, "evidence": "", "backbone": "resnet18",
            "hierarchy": "hierarchical", "data": "pack", "protocol": "patient-wise"}
    training = performance.card_summary(card, info)["training"]
    assert "Keras backend jax" in training and "Field recipe, 34 epochs" in training
    assert "backend tensorflow" in performance.backend_text({"versions": {"keras_backend": "tensorflow"}})
    assert performance.backend_text({}) == ""


def test_the_model_card_of_a_cross_validated_field_model_shows_what_it_records_and_nothing_twice():
    """A fields run's card has no train/val/test counts and no mode: the summary says what its weights
    learnt from and its recipe, never 'images unknown' or 'Mode ?', and the evidence keeps 'CV'."""
    from core.app.registry import describe_model

    statement = "weights learnt from 757 real images of 46 patients; figures measured on 5-fold CV"
    card = {"name": "m", "backbone": "resnet18_half", "hierarchy": "hierarchical", "input_size": 128,
            "weights_init": "random initialisation", "metrics": {"protocol": "patient-wise 5-fold cross-validation"},
            "evidence": {"images": 757, "patients": 46, "limited": True, "statement": statement,
                         "by_magnification": {"100X": 31, "200X": 641, "400X": 40, "40X": 45}},
            "training": {"pipeline": "fields", "backend": "tensorflow", "epochs": 30, "seconds": 139.0,
                         "data_source": "real", "subtype_refit": {"C": 0.1},
                         "settings": {"mode": "finetune", "batch_size": 64, "band_limit": True, "balance": "none"}}}
    summary = performance.card_summary(card, describe_model(card))
    text = " ".join(summary.values())
    assert "unknown" not in text and "?" not in text and "Mode" not in text
    assert "; weights learnt from 757 images" in summary["training"]
    assert "Field recipe, 30 epochs, batch 64, band-limited fields, subtype heads refitted" in summary["training"]
    assert summary["training"].count("30 epochs") == 1
    assert summary["evidence"].startswith("Weights learnt from 757") and "5-fold CV" in summary["evidence"]
    assert summary["evidence"].endswith("by magnification: 40X 45, 100X 31, 200X 641, 400X 40")
    split_card = {"training": {"counts": {"train": 400, "val": 100, "test": 200}, "mode": "finetune", "epochs": 8}}
    split = performance.card_summary(split_card, describe_model(split_card))["training"]
    assert "; images train 400 · val 100 · test 200" in split and "Mode finetune, 8 epochs" in split


def test_pack_fields_round_trip(samples_dir, tmp_path):
    from core.data.breakhis import index_folder
    from core.data.fields import load_fields, read_pack

    assert main(["pack-fields", "--data", str(samples_dir), "--out", str(tmp_path / "pack"),
                 "--magnification", "40X"]) == 0
    table, fields = read_pack(tmp_path / "pack")
    index = index_folder(samples_dir).images
    index = index[(index["magnification"] == "40X") & ~index["synthetic"].astype(bool)].reset_index(drop=True)
    assert len(table) == len(index) > 0
    assert list(table["subtype"]) == list(index["subtype"]) and list(table["label"]) == list(index["label"])
    assert list(table["case"]) == list(index["case"])
    original = load_fields(index["path"]).astype(np.float32)
    assert fields.shape == original.shape == (len(index), 230, 350, 3)
    assert np.abs(fields - original).mean() < 3.0  # JPEG at quality 92, no chroma subsampling
    assert main(["pack-fields", "--data", str(samples_dir), "--out", str(tmp_path / "pack")]) == 2  # never over a pack


def test_head_logits_stay_float32_under_mixed_bfloat16():
    import keras

    from core.model.classifier import build_classifier
    from core.training.config import TrainConfig
    from core.training.field_fit import float32_copy, training_model

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        classifier, _ = build_classifier("small_cnn", "hierarchical", None, 32)
        model = training_model(classifier, (46, 70), 1.0, 0.55, 0)
        assert {k: keras.backend.standardize_dtype(t.dtype) for k, t in model.output.items()} == \
            {"stage1_logits": "float32", "subtype8_logits": "float32"}
        assert classifier.get_layer("branch0_dense").compute_dtype == "bfloat16"  # the policy did apply
        config = TrainConfig(data="", out="", backbone="small_cnn", input_size=32, weights="none")
        portable = float32_copy(classifier, config)  # what fit_fields saves after a mixed-precision run
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"  # the caller's policy is kept
        assert {layer.compute_dtype for layer in portable.layers} == {"float32"}
        assert all(np.array_equal(a, b) for a, b in zip(portable.get_weights(), classifier.get_weights()))
        image = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
        low, full = classifier.predict_on_batch(image), portable.predict_on_batch(image)
        assert np.allclose(np.asarray(low["stage1"], np.float32), full["stage1"], atol=0.05)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_the_jax_training_path_imports_no_tensorflow():
    code = ("import json, sys, core.training.field_run, core.training.field_fit, core.cli, core.backends; "
            "core.cli.build_parser(); "  # every command's options, as `python -m core train` parses them
            "print(json.dumps([m for m in ('tensorflow', 'plotly', 'streamlit') if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=jax_environment(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


_SAVE_UNDER_JAX = """
import json, sys
import numpy as np
from keras.src.utils.module_utils import tensorflow as lazy
from core.model.classifier import build_classifier
from core.model.folders import save_model_folder
model, _ = build_classifier("small_cnn", "hierarchical", weights=None, input_size=32)
save_model_folder(model, sys.argv[1], {"backbone": "small_cnn", "hierarchy": "hierarchical", "name": "jax-saved"})
image = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
np.save(sys.argv[2], np.asarray(model.predict_on_batch(image)["stage1"]))
print(json.dumps({"tensorflow_loaded": "tensorflow" in sys.modules, "asked_later": lazy._available}))
"""


def test_a_model_saved_under_jax_does_not_import_tensorflow_where_it_is_installed(tmp_path):
    """Keras' serializer imported TensorFlow (installed here) on every save to ask whether an object was one of
    its shapes: seconds and hundreds of MB in each fold of a JAX run. The file still loads under TensorFlow,
    with the same outputs, and Keras' own question is left as it was after the save."""
    done = subprocess.run([sys.executable, "-c", _SAVE_UNDER_JAX, str(tmp_path / "model"), str(tmp_path / "out.npy")],
                          cwd=REPO, env=jax_environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"tensorflow_loaded": False, "asked_later": None}
    from core.model.folders import load_model_folder

    model, card = load_model_folder(tmp_path / "model")
    assert card["versions"]["keras_backend"] == "jax" and "tensorflow" not in card["versions"]
    image = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    assert np.allclose(model.predict_on_batch(image)["stage1"], np.load(tmp_path / "out.npy"), atol=1e-5)


def test_gpu_train_smoke_under_jax(tmp_path):
    out = tmp_path / "gpu_train.json"
    done = subprocess.run([sys.executable, "bench/gpu_train.py", "--smoke", "--out", str(out)], cwd=REPO,
                          env=jax_environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["smoke"] is True and not out.exists()  # a smoke run's figures measure nothing: no file
    assert result["backend"] == "jax" and result["machine"]["keras_backend"] == "jax"
    assert result["sweep"][0]["images_per_s"] > 0 and result["best_images_per_s"] > 0
    assert result["heads_float32"] is True and result["meets_goal"] is False  # a CPU never meets a GPU goal
    assert "tensorflow" not in result["machine"]  # the JAX run never loaded TensorFlow


def test_gan_train_under_jax_refuses_float16_before_any_work(tmp_path):
    """The GAN trains under JAX (tests/test_gan_learning.py), but its stateless step keeps no loss scale:
    mixed_float16 stops with a usage error naming mixed_bfloat16, before reading data or writing."""
    done = subprocess.run([sys.executable, "-m", "core", "gan", "train", "--data", str(tmp_path), "--out",
                           str(tmp_path / "gan"), "--precision", "mixed_float16"], cwd=REPO, env=jax_environment(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "mixed_bfloat16" in done.stderr
    assert not (tmp_path / "gan").exists()


@pytest.mark.parametrize("backend, gpus, expected", [("tensorflow", [], "float32"), ("jax", [], "float32"),
                                                     ("tensorflow", ["GPU:0"], "mixed_float16"),
                                                     ("jax", ["cuda:0 H200"], "mixed_bfloat16")])
def test_gan_precision_auto_follows_the_backend_and_its_devices(monkeypatch, backend, gpus, expected):
    import core.gan.train as gan_train

    monkeypatch.setattr(gan_train, "current_backend", lambda: backend)
    monkeypatch.setattr(gan_train, "probe", lambda name: {"backend": name, "gpus": gpus})
    assert gan_train.gan_precision("auto") == expected
    assert gan_train.gan_precision("float32") == "float32"
