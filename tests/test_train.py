"""Training: it learns (held-out accuracy), writes a complete run folder and a progress stream,
can be cancelled with SIGTERM, and runs under MirroredStrategy on two logical CPU devices."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.training.progress import ProgressWriter, latest_state, phase_history, read_progress

REPO = Path(__file__).resolve().parent.parent
TINY = dict(backbone="small_cnn", weights="none", input_size=64, batch_size=16, epochs=6, patience=6)


def heldout_stage1_accuracy(run_dir: Path) -> float:
    """Stage-1 accuracy of the SAVED model on the run's test cases (never seen in training)."""
    from core.data.pipeline import make_dataset
    from core.evaluation.evaluate import read_split
    from core.model.folders import load_model_folder

    split, missing = read_split(run_dir)  # paths in split.csv are relative to the data folder
    assert not missing
    test = split[split["split"] == "test"]
    model, card = load_model_folder(run_dir / "model")
    dataset = make_dataset(test, card["hierarchy"], 16, input_size=card["input_size"], cache=False)
    predicted = model.predict(dataset, verbose=0)["stage1"].argmax(1)
    return float(np.mean(predicted == (test["label"] == "malignant").to_numpy()))


def events_of(run_dir: Path) -> list[dict]:
    return read_progress(run_dir / "progress.jsonl")


# --- the progress stream (no TensorFlow) ---------------------------------------------------

def test_progress_stream_round_trip_and_partial_last_line(tmp_path, capsys):
    path = tmp_path / "run" / "progress.jsonl"
    writer = ProgressWriter(path)
    writer.emit("start", epochs=2, steps=5)
    writer.emit("epoch_begin", epoch=1, epochs=2, steps=5)
    writer.emit("step", step=3, steps=5, metrics={"loss": np.float32(0.5)})
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["metrics"]["loss"] == 0.5  # echoed
    state = latest_state(read_progress(path))
    assert state["status"] == "running" and state["epoch"] == 1 and state["step"] == 3
    assert state["fraction"] == pytest.approx(0.3)
    writer.emit("epoch_end", epoch=1, epochs=2, metrics={"loss": 0.4, "val_loss": float("nan")})
    with open(path, "a") as stream:
        stream.write('{"event": "epoch_beg')  # a writer caught mid-line
    events = read_progress(path)
    assert [e["event"] for e in events] == ["start", "epoch_begin", "step", "epoch_end"]
    state = latest_state(events)
    assert state["history"] == [{"epoch": 1, "loss": 0.4, "val_loss": None}] and state["fraction"] == 0.5
    with pytest.raises(ValueError, match="Unknown progress event"):
        writer.emit("finish")
    assert read_progress(tmp_path / "missing.jsonl") == []
    assert latest_state([])["status"] == "not started"


def test_a_run_of_several_trainings_counts_its_progress_over_all_of_them():
    """A cross-validation's folds and final model each count their epochs from 1 (the start event states
    the run's total): the bar went to 100 % after the first fold, and the curves zigzagged across folds."""
    events = [{"event": "start", "time": 0.0, "epochs": 6}]
    for phase in ("fold 0", "fold 1"):
        for epoch in (1, 2):
            events += [{"event": "epoch_begin", "epoch": epoch, "epochs": 2, "steps": 4, "message": phase},
                       {"event": "epoch_end", "epoch": epoch, "epochs": 2, "metrics": {"loss": 1.0 / epoch}}]
    events += [{"event": "epoch_begin", "epoch": 1, "epochs": 2, "steps": 4, "message": "final model"},
                {"event": "step", "step": 2, "steps": 4, "message": "final model"}]
    state = latest_state(events)
    assert state["fraction"] == pytest.approx(4.5 / 6) and state["phase"] == "final model" and state["epoch"] == 1
    assert [row["phase"] for row in state["history"]] == ["fold 0"] * 2 + ["fold 1"] * 2
    assert phase_history(state["history"]) == ("fold 1", [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}])
    assert phase_history([]) == (None, [])
    events += [{"event": "epoch_end", "epoch": 1, "epochs": 2, "metrics": {"loss": 0.3}}]
    assert latest_state(events)["fraction"] == pytest.approx(5 / 6)


