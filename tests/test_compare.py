"""The Compare page's tables (core.app.comparison): what may share a table, and what each model is."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from core.app import comparison
from tests.app_helpers import REPO, tables

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
        "pipeline": "fields", "learning_rate": 0.002,
        "settings": {"pipeline": "fields", "input_size": size, "epochs": 2, "demo": size == 48, "learning_rate": None}})
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
    [table] = tables(app, "metric")
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


def bundled_run_files(folder: Path, model: str, edit=None) -> Path:
    """A bundled model's card and cv.json (no weights: the tables never load a model), `edit`ed."""
    folder.mkdir(parents=True)
    for name in ("card.json", "cv.json"):
        value = json.loads((REPO / "models" / model / name).read_text())
        (folder / name).write_text(json.dumps(edit(name, value) if edit else value))
    return folder


def test_models_cross_validated_on_the_same_folds_are_compared_on_them(tmp_path):
    """QA compare #10: the bundled models carry the same 5 patient-wise folds (README compares them so), but the
    page only said "not comparable". Folds drawn with another seed, or holding out other sizes, are kept apart."""
    def reseeded(name, value):
        if name == "card.json":
            value["recipe"]["settings"]["seed"] = 1
        return value

    def resized(name, value):
        if name == "cv.json":
            value["per_fold"]["model"][0]["test_images"] += 1
        return value

    folders = [bundled_run_files(tmp_path / "default", "default"), bundled_run_files(tmp_path / "small", "small-cnn"),
               bundled_run_files(tmp_path / "seed1", "small-cnn", reseeded),
               bundled_run_files(tmp_path / "sizes", "small-cnn", resized),
               card_folder(tmp_path / "no-cv", name="no-cv")]
    runs = comparison.distinct_names([comparison.load_run(str(folder)) for folder in folders])
    [group] = comparison.cross_validation_groups(runs)
    assert [run.folder for run in group] == [str(folders[0]), str(folders[1])]
    assert comparison.cross_validation_title(0, group).endswith("2 models on the same 5 patient-wise folds")
    data = comparison.cross_validation_data(group)
    assert "5 folds, 757 images of 46 patients" in data and "134 images / 10 patients" in data and "seed (0)" in data
    table = comparison.cross_validation_side_by_side(group).set_index(["level", "metric"])
    default, small = (run.name for run in group)
    assert table.loc[("image", "stage-1 balanced accuracy"), f"{default}: mean +- std over folds"] == "0.849 +- 0.135"
    assert table.loc[("image", "stage-1 balanced accuracy"), f"{small}: mean +- std over folds"] == "0.851 +- 0.117"
    assert table.loc[("patient", "stage-1 accuracy"), f"{default}: pooled out-of-fold"] == "0.848 (95% CI 0.739-0.935)"
    assert table.loc[("patient", "stage-1 accuracy"), f"{small}: pooled out-of-fold"] == "n/a: not in cv.json"
    assert table.loc[("", "model"), f"{small}: mean +- std over folds"].startswith("LIMITED DATA · ")
    demo = dataclasses.replace(group[1], card={**group[1].card, "demo": True})
    shown = comparison.cross_validation_side_by_side([group[0], demo]).set_index(["level", "metric"])
    assert set(shown[f"{small}: mean +- std over folds"].iloc[1:]) == {comparison.NOT_SHOWN_DEMO}


def test_the_compare_page_compares_the_bundled_models_on_their_common_folds(tmp_path, monkeypatch):
    from tests.app_helpers import app_on_bundled_models, texts

    app = app_on_bundled_models(monkeypatch, tmp_path / "runs", "default")
    app.switch_page("pages/compare.py").run()
    assert not app.exception, app.exception
    assert "Those cross-validated on the same folds are compared on them" in texts(app.warning)
    assert [s.value for s in app.subheader if s.value.startswith("Cross-validation ")] == [
        "Cross-validation 1: 2 models on the same 5 patient-wise folds"]
    assert any(frame.value.columns[-1].endswith(": pooled out-of-fold") for frame in app.dataframe)


def test_the_training_curves_have_a_y_axis_per_panel_and_a_colour_per_series():
    """The facets shared one y axis (accuracies of 0-1 flat under losses of 0-5) and a model's series were one
    colour, told apart by dash only."""
    import pandas as pd

    history = pd.DataFrame({"epoch": [1, 2, 3], "loss": [5.0, 3.0, 2.0], "val_loss": [5.2, 3.5, 2.6],
                            "stage1_accuracy": [0.5, 0.6, 0.7], "val_stage1_accuracy": [0.5, 0.55, 0.6]})
    runs = [comparison.Run(f"/m/{name}", name, {}, {}, history, None) for name in ("a", "b")]
    long = comparison.curves(runs)
    figure = comparison.curves_figure(long)
    assert {trace.name for trace in figure.data} == {"a · training", "a · validation", "b · training",
                                                     "b · validation"}
    assert len(figure.data) == 8  # 4 series x 2 panels
    assert len({trace.line.color for trace in figure.data}) == 4  # one colour per series, the same in both panels
    axes = [figure.layout[name] for name in figure.layout if name.startswith("yaxis")]
    assert len(axes) == 2 and all(axis.matches is None for axis in axes)
    assert {note.text for note in figure.layout.annotations} == {"Loss", "Stage-1 accuracy"}
