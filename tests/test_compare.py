"""The Compare page's tables (core.app.comparison): what may share a table, and what each model is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.app import comparison

EVALUATED = {"protocol": "patient-wise", "test_set": {"fingerprint": "f"}, "stage1_accuracy": 0.5}


def card_folder(folder: Path, **card) -> Path:
    """A classifier folder with only a card (evaluated on test set "f"): enough for everything Compare
    reads without loading a model."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "card.json").write_text(json.dumps({"backbone": "small_cnn", "hierarchy": "hierarchical",
                                                  "input_size": 32, "sha256": "0" * 64, "metrics": EVALUATED,
                                                  **card}))
    return folder


@pytest.mark.parametrize("name", [None, ["a", "b"], "", "  ", 7])
def test_a_card_name_that_is_not_text_falls_back_to_the_folder_name(tmp_path, name):
    """QA compare #17: a list name crashed the tables (unhashable column), a null one gave 'Make None active'."""
    run = comparison.load_run(str(card_folder(tmp_path / "runs" / "odd" / "model", name=name)))
    assert run.name == "odd"  # a run's model folder is RUN/model: named like a card the run writes
    assert comparison.load_run(str(card_folder(tmp_path / "models" / "plain", name=name))).name == "plain"
    other = comparison.load_run(str(card_folder(tmp_path / "models" / "other", name="other")))
    assert list(comparison.metrics_side_by_side([run, other]).columns)[-2:] == ["odd", "other"]


def test_the_settings_of_a_fields_run_are_read_from_its_card(tmp_path):
    """QA compare #7: a fields run writes no config.json, so its settings read as missing ("Same settings.")."""
    tfdata = card_folder(tmp_path / "tf" / "model", name="tf")
    (tmp_path / "tf" / "config.json").write_text(json.dumps({"pipeline": "tfdata", "input_size": 32, "epochs": 2,
                                                             "out": str(tmp_path / "tf"), "weights_init": "random"}))
    fields = [card_folder(tmp_path / name / "model", name=name, training={
        "pipeline": "fields", "learning_rate": 0.002, "settings": {"pipeline": "fields", "input_size": size, "epochs": 2,
                                                                   "demo": size == 48, "learning_rate": None}})
              for name, size in (("f", 32), ("f48", 48))]
    runs = [comparison.load_run(str(folder)) for folder in (tfdata, *fields)]
    differences = comparison.config_differences(runs).set_index("setting")
    assert differences.loc["pipeline"].tolist() == ["tfdata", "fields", "fields"]
    assert differences.loc["input_size"].tolist() == [32, 32, 48]
    assert differences.loc["learning_rate"].tolist()[1:] == [0.002, 0.002]  # chosen by the pipeline, as recorded
    assert "epochs" not in differences.index and "out" not in differences.index
    assert set(comparison.config_differences(runs[1:]).set_index("setting").index) == {"input_size", "demo"}