def test_progress_final_states():
    failed = latest_state([{"event": "start", "time": 1.0}, {"event": "error", "time": 2.0, "message": "boom"},
                           {"event": "end", "time": 3.0, "status": "failed", "message": "boom"}])
    assert failed["status"] == "failed" and failed["error"] == "boom" and failed["elapsed"] == 2.0
    done = latest_state([{"event": "start", "time": 1.0, "epochs": 4},
                         {"event": "end", "time": 5.0, "status": "completed", "model_dir": "runs/x/model"}])
    assert done["status"] == "completed" and done["fraction"] == 1.0 and done["model_dir"] == "runs/x/model"


# --- training ------------------------------------------------------------------------------

def test_finetune_learns_and_writes_a_complete_run(synthetic_breakhis, tmp_path):
    from core.data.splits import assert_no_case_leakage
    from core.training.fit import train

    run = tmp_path / "finetune"
    result = train(dict(data=str(synthetic_breakhis), out=str(run), echo_stdout=False, **TINY))
    assert result["status"] == "completed"
    assert heldout_stage1_accuracy(run) >= 0.95

    for name in ("config.json", "split.csv", "history.csv", "progress.jsonl", "model/model.keras", "model/card.json"):
        assert (run / name).is_file(), name
    split = pd.read_csv(run / "split.csv")
    assert len(split) == 96 and set(split["split"]) == {"train", "val", "test"}
    assert set(split["protocol"]) == {"patient-wise"}
    assert not any(Path(p).is_absolute() for p in split["path"])  # portable: relative to the data folder
    assert_no_case_leakage(split)
    history = pd.read_csv(run / "history.csv")
    assert len(history) == result["epochs_run"] and {"loss", "val_loss", "stage1_accuracy"} <= set(history)

    card = json.loads((run / "model" / "card.json").read_text())
    training = card["training"]
    assert card["backbone"] == "small_cnn" and card["hierarchy"] == "hierarchical" and card["input_size"] == 64
    assert card["demo"] is True  # fewer than 200 training images
    assert training["counts"]["train"] == (split["split"] == "train").sum()
    assert training["mode"] == "finetune" and "HED" in training["augmentation"]
    assert sum(training["by_subtype"].values()) == training["counts"]["train"]
    # What it says it learnt from is its train split, not every image of the folder (issue 25).
    evidence, test = card["evidence"], split[split["split"] == "test"]
    assert evidence["images"] == training["counts"]["train"] < len(split)
    assert evidence["patients"] == split.loc[split["split"] == "train", "case"].nunique()
    assert evidence["figures_measured_on"] == f"the test split ({len(test)} images, {test['case'].nunique()} patients)"
    assert evidence["statement"].startswith(f"weights learnt from {evidence['images']} real images")
    assert {"data_source", "split_protocol", "synthetic_by_subtype", "epochs", "balance", "magnification"} <= set(training)
    assert training["data_source"] == synthetic_breakhis.name  # no absolute build path in the card
    assert training["split"]["images"]["test"] == (split["split"] == "test").sum()  # describe_split, recorded
    assert training["split"]["shared_cases"] == 0 and not training["split"]["leaky"]

    events = events_of(run)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "error" not in kinds
    epoch_ends = [e for e in events if e["event"] == "epoch_end"]
    assert len(epoch_ends) == result["epochs_run"]
    assert {"loss", "val_loss", "stage1_accuracy", "learning_rate"} <= set(epoch_ends[-1]["metrics"])
    assert events[-1]["status"] == "completed" and Path(events[-1]["model_dir"]) == run / "model"
    assert events[-1]["metrics"]["val_stage1_accuracy"] >= 0.9
    state = latest_state(events)
    assert state["status"] == "completed" and len(state["history"]) == result["epochs_run"]
    if (run / "metrics.json").exists():  # written by core.evaluation.evaluate when it is available
        assert json.loads((run / "metrics.json").read_text())["stage1_accuracy"] >= 0.95


