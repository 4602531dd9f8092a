"""Hyper-parameter search: each trial is a run scored on validation, the search resumes, and with a
deliberately bad learning rate in the space the best trial beats it."""

import pandas as pd
import pytest

from core.errors import UserInputError
from core.training.config import TrainConfig
from core.training.tuning import OBJECTIVE, tune


def test_the_best_trial_beats_a_bad_learning_rate_and_the_search_resumes(synthetic_breakhis, tmp_path):
    config = TrainConfig(data=str(synthetic_breakhis), out=str(tmp_path / "search"), backbone="small_cnn",
                         weights="none", input_size=64, batch_size=16, epochs=4, patience=4, baselines=False,
                         echo_stdout=False)
    space = {"learning_rate": lambda hp: hp.Choice("learning_rate", [1e-7, 3e-3])}  # 1e-7 learns nothing
    best = tune(config, max_trials=2, search="grid", space=space)
    trials = best["trials"].set_index("learning_rate")
    assert len(trials) == 2 and best["settings"]["learning_rate"] == 3e-3
    # 1e-7 leaves the random initial weights, whose score on these strongly coloured classes is luck
    # (0.5 to 0.8 seen); a working rate separates the held-out cases.
    assert trials.loc[3e-3, OBJECTIVE] >= 0.95 and trials.loc[3e-3, OBJECTIVE] > trials.loc[1e-7, OBJECTIVE]
    runs = sorted((tmp_path / "search" / "trials").iterdir())
    assert len(runs) == 2 and all((run / "progress.jsonl").is_file() and (run / "model" / "card.json").is_file()
                                  for run in runs)
    assert (tmp_path / "search" / "best" / "metrics.json").is_file()  # the best trial as a normal run
    assert len(pd.read_csv(tmp_path / "search" / "search.csv")) == 2
    mtimes = {run.name: (run / "progress.jsonl").stat().st_mtime for run in runs}
    again = tune(config, max_trials=2, search="grid", space=space)  # resumed: nothing is trained twice
    assert again["trial"] == best["trial"]
    assert {run.name: (run / "progress.jsonl").stat().st_mtime for run in runs} == mtimes


@pytest.mark.parametrize("trials", ["0", "-3", "two"])
def test_max_trials_below_one_is_a_usage_error(tmp_path, capsys, trials):
    """KerasTuner reads max_trials=0 as no limit: --max-trials 0 searched without end."""
    from core.cli import main as cli

    assert cli(["tune", "--data", str(tmp_path), "--out", str(tmp_path / "search"), "--max-trials", trials]) == 2
    error = capsys.readouterr().err
    assert "--max-trials" in error and not (tmp_path / "search").exists()
    if trials != "two":  # a number below 1: tune()'s one check, the words the Python API gets
        assert error == f"error: --max-trials must be at least 1, not {trials}\n"
    with pytest.raises(UserInputError, match="at least 1"):  # the Python API too
        tune(TrainConfig(data=str(tmp_path), out=str(tmp_path / "search")), max_trials=0)
    assert not (tmp_path / "search").exists()


def test_invalid_settings_are_refused_once_before_the_search(tmp_path, capsys):
    """KerasTuner caught each trial's refusal, retried, printed it with a traceback every time, then
    failed (exit 1) on 'consecutive failures' after writing OUT/tuner."""
    from core.cli import main as cli

    out = tmp_path / "search"
    assert cli(["tune", "--data", str(tmp_path / "nowhere"), "--out", str(out), "--max-trials", "2"]) == 2
    error = capsys.readouterr().err
    assert error.count("data folder not found") == 1 and "Traceback" not in error and not out.exists()


def test_a_trial_refused_stops_the_search_with_its_own_words(synthetic_breakhis, tmp_path):
    """A refusal is the same for every trial: it ends the search, as a UserInputError, not after retries."""
    config = TrainConfig(data=str(synthetic_breakhis), out=str(tmp_path / "search"), backbone="small_cnn",
                         weights="none", input_size=32, epochs=1, baselines=False, echo_stdout=False)
    space = {"dropout": lambda hp: hp.Choice("dropout", [1.5])}
    with pytest.raises(UserInputError, match="--dropout must be in"):
        tune(config, max_trials=3, space=space)
    assert not (tmp_path / "search" / "trials").exists()


