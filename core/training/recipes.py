"""How the bundled default model is made: the recipes live here, in one place.

    python -m core make-default --data DIR [--recipe full|field|limited] [--cross-validate 5] [--force]
    python -m core make-default --from-run RUN [--force] [--allow-demo]

"full" is for real users with the whole BreakHis set (7,909 images) and ImageNet weights: a
fine-tuned multi-scale DenseNet121. "field" is the default for small data sets: the field recipe
(core.training.field_run: fields at ~1 um/px, random crops, augmentation as Keras layers, a
ResNet-18 from scratch, band-limited views) cross-validated patient-wise, its figures,
temperatures and per-stage referral thresholds from the pooled out-of-fold predictions, then ONE
model trained on every patient: what models/default holds. "limited" is the earlier small CNN on
squashed whole fields (models/small-cnn). Without --recipe the data decides: a folder far smaller
than the full set gets "field". Each installs the model folder with its history, metrics and
cross-validation summary (models/default/candidates.md has every candidate measured).

The default model is the one every pathologist's session starts with, so installing one never
deletes the model it replaces (moved aside to a dated hidden folder beside it), is an audit row
(core.app.install_report.record_install), and refuses a DEMO model unless asked (--allow-demo).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from core.data.breakhis import index_folder
from core.data.selection import kfold_problem
from core.errors import ModelFolderError, UserInputError
from core.jsonfile import read_json
from core.model.backbones import DEFAULT_BACKBONE
from core.model.folders import CARD_FILE, card_is_demo, card_untaught_classes, load_model_folder, read_card, update_card
from core.paths import DEFAULT_MODEL_DIR, refuse_existing_run, runs_dir, unused_name
from core.training.config import TrainConfig
from core.training.crossval import cross_validate as cross_validation
from core.training.field_run import cross_validate_fields
from core.training.fit import train
from core.training.runcard import DEMO_BELOW_TRAIN_IMAGES

# A recipe names every setting that decides the model, so a later change of a TrainConfig default
# does not silently change how the bundled model is made.
FULL = dict(backbone=DEFAULT_BACKBONE, hierarchy="hierarchical", mode="finetune", epochs=40, batch_size=32,
            weights="imagenet", balance="class_weights", split="patient-wise", patience=6, seed=0)
# Chosen on validation among small_cnn@128, small_cnn@224 and densenet121@128, each trained from scratch
# the same way on the same patient-wise split (README, "The bundled model"): small_cnn@128 had the best
# validation balanced accuracy (tied with @224) and subtype macro-F1, at less than half the cost.
LIMITED = dict(backbone="small_cnn", hierarchy="hierarchical", mode="finetune", input_size=128, epochs=30,
               batch_size=32, weights="none", balance="class_weights", split="patient-wise", patience=6, seed=0,
               zoom=0.6, augment_strength=2.0, early_stopping=False)
# The field recipe at CPU scale (issue 25): half-width ResNet-18 at 128 px so that 5 folds and the
# final model train on 2 CPU cores in about 20 minutes (README, "The bundled model"); band-limited
# views, measured better on full-size fields (the form of every image a user brings); subtype heads
# refitted as logistic regressions on the trained features (core.training.head_refit); on a GPU,
# --backbone resnet18 --input-size 224 --epochs 150 is the measured full-scale version.
FIELD = dict(pipeline="fields", backbone="resnet18_half", weights="none", input_size=128, epochs=30, batch_size=64,
             dropout=0.3, learning_rate=2e-3, split="patient-wise", seed=0, physical_crops=False, band_limit=True,
             refit_subtypes=True)
FIELD_FOLDS = 5
RECIPES = {"full": FULL, "field": FIELD, "limited": LIMITED}
FULL_SET_MIN_IMAGES = 5000


def launch_defaults(gpu: bool) -> TrainConfig:
    """What Retrain's form starts from on this machine: TrainConfig's defaults (the full recipe's
    DenseNet121 fine-tuning at 224 px) with a GPU; without one the field recipe the bundled model was
    made with on 2 CPU cores, because a DenseNet fine-tune on a CPU takes hours per epoch."""
    return TrainConfig(data="", out="") if gpu else TrainConfig(data="", out="", **FIELD)


def choose_recipe(data) -> str:
    return "full" if len(index_folder(data, check_readable=False).images) >= FULL_SET_MIN_IMAGES else "field"


def _check_out(out: Path, force: bool) -> None:
    """Without --force an existing model is kept; with it only a model folder is replaced, because
    installing deletes `out` whole (--out models for models/default would delete every model)."""
    if not force:
        refuse_existing_run(out, holds="a model", hint="pass --force to replace it")
    elif out.exists() and not (out / CARD_FILE).is_file() and not (out.is_dir() and not any(out.iterdir())):
        raise UserInputError(f"{out} is not a model folder (it has no {CARD_FILE}); --force replaces a model "
                             "folder only, choose the model's own folder as --out")


@dataclasses.dataclass(frozen=True)
class Installed:
    """What an install did, for its output and its audit row: the model folder written, its card, the
    run it came from, and where the model it replaced was moved (None: there was none)."""
    folder: Path
    card: dict
    source: Path
    backup: Path | None = None
    previous: dict | None = None  # the replaced model's card ({} when it could not be read)


def make_default(data, recipe: str | None = None, out: Path = DEFAULT_MODEL_DIR, force: bool = False,
                 cross_validate: int = 0, before_install=None, allow_demo: bool = False) -> Installed:
    """Train with the recipe (and optionally cross-validate it), then install the model folder.
    before_install(model_dir, data): for the field recipe, run on the final model while its fold
    models are still beside it (the CLI chooses its slide rule there, core.slide.choose)."""
    out = Path(out)
    _check_out(out, force)
    recipe = recipe or choose_recipe(data)
    if recipe not in RECIPES:
        raise UserInputError(f"Unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    # Checked now: the full and limited recipes cross-validate only after their model has trained.
    if cross_validate and kfold_problem(cross_validate, None, "patient-wise"):
        raise UserInputError(f"--cross-validate {cross_validate}: a cross-validation needs at least 2 folds "
                             "(0: none, or the field recipe's own 5)")
    run_dir = runs_dir() / f"default-{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    if recipe == "field":
        result = cross_validate_fields(TrainConfig(data=str(data), out=str(run_dir),
                                                    folds=cross_validate or FIELD_FOLDS, **FIELD))
        if before_install is not None:
            before_install(result["model_dir"], data)
        return install_field_run(result, run_dir, out, allow_demo=allow_demo)
    result = train(TrainConfig(data=str(data), out=str(run_dir), **RECIPES[recipe]))
    _installable(result["model_dir"], allow_demo, f"the trained run is kept in {run_dir}")  # before its CV
    extras = [run_dir / "history.csv", run_dir / "metrics.json"]
    if cross_validate:
        cv_dir = run_dir.with_name(run_dir.name + f"-cv{cross_validate}")
        cross_validation(TrainConfig(data=str(data), out=str(cv_dir), folds=cross_validate, **RECIPES[recipe]))
        extras += [cv_dir / "cv.json", cv_dir / "cv.md"]
    return _install(result["model_dir"], extras, out, run_dir, {
        "name": recipe, "settings": RECIPES[recipe], "cross_validation_folds": cross_validate,
        "command": f"python -m core make-default --data DATA --recipe {recipe}"
                   + (f" --cross-validate {cross_validate}" if cross_validate else "")})


def refuse_unused_options(from_run, recipe: str | None, cross_validate: int | None, command: str | None) -> None:
    """make-default either trains here (--data) or installs a run trained elsewhere (--from-run); an
    option of the other way would be ignored without a word. None: not given (a default does not count)."""
    if from_run is not None:
        given = " and ".join(flag for flag, value in (("--recipe", recipe), ("--cross-validate", cross_validate))
                             if value is not None)
        if given:
            raise UserInputError(f"{given} describe training, and --from-run installs a run already trained (its card "
                                 f"keeps that run's own settings and folds): drop {given}, or train here with --data")
    elif command is not None:
        raise UserInputError("--command records how a run given with --from-run was trained; make-default --data "
                             "writes its own command into the card: drop --command")


def install_run(run_dir, out: Path = DEFAULT_MODEL_DIR, force: bool = False, command: str | None = None,
                allow_demo: bool = False) -> Installed:
    """A fields cross-validation trained elsewhere (a GPU machine's `scripts/gpu_machine.sh run`,
    brought back) -> `out`, as make-default installs its own run: the final model with its cv.json,
    metrics.json and out-of-fold predictions. The card's recipe holds the run's own settings and
    `command` (what was run there), not make-default's."""
    run_dir, out = Path(run_dir), Path(out)
    _check_out(out, force)
    if not (run_dir / "cv.json").is_file() or not (run_dir / "model" / "card.json").is_file():
        raise UserInputError(f"{run_dir} is not a cross-validation run with a final model (it needs cv.json and "
                             "model/: `python -m core train --pipeline fields --folds K` without --no-final-model)")
    card = read_card(run_dir / "model")
    folds = read_json(run_dir / "cv.json")["folds"]
    recipe = {"name": "run", "settings": card.get("training", {}).get("settings", {}), "cross_validation_folds": folds,
              "command": command or "not recorded (give it with --command)", "installed_from": run_dir.name}
    return install_field_run({"model_dir": str(run_dir / "model"), "cv": {"folds": folds}}, run_dir, out, recipe,
                             allow_demo)