def test_fast_mode_with_class_weights_learns(synthetic_breakhis, tmp_path):
    from core.training.fit import train

    run = tmp_path / "fast"
    result = train(dict(data=str(synthetic_breakhis), out=str(run), mode="fast", balance="class_weights",
                        evaluate=False, echo_stdout=False, **TINY))
    assert heldout_stage1_accuracy(run) >= 0.95
    card = json.loads((run / "model" / "card.json").read_text())
    assert card["training"]["mode"] == "fast" and "without augmentation" in card["training"]["augmentation"]
    assert card["training"]["balance"] == "class_weights"
    messages = [e.get("message", "") for e in events_of(run)]
    assert any("extracting features" in m for m in messages)
    assert result["epochs_run"] >= 1 and not (run / "metrics.json").exists()
    # The frozen backbone keeps the statistics its features were computed with (random init here:
    # mean 0, variance 1); only the head's BatchNorm layers are recalibrated.
    from core.model.folders import load_model_folder

    model, _ = load_model_folder(run / "model")
    backbone_bn, head_bn = model.get_layer("cnn_block1_bn"), model.get_layer("branch0_bn_in")
    np.testing.assert_array_equal(np.asarray(backbone_bn.moving_mean), 0.0)
    np.testing.assert_array_equal(np.asarray(backbone_bn.moving_variance), 1.0)
    assert np.abs(np.asarray(head_bn.moving_mean)).max() > 0
    assert model.get_layer("cnn_block1_conv").trainable  # saved unfrozen for later fine-tuning


