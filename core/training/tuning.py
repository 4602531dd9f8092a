"""Hyper-parameter search with KerasTuner, where every trial is an ordinary training run.

    python -m core tune --data DIR --out runs/search --max-trials 12 [--search random|grid] [train options]

KerasTuner's oracle proposes learning rate, dropout, L2, head width, balancing and augmentation
strength, but for the ones the caller chose, each held at its value in every trial. Each trial
trains a run folder OUT/trials/<id> with its own progress stream (core.training.fit), is scored
on the patient-wise VALIDATION split (never on test), and the oracle keeps its state in OUT/tuner,
so a search that stopped resumes where it left off (with the same held settings). The best trial
is copied to OUT/best, a normal run folder; OUT/search.csv lists every trial.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import keras_tuner as kt
import pandas as pd

from core.errors import UserInputError
from core.jsonfile import read_json
from core.paths import holding

OBJECTIVE = "val_stage1_balanced_accuracy"  # stage 1 is the decision; balanced, as malignant dominates

# name -> how KerasTuner draws it (hp: a keras_tuner.HyperParameters)
SPACE = {
    "learning_rate": lambda hp: hp.Choice("learning_rate", [1e-4, 3e-4, 1e-3, 3e-3]),
    "dropout": lambda hp: hp.Choice("dropout", [0.2, 0.35, 0.5]),
    "l2": lambda hp: hp.Choice("l2", [1e-5, 1e-4, 1e-3]),
    "head_units": lambda hp: hp.Choice("head_units", [64, 128, 256]),
    "balance": lambda hp: hp.Choice("balance", ["class_weights", "oversample", "none"]),
    "augment_strength": lambda hp: hp.Choice("augment_strength", [0.5, 1.0, 2.0]),
}


def chosen_settings(config, space: dict) -> tuple[str, ...]:
    """The searched settings whose value in `config` is not TrainConfig's default: the caller chose
    them, so the search holds them. A default typed on purpose cannot be told apart here: name it in `held`."""
    from core.options import default_of

    return tuple(name for name in space if getattr(config, name) != default_of(type(config), name))


def held_space(space: dict, held: dict) -> dict:
    """`space` with each setting of `held` fixed at its value (hp.Fixed: KerasTuner records it in
    every trial, so search.csv and the best settings show it)."""
    return {name: (lambda hp, name=name: hp.Fixed(name, held[name])) if name in held else draw
            for name, draw in space.items()}


def _shown(config: dict | None) -> str:
    return "searched" if config is None or "value" not in config else f"held at {config['value']}"


def _refuse_another_space(tuner, space: dict, where: Path) -> None:
    """A resumed search keeps the space its first trial declared (a setting held there stays held, a
    searched one stays searched), so a search asked with other held settings is refused, not mixed."""
    declared = kt.HyperParameters()
    for draw in space.values():
        draw(declared)
    wanted = {hp.name: hp.get_config() for hp in declared.space}
    saved = {hp.name: hp.get_config() for hp in tuner.oracle.get_space().space}
    if not saved:
        return
    differ = [f"{name}: {_shown(saved.get(name))} there, {_shown(wanted.get(name))} here"
              for name in sorted(saved.keys() | wanted.keys()) if saved.get(name) != wanted.get(name)]
    if differ:
        raise UserInputError(f"{where} is a search over other settings ({'; '.join(differ)}): resume it with its "
                             "own options, or search into a new --out")


def validation_score(run_dir: Path) -> float:
    """The trial's objective from its evaluation (metrics.json's validation block)."""
    value = (read_json(run_dir / "metrics.json").get("validation") or {}).get(OBJECTIVE.removeprefix("val_"))
    return 0.0 if value is None else float(value)


class TrialRefused(UserInputError, kt.errors.FatalError):
    """A trial's settings refused (core.training.config): the same for every trial, so it ends the search.
    KerasTuner retries any other error, printing it each time, and then fails on the repeated failures."""


class RunTuner(kt.Tuner):
    """A Tuner whose trials are core.training.fit runs instead of model.fit calls."""

    def __init__(self, config, space: dict, **kwargs):
        self.config, self.space = config, space
        super().__init__(**kwargs)

    def run_trial(self, trial, *args, **kwargs):
        from core.training.fit import train

        settings = {name: draw(trial.hyperparameters) for name, draw in self.space.items()}
        run_dir = Path(self.config.out) / "trials" / trial.trial_id
        if run_dir.exists() and not (run_dir / "metrics.json").is_file():
            shutil.rmtree(run_dir)  # a trial interrupted half way is trained again
        if not (run_dir / "metrics.json").is_file():
            try:
                train(dataclasses.replace(self.config, out=str(run_dir), **settings))
            except UserInputError as error:
                raise TrialRefused(str(error)) from None
        return {OBJECTIVE: validation_score(run_dir)}


def _finished(tuner) -> list:
    return [trial for trial in tuner.oracle.trials.values() if trial.status == kt.engine.trial.TrialStatus.COMPLETED]


def _none_finished(tuner, out: Path) -> str:
    """Why there is no best trial to copy to OUT/best: the last error, and where each trial's is kept."""
    last = next((trial.message for trial in reversed(list(tuner.oracle.trials.values())) if trial.message), "")
    reason = next((line for line in reversed(last.strip().splitlines()) if line.strip()), "unknown")
    return (f"no trial finished, so there is no best run: the last failed with {reason.strip()} (each trial's status "
            f"is in {out / 'search.csv'}, its error in {out / 'tuner'}/trial_<id>/trial.json, its run in "
            f"{out / 'trials'}/<id>); mend the cause, then search into a new --out")