def install_field_run(result: dict, run_dir: Path, out: Path, recipe: dict | None = None,
                      allow_demo: bool = False) -> Installed:
    """A field-recipe cross-validation's final model -> `out`, with its cv.json, metrics.json and
    out-of-fold predictions, and the command that made it in the card (`recipe`; default: the
    make-default command of the FIELD recipe)."""
    run_dir, out = Path(run_dir), Path(out)
    _installable(result["model_dir"], allow_demo, f"{run_dir} is kept: `python -m core make-default --from-run "
                                                  f"{run_dir} --force --allow-demo` would install it")
    folds = result["cv"]["folds"]
    return _install(result["model_dir"], [run_dir / e for e in ("cv.json", "metrics.json", "oof_predictions.csv")],
                    out, run_dir, recipe or {
                        "name": "field", "settings": FIELD, "cross_validation_folds": folds,
                        "command": "python -m core make-default --data DATA --recipe field"
                                   + (f" --cross-validate {folds}" if folds != FIELD_FOLDS else "")})


def demo_reason(card: dict) -> str:
    """Why a card says DEMO (core.training.runcard.is_demo's rule), in words."""
    learnt = (card.get("evidence") or {}).get("images")
    if ((card.get("training") or {}).get("settings") or {}).get("demo"):
        return "trained with --demo"
    if isinstance(learnt, int) and learnt < DEMO_BELOW_TRAIN_IMAGES:
        return f"its weights learnt from {learnt} real images, fewer than {DEMO_BELOW_TRAIN_IMAGES}"
    untaught = card_untaught_classes(card)
    if untaught:
        return f"its weights never saw a real {' or '.join(untaught)} image"
    return "its card says so"