def test_a_second_fast_run_reads_every_feature_from_the_cache_and_still_learns(synthetic_breakhis, tmp_path,
                                                                             monkeypatch):
    from core.training.fit import train

    monkeypatch.setenv("BREAKHIS_FEATURE_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "first"
    train(dict(data=str(synthetic_breakhis), out=str(first), mode="fast", evaluate=False, echo_stdout=False, **TINY))
    cached = json.loads((first / "model" / "card.json").read_text())["training"]["feature_cache"]
    assert cached["read"] == 0 and cached["extracted"] > 0
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == cached["extracted"]
    second = tmp_path / "second"  # other head settings: the frozen backbone's features are the same
    train(dict(data=str(synthetic_breakhis), out=str(second), mode="fast", evaluate=False, echo_stdout=False,
               **{**TINY, "head_units": 32, "dropout": 0.2, "learning_rate": 3e-3}))
    again = json.loads((second / "model" / "card.json").read_text())["training"]["feature_cache"]
    assert again == {**cached, "read": cached["extracted"], "extracted": 0}
    assert heldout_stage1_accuracy(second) >= 0.95
    other_size = tmp_path / "other_size"  # other preprocessing: nothing may be reused
    train(dict(data=str(synthetic_breakhis), out=str(other_size), mode="fast", evaluate=False, echo_stdout=False,
               **{**TINY, "input_size": TINY.get("input_size", 64) + 16}))
    assert json.loads((other_size / "model" / "card.json").read_text())["training"]["feature_cache"]["read"] == 0


def test_patient_kfold_run_tests_on_its_fold_only(synthetic_breakhis, tmp_path):
    from core.data.breakhis import index_folder
    from core.data.splits import assert_no_case_leakage, patient_kfold
    from core.training.fit import train

    run = tmp_path / "fold1"
    train(dict(data=str(synthetic_breakhis), out=str(run), mode="fast", folds=3, fold=1,
               evaluate=False, echo_stdout=False, **dict(TINY, epochs=2)))
    split = pd.read_csv(run / "split.csv", dtype={"case": str})
    assert_no_case_leakage(split)
    assert set(split["protocol"]) == {"patient-wise 3-fold CV (fold 1)"}
    expected = patient_kfold(index_folder(synthetic_breakhis).images, k=3, seed=0)[1]
    assert set(split.loc[split["split"] == "test", "case"]) == set(expected.loc[expected["split"] == "test", "case"])
    card = json.loads((run / "model" / "card.json").read_text())
    assert card["training"]["split_protocol"] == "patient-wise 3-fold CV (fold 1)"


def test_folds_without_a_fold_cross_validate_every_case_once(synthetic_breakhis, tmp_path):
    from core.training.crossval import cross_validate

    result = cross_validate(dict(data=str(synthetic_breakhis), out=str(tmp_path / "cv"), mode="fast", folds=3,
                                 echo_stdout=False, **dict(TINY, epochs=3)))
    tested = []
    for fold in range(3):
        split = pd.read_csv(tmp_path / "cv" / f"fold-{fold}" / "split.csv", dtype={"case": str})
        tested += split.loc[split["split"] == "test", "case"].unique().tolist()
    assert sorted(tested) == sorted(set(tested)) and len(tested) == 24  # every case tested exactly once
    summary = json.loads((tmp_path / "cv" / "cv.json").read_text())
    accuracy = summary["mean_std"]["model"]["image_stage1_accuracy"]
    per_fold = [f["image_stage1_accuracy"] for f in summary["per_fold"]["model"]]
    assert accuracy["folds"] == 3 and accuracy["mean"] == pytest.approx(np.mean(per_fold))
    assert accuracy["mean"] >= 0.9  # heads on a random small_cnn's features still learn the colour signal
    assert set(summary["mean_std"]) == {"model", "majority", "colour_texture"}
    assert "+-" in (tmp_path / "cv" / "cv.md").read_text() and result["cv"]["folds"] == 3


def test_gan_fill_tops_up_only_the_chosen_subtypes_of_the_training_split(tmp_path):
    from PIL import Image

    from core.data.breakhis import synthetic_name
    from core.testing.synthetic import synthetic_image, write_synthetic_breakhis
    from core.training.fit import train

    rng = np.random.default_rng(0)
    gan_dir = tmp_path / "synthetic"
    gan_dir.mkdir()
    for subtype in ("adenosis", "phyllodes_tumor"):
        for n in range(12):
            Image.fromarray(synthetic_image(subtype, rng)).save(gan_dir / synthetic_name(subtype, "test-gan", 0, n))
    data = write_synthetic_breakhis(tmp_path / "imbalanced")
    for minority in ("adenosis", "phyllodes_tumor"):  # half their images: both become minorities
        for path in data.rglob(f"*/{minority}/*/*/*-00[34].png"):
            path.unlink()
    run = tmp_path / "gan-fill"
    train(dict(data=str(data), out=str(run), mode="fast", balance="synthetic",
               synthetic_dir=str(gan_dir), synthetic_subtypes=["adenosis"], evaluate=False, allow_gan_leak=True,
               echo_stdout=False, **dict(TINY, epochs=1)))
    card = json.loads((run / "model" / "card.json").read_text())
    assert set(card["training"]["synthetic_by_subtype"]) == {"adenosis"}
    assert card["training"]["synthetic_by_subtype"]["adenosis"] > 0
    split = pd.read_csv(run / "split.csv")
    synthetic = split[split["synthetic"].astype(bool)]
    assert len(synthetic) > 0 and set(synthetic["split"]) == {"train"}  # never in val or test
    assert set(synthetic["subtype"]) == {"adenosis"}


def test_bad_settings_give_a_clear_error_not_a_crash(synthetic_breakhis, tmp_path, capsys):
    from core.cli import main as cli

    assert cli(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r1")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert cli(["train", "--data", str(synthetic_breakhis), "--out", str(tmp_path / "r2"), "--backbone", "alexnet"]) == 2
    assert "invalid choice: 'alexnet'" in capsys.readouterr().err
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / "progress.jsonl").write_text("")
    assert cli(["train", "--data", str(synthetic_breakhis), "--out", str(tmp_path / "r3")]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    # A failure after the run started is reported in the stream: error + end failed.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    assert cli(["train", "--data", str(empty), "--out", str(tmp_path / "r4"), "--backbone", "small_cnn"]) == 2
    events = events_of(tmp_path / "r4")
    assert [e["event"] for e in events] == ["error", "end"] and events[-1]["status"] == "failed"
    assert "No BreakHis images" in events[-1]["message"]


def test_a_failed_evaluation_fails_the_run(synthetic_breakhis, tmp_path, monkeypatch, capsys):
    """The model is saved, but a run whose evaluation broke must not end "completed" (exit 1)."""
    import core.evaluation.evaluate
    from core.cli import main as cli

    def broken(*args, **kwargs):
        raise KeyError("stage1")

    monkeypatch.setattr(core.evaluation.evaluate, "evaluate_run", broken)
    run = tmp_path / "evaluation-fails"
    code = cli(["train", "--data", str(synthetic_breakhis), "--out", str(run), "--epochs", "1",
                *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "epochs"]])
    assert code == 1
    end = events_of(run)[-1]
    assert end["event"] == "end" and end["status"] == "failed"
    assert "saved, but its evaluation failed" in end["message"] and "KeyError" in end["message"]
    # What was trained is kept for a re-evaluation, aside: a failed run offers no model (qa-retrain #1).
    assert not (run / "model").exists() and (run / ".unfinished-model" / "model.keras").is_file()
    assert f"was moved aside to {run / '.unfinished-model'}, where the app does not offer it" in end["message"]
    assert (f"move {run / '.unfinished-model'} back to {run / 'model'} and run python -m core evaluate {run}"
            in capsys.readouterr().err)


def test_sigterm_cancels_a_running_training(synthetic_breakhis, tmp_path):
    run = tmp_path / "cancel"
    command = [sys.executable, "-m", "core", "train", "--data", str(synthetic_breakhis), "--out", str(run),
               "--backbone", "small_cnn", "--weights", "none", "--input-size", "32", "--batch-size", "16",
               "--epochs", "1000", "--patience", "1000"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 180
        while not any(e["event"] == "epoch_end" for e in events_of(run)):
            assert process.poll() is None, "training ended before it could be cancelled"
            assert time.time() < deadline, "no epoch finished in time"
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    events = events_of(run)
    assert events[-1]["event"] == "end" and events[-1]["status"] == "cancelled"
    assert latest_state(events)["status"] == "cancelled"
    assert not (run / "model").exists()
    stdout_events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert stdout_events[-1]["status"] == "cancelled"  # the same stream on stdout


def test_a_sigterm_swallowed_inside_keras_still_cancels_at_the_next_batch(tmp_path):
    """Keras wraps its device-to-host copy of the logs in a bare `except: pass` (pythonify_logs);
    under JAX the main thread waits there for nearly every step, so the handler's exception is
    usually raised, and lost, inside it. Here the signal lands inside such a block on purpose: the
    progress callback still stops the fit at that batch's end and the run ends "cancelled"."""
    import keras

    from core.errors import Cancelled
    from core.training.progress import final_events, keras_callback, raise_if_cancelled

    class SwallowedSignal(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2:
                try:  # what Keras' bare except does to the exception the handler raises
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.5)  # the handler runs here, at the next bytecode
                except:  # noqa: E722 - the point of the test
                    pass

    before = signal.getsignal(signal.SIGTERM)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "sparse_categorical_crossentropy")
    writer, batches = ProgressWriter(tmp_path / "progress.jsonl", echo_stdout=False), []
    counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: batches.append(batch))
    with pytest.raises(Cancelled), final_events(writer):
        model.fit(np.zeros((64, 4)), np.zeros(64), batch_size=8, epochs=50, verbose=0,
                  callbacks=[SwallowedSignal(), keras_callback(writer, 50, 8, "test"), counter])
    assert batches == [0, 1]  # batch 2 ended in the progress callback, before the counter saw it
    assert read_progress(tmp_path / "progress.jsonl")[-1]["status"] == "cancelled"
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is back
    raise_if_cancelled()  # and the request is cleared: the next run in this process is not cancelled