def tune(config, max_trials: int = 10, search: str = "random", space: dict | None = None, seed: int = 0,
         held=None) -> dict:
    """Run (or resume) the search; returns the best trial's settings, score and run folder, and the
    settings held. `held`: the names of the settings the caller chose (the options typed), each kept
    at its value in `config`; None: those whose value is not the default (chosen_settings)."""
    from core.training.config import checked, refuse_unmeasured

    if max_trials < 1:  # KerasTuner reads 0 as "no limit"; the one check, for the CLI too
        raise UserInputError(f"--max-trials must be at least 1, not {max_trials}")
    refuse_unmeasured(config, "tune", "trial")  # a trial's score is its evaluation on validation
    checked(config)  # before OUT/tuner is written, and refused once (not by every trial)
    out = Path(config.out)
    with holding(out, hint="wait for it to end, or choose another --out"):  # resumes into out: held, not claimed
        return _search(config, max_trials, search, space or SPACE, seed, held, out)


def _search(config, max_trials: int, search: str, space: dict, seed: int, held, out: Path) -> dict:
    """tune's search, with `out` held by this process."""
    chosen = chosen_settings(config, space) if held is None else held
    held = {name: getattr(config, name) for name in space if name in chosen}
    space = held_space(space, held)
    objective = kt.Objective(OBJECTIVE, direction="max")
    oracle = (kt.oracles.GridSearchOracle(objective=objective, max_trials=max_trials, seed=seed) if search == "grid"
              else kt.oracles.RandomSearchOracle(objective=objective, max_trials=max_trials, seed=seed))
    tuner = RunTuner(config, space, oracle=oracle, directory=str(out), project_name="tuner", overwrite=False)
    _refuse_another_space(tuner, space, out / "tuner")
    try:
        tuner.search()
    except RuntimeError as error:  # KerasTuner stops after 3 failed trials in a row
        if "consecutive failures" not in str(error) or _finished(tuner):
            raise
    rows = []
    for trial in tuner.oracle.trials.values():
        score = trial.metrics.get_best_value(OBJECTIVE) if trial.metrics.exists(OBJECTIVE) else None
        rows.append({"trial": trial.trial_id, "status": trial.status, OBJECTIVE: score, **trial.hyperparameters.values})
    table = pd.DataFrame(rows).sort_values(OBJECTIVE, ascending=False, na_position="last")
    table.to_csv(out / "search.csv", index=False)
    if not _finished(tuner):
        raise UserInputError(_none_finished(tuner, out))
    best = tuner.oracle.get_best_trials(1)[0]
    best_dir = out / "best"
    shutil.rmtree(best_dir, ignore_errors=True)
    shutil.copytree(out / "trials" / best.trial_id, best_dir)
    return {"trial": best.trial_id, "settings": best.hyperparameters.values, OBJECTIVE: best.score,
            "run": str(best_dir), "trials": table, "held": held}
