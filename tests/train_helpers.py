"""What the training tests share: a tiny model's settings, the held-out accuracy of a run's saved model,
and a run's progress events."""

from pathlib import Path

import numpy as np

from core.training.progress import read_progress

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
