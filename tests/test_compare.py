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
