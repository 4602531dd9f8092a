"""`python -m core gan train`'s options do what they say: --log-every sets the progress cadence, and
--resume refuses the options that would change the run instead of dropping them in silence."""

import dataclasses
import itertools
import json

import pytest

from core.cli import USER_ERROR
from core.cli import main as cli
from core.gan.model import GanConfig
from core.gan.train import train_gan
from core.jsonfile import read_json, write_json_atomic
from core.options import to_argv
from tests.gan_helpers import TINY as GAN_TINY
from tests.gan_helpers import compile_gan_eagerly

# The GAN tests' 16-px patches of the synthetic set at 4 um/px, a few steps; log_every left at its default,
# which the tests here set themselves.
TINY = {key: value for key, value in GAN_TINY.items() if key != "log_every"}


@pytest.fixture(autouse=True)
def eager_steps(monkeypatch):
    compile_gan_eagerly(monkeypatch)  # bookkeeping over 1-9 steps (tests/gan_helpers.py)


def _steps_logged(lines):
    return [e["step"] for e in map(json.loads, lines) if e["event"] == "step"]


def test_log_every_sets_how_often_progress_is_written_and_printed(synthetic_breakhis, tmp_path, capsys):
    """--log-every was ignored: every step wrote and printed an event. The last step is always logged,
    whether the run completes or is stopped."""
    config = GanConfig(name="cadence", subtypes=("adenosis",), steps=7, log_every=3, **TINY)
    out = tmp_path / "run"
    assert cli(["gan", "train", "--data", str(synthetic_breakhis), "--out", str(out), *to_argv(config)]) == 0
    assert _steps_logged((out / "progress.jsonl").read_text().splitlines()) == [3, 6, 7]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert _steps_logged(printed) == [3, 6, 7]
    calls = itertools.count()
    train_gan(config, synthetic_breakhis, tmp_path / "stopped", stop=lambda: next(calls) >= 3)  # stops after 4
    assert _steps_logged((tmp_path / "stopped" / "progress.jsonl").read_text().splitlines()) == [3, 4]



@pytest.fixture
def resume(synthetic_breakhis, tmp_path, monkeypatch):
    """`gan train --resume OPTIONS` on a run folder whose config is not the defaults, with the training
    itself stubbed (the options are settled before it): -> (exit code, the config it would train with)."""
    import core.gan.train as gan_train

    out = tmp_path / "run"
    out.mkdir()
    saved = GanConfig(name="saved", subtypes=("adenosis",), steps=100, lr_g=1e-3, **TINY)
    write_json_atomic(out / "config.json", dataclasses.asdict(saved))
    trained = []
    monkeypatch.setattr(gan_train, "_run", lambda config, *_: trained.append(config))

    def run(*options):
        trained.clear()
        code = cli(["gan", "train", "--data", str(synthetic_breakhis), "--out", str(out), "--resume", *options])
        return code, (trained[0] if trained else None)

    run.saved, run.config = saved, out / "config.json"
    return run


def test_resume_refuses_given_options_that_differ_from_the_run(resume, capsys):
    """--resume --latent-dim 16 --lr-g 2e-4 trained on with the run's 8 and 1e-3, without a word."""
    code, trained = resume("--steps", "200", "--latent-dim", "16", "--lr-g", "2e-4", "--subtypes", "adenosis",
                           "fibroadenoma", "--no-fine-noise")
    err = capsys.readouterr().err
    assert code == USER_ERROR and trained is None
    for option, saved, given in (("--latent-dim", "8", "16"), ("--lr-g", "0.001", "0.0002"),
                                 ("--subtypes", "adenosis", "adenosis fibroadenoma"),
                                 ("--no-fine-noise (fine_noise)", "True", "False")):
        assert f"{option}: saved {saved}, given {given}" in err, err
    assert "new --out" in err and "--steps:" not in err
    assert GanConfig.from_dict(read_json(resume.config)) == resume.saved  # nothing written


def test_resume_applies_steps_and_cadences_and_ignores_options_not_given(resume):
    """Only what the command line gave counts: defaults (latent_dim 32, lr_g 2e-4, steps 6000...) are
    not the user's choice, and a given option equal to the run's is no conflict."""
    code, trained = resume()
    assert code == 0 and trained == resume.saved  # the run's own steps too, not the default 6000
    code, trained = resume("--steps", "300", "--log-every", "7", "--sample-every", "50", "--latent-dim", "8",
                           "--subtypes", "adenosis", "--lr-g", "0.001")
    assert code == 0 and trained == dataclasses.replace(resume.saved, steps=300, log_every=7, sample_every=50)
    assert GanConfig.from_dict(read_json(resume.config)) == trained