def _trials_recorded_by(monkeypatch, score=0.5):
    """Trials that record the config each was given and score `score` at once (nothing is trained)."""
    import json
    from pathlib import Path

    seen = []

    def train(config):
        seen.append(config)
        Path(config.out).mkdir(parents=True)
        (Path(config.out) / "metrics.json").write_text(json.dumps({"validation": {"stage1_balanced_accuracy": score}}))

    monkeypatch.setattr("core.training.fit.train", train)
    return seen


def test_options_typed_are_held_in_every_trial(synthetic_breakhis, tmp_path, monkeypatch, capsys):
    """tune replaced a typed --dropout, --learning-rate or --balance with values drawn from its space."""
    from core.cli import main as cli

    seen, out = _trials_recorded_by(monkeypatch), tmp_path / "search"
    typed = ["--learning-rate", "0.02", "--dropout", "0.1", "--balance", "oversample"]
    assert cli(["tune", "--data", str(synthetic_breakhis), "--out", str(out), "--max-trials", "3", *typed]) == 0
    assert len(seen) == 3 and {(c.learning_rate, c.dropout, c.balance) for c in seen} == {(0.02, 0.1, "oversample")}
    table = pd.read_csv(out / "search.csv")  # the summary shows the held values, and the other settings searched
    assert set(table.learning_rate) == {0.02} and set(table.dropout) == {0.1} and set(table.balance) == {"oversample"}
    assert "'dropout': 0.1" in capsys.readouterr().out
    config = TrainConfig(data=str(synthetic_breakhis), out=str(out), dropout=0.2)
    with pytest.raises(UserInputError, match="dropout: held at 0.1 there, held at 0.2 here"):  # resumed otherwise
        tune(config, max_trials=4)
    assert len(seen) == 3


def test_a_setting_named_held_keeps_even_its_default(synthetic_breakhis, tmp_path, monkeypatch):
    """A caller that knows what was typed names it (`held`), so a typed default is held too."""
    seen = _trials_recorded_by(monkeypatch)
    best = tune(TrainConfig(data=str(synthetic_breakhis), out=str(tmp_path / "search")), max_trials=2, held=("dropout",))
    assert [c.dropout for c in seen] == [0.5, 0.5] and best["held"] == {"dropout": 0.5}


@pytest.mark.parametrize("trials", ["2", "4"])  # 4: KerasTuner itself stops after 3 failures in a row
def test_a_search_where_no_trial_finished_says_so(synthetic_breakhis, tmp_path, monkeypatch, capsys, trials):
    """No trial finished: a FileNotFoundError copying the best trial (or KerasTuner's 'consecutive failures'),
    exit 1 with a traceback, ended the search."""
    from core.cli import main as cli

    def train(config):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr("core.training.fit.train", train)
    out = tmp_path / "search"
    assert cli(["tune", "--data", str(synthetic_breakhis), "--out", str(out), "--max-trials", trials]) == 2
    error = capsys.readouterr().err  # KerasTuner prints each failed trial's traceback as it happens; the end is words
    assert "tune failed" not in error and "consecutive failures" not in error and not (out / "best").exists()
    last = error.strip().splitlines()[-1]
    assert last.startswith("error: no trial finished") and "RuntimeError: out of memory (simulated)" in last
    assert str(out / "search.csv") in last and set(pd.read_csv(out / "search.csv").status) == {"FAILED"}


def test_a_default_typed_on_the_command_line_is_held(synthetic_breakhis, tmp_path, monkeypatch):
    """`tune --dropout 0.5` (the default, typed) was searched: the CLI could not tell it from not typed."""
    from core.cli import main as cli

    seen, out = _trials_recorded_by(monkeypatch), tmp_path / "search"
    assert cli(["tune", "--data", str(synthetic_breakhis), "--out", str(out), "--max-trials", "3",
                "--dropout", "0.5"]) == 0
    assert [c.dropout for c in seen] == [0.5, 0.5, 0.5]
    assert set(pd.read_csv(out / "search.csv").dropout) == {0.5}
