"""The default-model recipes: refuse to overwrite without --force, the data picks the recipe, and
make-default trains exactly the recipe it names."""

import pandas as pd
import pytest

from core.cli import main as cli
from core.errors import UserInputError
from core.training import recipes


def test_existing_default_is_kept_without_force(tmp_path, samples_dir, capsys):
    (tmp_path / "card.json").write_text("{}")
    assert cli(["make-default", "--data", str(samples_dir), "--out", str(tmp_path)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (tmp_path / "card.json").read_text() == "{}"


def test_the_number_of_images_picks_the_recipe(tmp_path, manifest_path, samples_dir):
    """Below FULL_SET_MIN_IMAGES BreakHis images the field recipe, from it on the full one (empty
    files with BreakHis names: the choice counts images, it does not read them)."""
    names = pd.read_csv(manifest_path)["path"].map(lambda p: p.rsplit("/", 1)[-1])
    folder = tmp_path / "data"
    folder.mkdir()
    for name in names[: recipes.FULL_SET_MIN_IMAGES - 1]:
        (folder / name).touch()
    assert recipes.choose_recipe(folder) == "field"
    (folder / names[recipes.FULL_SET_MIN_IMAGES - 1]).touch()
    assert recipes.choose_recipe(folder) == "full"
    assert recipes.choose_recipe(samples_dir) == "field"  # the 22 bundled samples


@pytest.mark.parametrize("recipe", sorted(recipes.RECIPES))
def test_make_default_trains_the_named_recipe_and_nothing_else(recipe, tmp_path, samples_dir, monkeypatch):
    from core.training.config import validate

    trained = []

    def capture(config):
        trained.append(config)
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(recipes, "train", capture)
    monkeypatch.setattr(recipes, "cross_validate_fields", capture)  # the field recipe cross-validates
    monkeypatch.setenv("BREAKHIS_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(KeyboardInterrupt):
        recipes.make_default(samples_dir, recipe, tmp_path / "model")
    [config] = trained
    assert {k: getattr(config, k) for k in recipes.RECIPES[recipe]} == recipes.RECIPES[recipe]
    assert config.data == str(samples_dir) and f"default-{recipe}-" in config.out
    validate(config)  # every recipe is a valid run
    with pytest.raises(UserInputError, match="Unknown recipe"):
        recipes.make_default(samples_dir, "huge", tmp_path / "model")
    assert not (tmp_path / "model").exists()  # nothing installed


@pytest.mark.parametrize("recipe", sorted(recipes.RECIPES))
@pytest.mark.parametrize("folds", [1, -3])
def test_a_cross_validation_that_cannot_run_is_refused_before_training(recipe, folds, tmp_path, samples_dir,
                                                                       monkeypatch):
    """--cross-validate 1 with the limited or full recipe was refused only after the whole model had
    trained (minutes to hours)."""
    def never(config):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(recipes, "train", never)
    monkeypatch.setattr(recipes, "cross_validate_fields", never)
    monkeypatch.setenv("BREAKHIS_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(UserInputError, match="at least 2 folds"):
        recipes.make_default(samples_dir, recipe, tmp_path / "model", cross_validate=folds)
    assert not (tmp_path / "model").exists()


def test_force_replaces_a_model_folder_never_a_folder_of_other_things(tmp_path, samples_dir, monkeypatch):
    """`--out models --force` (a typo for models/default) would rmtree models/ and every model in it
    once training ended; --force replaces a model folder only."""
    class Stop(Exception):
        pass

    def stop(config):
        raise Stop

    monkeypatch.setattr(recipes, "cross_validate_fields", stop)
    monkeypatch.setenv("BREAKHIS_RUNS_DIR", str(tmp_path / "runs"))
    (tmp_path / "models" / "small-cnn").mkdir(parents=True)
    (tmp_path / "models" / "small-cnn" / "card.json").write_text("{}")
    for install in (lambda: recipes.make_default(samples_dir, "field", tmp_path / "models", force=True),
                    lambda: recipes.install_run(tmp_path / "runs" / "x", tmp_path / "models", force=True)):
        with pytest.raises(UserInputError, match="not a model folder"):
            install()
    assert (tmp_path / "models" / "small-cnn" / "card.json").is_file()
    (tmp_path / "models" / "default").mkdir()
    (tmp_path / "models" / "default" / "card.json").write_text("{}")
    with pytest.raises(Stop):  # a model folder may be replaced
        recipes.make_default(samples_dir, "field", tmp_path / "models" / "default", force=True)


@pytest.mark.parametrize("typed, named", [
    (["--recipe", "field"], "--recipe"),
    (["--cross-validate", "3"], "--cross-validate"),
    (["--cross-validate", "0"], "--cross-validate"),  # typed, even at its default value
    (["--recipe", "limited", "--cross-validate", "5"], "--recipe and --cross-validate")])
def test_from_run_refuses_the_training_options_it_would_ignore(typed, named, tmp_path, monkeypatch, capsys):
    """--from-run installs a run already trained: --recipe and --cross-validate were silently ignored."""
    installed = []
    monkeypatch.setattr(recipes, "install_run", lambda *args: installed.append(args) or recipes.Installed(
        tmp_path / "model", {}, tmp_path / "run"))
    from core.app import install_report

    monkeypatch.setattr(install_report, "record_install", lambda installed: (True, "audited"))
    assert cli(["make-default", "--from-run", str(tmp_path / "run"), "--out", str(tmp_path / "model"), *typed]) == 2
    error = capsys.readouterr().err
    assert f"{named} describe training" in error and "--from-run installs a run already trained" in error
    assert not installed
    assert cli(["make-default", "--from-run", str(tmp_path / "run"), "--out", str(tmp_path / "model")]) == 0
    assert len(installed) == 1  # without them (their defaults do not count) it installs


def test_data_refuses_the_command_of_a_run_trained_elsewhere(tmp_path, samples_dir, monkeypatch, capsys):
    """--command is --from-run's (what trained that run); with --data it was silently ignored."""
    def never(config):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(recipes, "train", never)
    monkeypatch.setattr(recipes, "cross_validate_fields", never)
    monkeypatch.setenv("BREAKHIS_RUNS_DIR", str(tmp_path / "runs"))
    assert cli(["make-default", "--data", str(samples_dir), "--out", str(tmp_path / "model"), "--command", "x"]) == 2
    assert "--command" in capsys.readouterr().err and not (tmp_path / "model").exists()


# ---------------------------------------------------------------- installing over the deployment's default

@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """An old default, a candidate and a DEMO candidate (untrained small CNNs: only their cards differ)."""
    from core.model.folders import update_card
    from core.testing.apptest import make_model_folder

    root = tmp_path_factory.mktemp("model_folders")
    folders = {"old": make_model_folder(root / "old", demo=False, name="old-default"),
               "new": make_model_folder(root / "new", demo=False, name="new-candidate", hierarchy="flat"),  # other weights
               "demo": make_model_folder(root / "demo", demo=True, name="demo-candidate")}
    update_card(folders["demo"], evidence={"images": 32, "patients": 4})
    return folders


def cv_run(folder, model):
    """What `train --pipeline fields --folds 2` leaves for make-default --from-run: model/ and cv.json."""
    import json
    import shutil

    shutil.copytree(model, folder / "model")
    (folder / "cv.json").write_text(json.dumps({"folds": 2}))
    return folder


@pytest.fixture
def deployment(tmp_path, monkeypatch, model_folders):
    """A temporary models/default (never the repository's), the default new sessions start with, and its
    own database folder."""
    import shutil

    default = tmp_path / "models" / "default"
    shutil.copytree(model_folders["old"], default)
    monkeypatch.setenv("BREAKHIS_DEFAULT_MODEL", str(default))
    monkeypatch.setenv("BREAKHIS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("BREAKHIS_DATABASE_URL", raising=False)
    return default


def test_force_keeps_the_replaced_default_and_audits_the_install(deployment, tmp_path, model_folders, capsys):
    """make-default --force deleted the previous default (shutil.rmtree) and wrote no audit row: the one
    change of the model every pathologist's session starts with left no trace and no way back."""
    from core.app.registry import available_models
    from core.model.folders import read_card
    from core.store.audit import Store

    old = read_card(deployment)
    run = cv_run(tmp_path / "cv", model_folders["new"])
    assert cli(["make-default", "--from-run", str(run), "--out", str(deployment), "--force"]) == 0
    out = capsys.readouterr().out
    assert read_card(deployment)["name"] == "new-candidate"
    [backup] = [f for f in deployment.parent.iterdir() if f.name.startswith(".default.previous-")]
    assert read_card(backup) == old and (backup / "model.keras").is_file()  # the whole folder, as it was
    assert f"was moved to {backup}, not deleted" in out and f"mv {backup} {deployment}" in out
    assert str(backup.resolve()) not in available_models()  # never offered as a model of its own
    [row] = Store.open().events(kinds="model_activated")
    assert row["user"] == "system" and row["model"] == "new-candidate"
    assert row["model_sha256"] == read_card(deployment)["sha256"] != old["sha256"]
    details = row["details"]
    assert details["scope"] == "deployment" and details["previous_sha256"] == old["sha256"]
    assert details["from_run"] == str(run) and details["backup"] == str(backup) and details["os_user"]
    assert f"Audit row #{row['id']} (model_activated, scope deployment)" in out


def test_an_unreachable_database_is_said_not_skipped(deployment, tmp_path, model_folders, monkeypatch, capsys):
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", "postgresql+psycopg://alice:S3cretPW@127.0.0.1:1/breakhis")
    run = cv_run(tmp_path / "cv", model_folders["new"])
    assert cli(["make-default", "--from-run", str(run), "--out", str(deployment), "--force"]) == 0
    captured = capsys.readouterr()
    assert "NOT AUDITED" in captured.err and "S3cretPW" not in captured.out + captured.err
    assert "Installed" in captured.out  # the install itself, and where the old model went, are still said


def test_a_demo_model_is_refused_as_the_default_unless_allowed(deployment, tmp_path, model_folders, capsys):
    """A 32-image DEMO run was installed as the deployment's default without a word."""
    from core.model.folders import read_card

    run = cv_run(tmp_path / "cv", model_folders["demo"])
    assert cli(["make-default", "--from-run", str(run), "--out", str(deployment), "--force"]) == 2
    error = capsys.readouterr().err
    assert "DEMO model (its weights learnt from 32 real images, fewer than 200)" in error and "--allow-demo" in error
    assert read_card(deployment)["name"] == "old-default" and len(list(deployment.parent.iterdir())) == 1
    assert cli(["make-default", "--from-run", str(run), "--out", str(deployment), "--force", "--allow-demo"]) == 0
    assert "warning: this is a DEMO model" in capsys.readouterr().out
    assert read_card(deployment)["name"] == "demo-candidate"
