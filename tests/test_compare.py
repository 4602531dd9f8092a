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


def test_every_column_carries_the_models_badge_and_a_demo_models_figures_are_not_shown(tmp_path):
    """QA compare #6: DEMO models' figures were shown next to real ones, and no model was marked."""
    demo = card_folder(tmp_path / "demo", name="demo", demo=True)
    limited = card_folder(tmp_path / "limited", name="limited", evidence={"limited": True})
    plain = card_folder(tmp_path / "plain", name="plain")
    runs = [comparison.load_run(str(folder)) for folder in (demo, limited, plain)]
    assert [run.demo for run in runs] == [True, False, False]
    table = comparison.metrics_side_by_side(runs).set_index("metric")
    assert table.loc["model"].tolist()[1:] == ["DEMO · demo (small_cnn)", "LIMITED DATA · limited (small_cnn)",
                                               "plain (small_cnn)"]  # registry.model_badge, as on every prediction
    assert table.loc["stage-1 accuracy"].iloc[0].tolist()[1:] == [comparison.NOT_SHOWN_DEMO, "0.500", "0.500"]


def test_the_compare_page_names_demo_models_and_shows_none_of_their_figures(tmp_path, monkeypatch):
    """QA compare #6 on the page: the warning says why, each button is under its model's badge."""
    from tests.app_helpers import app_with_models, make_model_folder, texts

    models = tmp_path / "models"
    folders = [make_model_folder(models / name, demo=name == "demo", name=name, metrics=EVALUATED)
               for name in ("demo", "real")]
    app = app_with_models(monkeypatch, models, folders[1], tmp_path / "runs")
    app.switch_page("pages/compare.py").run()
    app.multiselect(key="compare_models").set_value([str(f) for f in folders]).run()
    assert not app.exception, app.exception
    assert "DEMO model demo: a DEMO model exists to show how the app works and has NO valid accuracy" in \
        texts(app.warning)
    [table] = [frame.value for frame in app.dataframe if "metric" in frame.value.columns]
    assert table["demo"].iloc[0] == "DEMO · demo (small_cnn)"
    assert set(table["demo"].iloc[1:-1]) == {comparison.NOT_SHOWN_DEMO} and "0.500" in set(table["real"])
    assert [c.value for c in app.caption if c.value.startswith(("DEMO", "real"))] == ["DEMO · demo (small_cnn)",
                                                                                      "real (small_cnn)"]


def test_a_model_whose_weights_are_missing_or_fail_their_checksum_is_not_offered(tmp_path, monkeypatch):
    """QA compare #11: a tampered model (or one without model.keras) was made active with a green 'is active';
    only Diagnose then refused it. The check is the loader's own (core.model.folders.verify_checksum)."""
    from core.model.folders import save_ensemble
    from tests.app_helpers import app_with_models, make_model_folder, texts

    models = tmp_path / "models"
    good, tampered, missing = (make_model_folder(models / name, demo=False, name=name, metrics=EVALUATED)
                               for name in ("good", "tampered", "missing"))
    ensemble = save_ensemble([good, tampered], models / "pair")
    with open(tampered / "model.keras", "ab") as file:
        file.write(b"x")
    (missing / "model.keras").unlink()
    problems = {path.name: comparison.weights_problem(comparison.load_run(str(path)))
                for path in (good, tampered, missing, ensemble)}
    assert problems["good"] is None
    assert problems["tampered"].endswith("model file does not match its card - it may be corrupt or tampered")
    assert problems["missing"] == f"{missing} has a card but no model.keras"
    assert problems["pair"].endswith("tampered/model.keras: model file does not match its card - it may be corrupt "
                                     "or tampered")  # a member fails as the loader would find it
    app = app_with_models(monkeypatch, models, good, tmp_path / "runs")
    app.switch_page("pages/compare.py").run()
    app.multiselect(key="compare_models").set_value([str(f) for f in (good, tampered, missing)]).run()
    assert not app.exception, app.exception
    assert "tampered cannot be made active: " in texts(app.error) and "missing cannot be made active: " in \
        texts(app.error)
    assert [b.label for b in app.button if b.label.startswith("Make ")] == []  # good is already active
    assert [s.value for s in app.success] == ["good is active"]
