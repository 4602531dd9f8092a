"""Run files beside a model: read when sound, named in a sentence when damaged, never a traceback."""

import json

import pandas as pd

from core.app.run_files import read_csv_file, read_json_file, read_run_files, run_file


def test_a_run_file_is_found_in_the_model_folder_or_its_run_folder(tmp_path):
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    assert run_file(model, "metrics.json") is None
    (tmp_path / "run" / "metrics.json").write_text("{}")
    assert run_file(model, "metrics.json") == tmp_path / "run" / "metrics.json"
    (model / "metrics.json").write_text("{}")  # a bundled model keeps its files inside
    assert run_file(model, "metrics.json") == model / "metrics.json"


def test_damaged_files_become_sentences_and_sound_ones_values(tmp_path):
    assert read_json_file(None) == (None, None) and read_json_file(tmp_path / "missing.json") == (None, None)
    for name, text, why in (("cut.json", '{"a": ', "JSONDecodeError"), ("list.json", "[1]", "holds a list"),
                            ("bytes.json", b"\xff\xfe\x00", "UnicodeDecodeError")):
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        value, problem = read_json_file(tmp_path / name)
        assert value is None and name in problem and why in problem, problem
    (tmp_path / "ok.json").write_text(json.dumps({"a": 1}))
    assert read_json_file(tmp_path / "ok.json") == ({"a": 1}, None)
    (tmp_path / "empty.csv").write_text("")
    table, problem = read_csv_file(tmp_path / "empty.csv")
    assert table is None and "empty.csv could not be read (EmptyDataError" in problem


def test_a_damaged_metrics_file_falls_back_to_the_cards_metrics(tmp_path):
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    card = {"metrics": {"stage1": {"accuracy": 0.9}}}
    files = read_run_files(model, card)
    assert files.metrics == card["metrics"] and files.problems == [] and files.history is None
    (tmp_path / "run" / "metrics.json").write_text('{"stage1": ')
    pd.DataFrame({"epoch": [1], "loss": [0.5]}).to_csv(tmp_path / "run" / "history.csv", index=False)
    files = read_run_files(model, card)
    assert files.metrics == card["metrics"] and list(files.history["loss"]) == [0.5]
    [problem] = files.problems
    assert "metrics.json could not be read" in problem and "stored in the model card instead" in problem
    (tmp_path / "run" / "metrics.json").write_text('{"stage1": {"accuracy": 0.7}}')
    assert read_run_files(model, card).metrics == {"stage1": {"accuracy": 0.7}}


def test_valid_json_of_another_shape_is_named_and_left_out(tmp_path):
    """A hand-edited metrics.json / cv.json (a block set to text, a key missing) crashed Model performance
    and Compare (QA resil #9): the block, or the cv summary, is now left out with a sentence naming the file."""
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(
        {"stage1": {"accuracy": 0.9}, "intervals": "x", "test_set": "x", "stage1_accuracy": "high"}))
    (tmp_path / "run" / "cv.json").write_text(json.dumps({"folds": "x", "protocol": 1}))
    files = read_run_files(model, {})
    assert files.metrics == {"stage1": {"accuracy": 0.9}}
    [metrics_problem, cv_problem] = files.problems
    assert "metrics.json has blocks of an unexpected shape" in metrics_problem
    assert "'intervals' is text, not an object" in metrics_problem and "'stage1_accuracy' is text" in metrics_problem
    assert files.cross_validation is None and "cv.json could not be used" in cv_problem
    assert "no 'mean_std'" in cv_problem and "'protocol' is a number, not text" in cv_problem


def test_compare_tolerates_metrics_without_protocol_or_test_set(tmp_path):
    from core.app.comparison import Run, comparable_groups, metrics_side_by_side

    sound = {"protocol": "patient-wise", "data": {"images": 9, "cases": 3}, "test_set": {"fingerprint": "f"},
             "stage1_accuracy": 0.8}
    runs = [Run("a", "a", {}, sound, None, None), Run("b", "b", {}, {**sound, "protocol": None}, None, None),
            Run("c", "c", {}, {"test_set": {"no": "fingerprint"}}, None, None)]
    groups = comparable_groups(runs)
    assert [run.name for run in groups[None]] == ["c"]
    table = metrics_side_by_side([runs[1], runs[0]])
    assert "unknown protocol" in table.iloc[-1]["b"] and table.iloc[1]["a"] == "0.800"  # under the badge row


def test_a_partly_malformed_metrics_file_gives_way_to_the_cards_metrics(tmp_path):
    """QA pages #7: metrics.json with a block of another shape ({"stage1": "x", ...}) was kept without that block,
    so Model performance said "no evaluation yet" while the sidebar showed the card's measured accuracy. Like an
    unreadable file, it now gives way to the card's metrics, and both show the same figure."""
    from core.app.registry import measured_accuracy
    from tests.app_helpers import REPO

    card = json.loads((REPO / "models" / "small-cnn" / "card.json").read_text())
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    (model / "metrics.json").write_text(json.dumps({"stage1": "x", "intervals": {"image": 3}}))
    files = read_run_files(model, card)
    assert files.metrics == card["metrics"] and files.metrics_source == f"the model card of {model}"
    [problem] = files.problems
    assert "metrics.json has blocks of an unexpected shape ('stage1' is text, not an object)" in problem
    assert problem.endswith("showing the metrics stored in the model card instead")
    assert measured_accuracy({"metrics": files.metrics}) == measured_accuracy(card) is not None