def _installable(model_dir, allow_demo: bool, kept: str) -> dict:
    """The card of a model that may be installed: checksum and safe loading checked before anything is
    replaced; a DEMO model refused unless allowed, because the default is what every session starts with."""
    _, card = load_model_folder(model_dir)
    if card_is_demo(card) and not allow_demo:
        raise UserInputError(f"{model_dir} holds a DEMO model ({demo_reason(card)}): it has no valid accuracy, and "
                             "the default model is the one every pathologist's session starts with. Nothing was "
                             f"installed ({kept}); --allow-demo installs it anyway (a demonstration or test setup)")
    return card


def _install(model_dir, extras: list[Path], out: Path, run_dir: Path, recipe: dict) -> Installed:
    """Copy the model and its extras to a staging folder beside `out`, write the recipe into its card, then
    swap it in; the model already at `out` is moved aside (_move_aside), never deleted."""
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    for extra in extras:
        if extra.exists():
            shutil.copy2(extra, staging / extra.name)
    card = update_card(staging, recipe=recipe)
    previous = _card_or_empty(out) if (out / CARD_FILE).is_file() else None
    backup = _move_aside(out)
    staging.rename(out)
    return Installed(out, card, Path(run_dir), backup, previous)


def _card_or_empty(folder: Path) -> dict:
    try:
        return read_card(folder)
    except (ModelFolderError, UserInputError):
        return {}


def _move_aside(out: Path) -> Path | None:
    """The model folder at `out` -> `.NAME.previous-<UTC time>` beside it, so the deployment's previous
    default is one `mv` away. Hidden (a dot folder) so that the model list never offers a replaced default
    (core.model.folders.find_model_folders skips dot folders). An empty folder is just removed."""
    if not out.exists():
        return None
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    backup = unused_name(out.with_name(f".{out.name}.previous-{stamp}"))  # two installs within a second: -2
    out.rename(backup)
    return backup