DISTRIBUTED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from core.training.fit import train
    result = train(dict(data=sys.argv[1], out=sys.argv[2], strategy="mirrored", devices="/cpu:0,/cpu:1",
                        evaluate=False, echo_stdout=False, **json.loads(sys.argv[3])))
    print("RESULT " + json.dumps(result))
""")


def test_mirrored_strategy_on_two_logical_cpus_learns(synthetic_breakhis, tmp_path):
    run = tmp_path / "mirrored"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    settings = {**TINY, "epochs": 4}  # each epoch costs more here: two replicas share two busy cores
    done = subprocess.run([sys.executable, "-c", DISTRIBUTED, str(synthetic_breakhis), str(run), json.dumps(settings)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((run / "model" / "card.json").read_text())
    distribution = card["training"]["distribution"]
    assert distribution["strategy"] == "MirroredStrategy" and distribution["replicas"] == 2
    assert heldout_stage1_accuracy(run) >= 0.95


def test_train_trains_one_run_and_the_cli_sends_every_fold_to_cross_validation(synthetic_breakhis, tmp_path,
                                                                              monkeypatch):
    import core.training.crossval
    from core.cli import main as cli
    from core.errors import UserInputError
    from core.training.fit import train

    with pytest.raises(UserInputError, match="cross_validate"):
        train(dict(data=str(synthetic_breakhis), out=str(tmp_path / "cv"), folds=3))
    assert not (tmp_path / "cv").exists()  # refused before anything was written
    called = []
    monkeypatch.setattr(core.training.crossval, "cross_validate", lambda config: called.append(config))
    assert cli(["train", "--data", str(synthetic_breakhis), "--out", str(tmp_path / "cv"), "--folds", "3"]) == 0
    assert [(c.folds, c.fold) for c in called] == [(3, None)]


def test_oversampled_copies_are_not_counted_as_evidence(tmp_path, monkeypatch):
    """--balance oversample repeats training rows: the card counted every copy as a real image (39 images
    of 40X read as "learnt from 208 real images" and escaped the DEMO label)."""
    import core.training.runcard as runcard
    from core.testing.synthetic import write_synthetic_breakhis
    from core.training.config import TrainConfig, checked
    from core.training.fit import prepare_data

    data = write_synthetic_breakhis(tmp_path / "imbalanced", images_per_case=2)
    for path in data.rglob("*/adenosis/*/*/*-002.png"):  # one subtype a minority: oversampling copies it
        path.unlink()
    config = checked(TrainConfig(data=str(data), out=str(tmp_path / "run"), balance="oversample", **TINY))
    prepared = prepare_data(config)
    rows, images = len(prepared["train"]), prepared["train"]["path"].nunique()
    assert rows > images  # the copies are there, for the epochs
    monkeypatch.setattr(runcard, "DEMO_BELOW_TRAIN_IMAGES", rows)  # between the distinct images and the rows
    card = runcard.model_card(config, prepared, "random initialisation", {}, {}, {})
    assert card["evidence"]["images"] == images and f"learnt from {images} real images" in card["evidence"]["statement"]
    assert sum(card["evidence"]["by_magnification"].values()) == images
    assert card["training"]["counts"]["train"] == images and card["training"]["train_rows_per_epoch"] == rows
    assert sum(card["training"]["by_subtype"].values()) == images
    assert card["demo"] is True


@pytest.mark.parametrize("options", [[], ["--pipeline", "fields"], ["--folds", "2"]])
def test_a_run_refused_before_it_started_does_not_block_its_out_folder(tmp_path, capsys, options):
    """An empty data folder fails inside the run (its stream ends "failed"); the retry with the same
    --out was refused as "already holds a training run", in both pipelines and in a cross-validation."""
    from core.cli import main as cli
    from core.errors import UserInputError
    from core.paths import refuse_existing_run

    empty, out = tmp_path / "empty", tmp_path / "run"
    empty.mkdir()
    errors = []
    for _ in range(2):
        assert cli(["train", "--data", str(empty), "--out", str(out), "--backbone", "small_cnn", *options]) == 2
        errors.append(capsys.readouterr().err)
    assert errors[0] == errors[1] and "No " in errors[1] and "already holds" not in errors[1], errors
    streams = list(out.rglob("progress.jsonl"))
    assert len(streams) == 1 and [e["event"] for e in read_progress(streams[0])] == ["error", "end"]  # only the retry's
    # A run that started, or a folder with anything else in it, is still protected.
    streams[0].parent.joinpath("notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="already holds"):
        refuse_existing_run(streams[0].parent, ("progress.jsonl",))
    started = tmp_path / "started"
    writer = ProgressWriter(started / "progress.jsonl", echo_stdout=False)
    writer.emit("start", epochs=1)
    writer.emit("end", status="failed", message="MemoryError")
    with pytest.raises(UserInputError, match="already holds"):
        refuse_existing_run(started, ("progress.jsonl", "model"))


@pytest.mark.parametrize("command, said", [
    (["train", "--folds", "2"], "a cross-validation exists to measure every fold"),
    (["compare", "--backbones", "small_cnn"], "compare exists to measure every candidate (its metrics.json): drop "
                                              "--no-evaluate"),
    (["tune", "--max-trials", "1"], "tune exists to measure every trial (its metrics.json): drop --no-evaluate")])
def test_no_evaluate_is_refused_where_the_command_exists_to_measure(synthetic_breakhis, tmp_path, capsys, command, said):
    """They crashed after training the first model (FileNotFoundError: fold-0/metrics.json), and the
    retry was refused because fold-0 held a run."""
    from core.cli import main as cli

    out = tmp_path / "run"
    assert cli([*command, "--data", str(synthetic_breakhis), "--out", str(out), "--backbone", "small_cnn",
                "--weights", "none", "--input-size", "32", "--epochs", "1", "--no-evaluate"]) == 2
    error = capsys.readouterr().err
    assert error.count(said) == 1 and not out.exists()


@pytest.mark.parametrize("command", [["compare", "--backbones", "small_cnn"], ["tune", "--max-trials", "1"]])
def test_compare_and_tune_refuse_the_fields_pipeline_they_would_not_train(synthetic_breakhis, tmp_path, capsys,
                                                                           command):
    """Both always call core.training.fit.train: --pipeline fields silently trained tf.data models."""
    from core.cli import main as cli

    out = tmp_path / "run"
    assert cli([*command, "--data", str(synthetic_breakhis), "--out", str(out), "--backbone", "small_cnn",
                "--weights", "none", "--input-size", "32", "--epochs", "1", "--pipeline", "fields"]) == 2
    error = capsys.readouterr().err
    assert f"{command[0]} trains tf.data runs only, not --pipeline fields; measure each fields setting with `python " \
           "-m core train --pipeline fields --folds 5 ...` and compare their cv.json" in error  # one sentence for both
    assert not out.exists()


@pytest.mark.parametrize("candidates, said", [
    (["small_cnn@abc"], "--candidates small_cnn@abc: the size after @ must be a whole number"),
    (["small_cnn@32", "alexnet@32"], "candidate alexnet-32: Invalid training settings: unknown backbone 'alexnet'"),
    (["small_cnn@32", "small_cnn@16"], "candidate small_cnn-16: Invalid training settings: epochs and batch size"),
    (["small_cnn@32", "small_cnn@32"], "a candidate is named twice: small_cnn@32")])
def test_compare_refuses_bad_candidates_in_words_before_the_first_one_trains(synthetic_breakhis, tmp_path, capsys,
                                                                            candidates, said):
    """small_cnn@abc ended in a ValueError traceback (exit 1); a bad later candidate failed after the
    earlier ones had trained."""
    from core.cli import main as cli

    out = tmp_path / "compare"
    assert cli(["compare", "--data", str(synthetic_breakhis), "--out", str(out), "--weights", "none", "--epochs", "1",
                "--candidates", *candidates]) == 2
    assert said in capsys.readouterr().err and not out.exists()
