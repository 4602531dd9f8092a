"""Training: it learns (held-out accuracy) and writes a complete run folder and a progress stream
(tests/test_train_control.py: refusals, cancellation, MirroredStrategy)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.training.progress import ProgressWriter, latest_state, phase_history, read_progress
from tests.train_helpers import TINY, events_of, heldout_stage1_accuracy

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