def test_resume_on_another_data_set_is_refused_naming_both(synthetic_breakhis, tmp_path, capsys):
    """--resume --data OTHER trained on the other set in silence; its card then claimed a split whose
    val/test patients the first steps had learned from. The run keeps its data in config.json."""
    import shutil

    config = GanConfig(name="data", subtypes=("adenosis",), steps=2, **TINY)
    out = tmp_path / "run"
    train_gan(config, synthetic_breakhis, out)
    saved = read_json(out / "config.json")
    assert saved["data"]["source"] == str(synthetic_breakhis) and len(saved["data"]["fingerprint"]) == 16
    other = shutil.copytree(synthetic_breakhis, tmp_path / "other")
    next(other.rglob("*.png")).unlink()  # one image fewer: another data set, another split
    for config_json in (saved, {k: v for k, v in saved.items() if k != "data"}):  # a run saved before: its card
        write_json_atomic(out / "config.json", config_json)
        code = cli(["gan", "train", "--data", str(other), "--out", str(out), "--resume", "--steps", "4"])
        err = capsys.readouterr().err
        assert code == USER_ERROR, err
        shown = synthetic_breakhis if "data" in config_json else synthetic_breakhis.name  # the card's portable name
        assert f"--data: saved {shown} (fingerprint {saved['data']['fingerprint']}), given {other} (fingerprint " \
            in err, err
    assert read_json(out / "model" / "card.json")["training"]["steps"] == 2  # nothing trained
    assert cli(["gan", "train", "--data", str(synthetic_breakhis), "--out", str(out), "--resume", "--steps", "3"]) == 0


def test_a_write_only_resume_keeps_the_runs_total(synthetic_breakhis, tmp_path):
    """--resume --steps N (N at or below the steps done: only writes the generator) lowered the run's total
    in config.json to N, so a later plain --resume stopped at once instead of going on to the run's total."""
    out = tmp_path / "run"
    calls = itertools.count()
    config = GanConfig(name="total", subtypes=("adenosis",), steps=5, **TINY)
    train_gan(config, synthetic_breakhis, out, stop=lambda: next(calls) >= 1)  # checked after each step: 2
    for steps in (1, 0, 2):
        model_dir = train_gan(GanConfig(steps=steps), synthetic_breakhis, out, resume=True)
        card = read_json(model_dir / "card.json")
        assert read_json(out / "config.json")["steps"] == 5 and card["config"]["steps"] == 5
        assert card["training"]["steps"] == 2
    card = read_json(train_gan(GanConfig(), synthetic_breakhis, out, resume=True, given=()) / "card.json")
    assert card["training"]["steps"] == 5 and card["config"]["steps"] == 5
    assert read_json(out / "config.json")["steps"] == 5


def test_the_card_keeps_every_sessions_time_command_and_machine(synthetic_breakhis, tmp_path):
    """After --resume the card kept only the last session's seconds, and no card said how (command) or
    where (machine, backend) its generator was trained."""
    from core.backends import current_backend

    out = tmp_path / "run"
    config = GanConfig(name="sessions", subtypes=("adenosis",), steps=2, **TINY)
    first = ["gan", "train", "--data", str(synthetic_breakhis), "--out", str(out), *to_argv(config)]
    assert cli(first) == 0
    assert cli(["gan", "train", "--data", str(synthetic_breakhis), "--out", str(out), "--resume", "--steps", "3"]) == 0
    training = read_json(out / "model" / "card.json")["training"]
    sessions = training["sessions"]
    assert [(s["from_step"], s["to_step"]) for s in sessions] == [(0, 2), (2, 3)]
    assert sessions[0]["command"] == "python -m core " + " ".join(first)
    assert sessions[1]["command"].endswith(f"--out {out} --resume --steps 3")
    assert all(s["machine"]["backend"] == current_backend() and s["machine"]["cpus"] >= 1 for s in sessions)
    assert training["seconds"] == round(sum(s["seconds"] for s in sessions), 1) > training["seconds_this_session"]
    assert read_json(out / "sessions.json") == sessions  # the run's own record, kept at each checkpoint


def test_a_run_resumed_between_checkpoints_keeps_its_epochs_on_the_checkpoint_grid(synthetic_breakhis, tmp_path):
    """Stopped at step 4 with checkpoints every 3, a resumed run's epochs were steps 5-7 and 8-9 under the
    numbers of epochs 2 and 3 (steps 4-6 and 7-9), its step events counted from the resume, and checkpoints fell
    inside epochs. Now its first epoch runs to the next checkpoint: epoch k is always steps 3k-2 .. 3k."""
    import itertools

    config = GanConfig(name="grid", subtypes=("adenosis",), steps=9, log_every=1,
                       **{**TINY, "checkpoint_every": 3})
    out, calls = tmp_path / "run", itertools.count()
    train_gan(config, synthetic_breakhis, out, stop=lambda: next(calls) >= 3)  # checked after each step: stops at 4
    train_gan(GanConfig(steps=9), synthetic_breakhis, out, resume=True)
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    resumed = events[max(i for i, e in enumerate(events) if e["event"] == "start"):]
    assert [(e["epoch"], e["steps"]) for e in resumed if e["event"] == "epoch_begin"] == [(2, 2), (3, 3)]
    assert [e["step"] for e in resumed if e["event"] == "step"] == [2, 3, 1, 2, 3]  # run steps 5 .. 9
    assert resumed[-1]["event"] == "end" and resumed[-1]["step"] == 9
