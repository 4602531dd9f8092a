"""`python -m core gan train`'s options do what they say: --log-every sets the progress cadence."""

import itertools
import json

from core.cli import main as cli
from core.gan.model import GanConfig
from core.gan.train import train_gan
from core.options import to_argv

# As tests/test_gan.py: 16-px patches of the synthetic set at 4 um/px, a few steps.
TINY = dict(image_size=16, width=32, d_width=8, latent_dim=8, batch_size=16, mpp=4.0, holdout=0.0,
            sample_every=1000, checkpoint_every=1000)


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
