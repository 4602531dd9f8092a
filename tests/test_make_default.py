"""The default-model recipe script refuses to overwrite without --force, with a message, not a traceback."""

from core.cli import main as cli
from core.training.recipes import DEMO_RECIPE, RECIPE


def test_existing_default_is_kept_without_force(tmp_path, capsys):
    (tmp_path / "card.json").write_text("{}")
    assert cli(["make-default", "--demo", "--out", str(tmp_path)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (tmp_path / "card.json").read_text() == "{}"


def test_demo_recipe_differs_from_the_real_one_only_in_size_and_demo_flag():
    different = {key for key in DEMO_RECIPE if DEMO_RECIPE[key] != RECIPE.get(key)}
    assert different == {"epochs", "batch_size", "patience", "demo"}
    assert RECIPE["weights"] == "imagenet" and RECIPE["split"] == "patient-wise"
    assert RECIPE["backbone"] == "densenet121" and RECIPE["hierarchy"] == "hierarchical"
