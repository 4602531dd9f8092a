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
