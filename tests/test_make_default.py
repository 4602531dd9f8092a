"""The default-model recipes: refuse to overwrite without --force, and the data picks the recipe."""

from core.cli import main as cli
from core.training.recipes import FULL, LIMITED, choose_recipe


def test_existing_default_is_kept_without_force(tmp_path, samples_dir, capsys):
    (tmp_path / "card.json").write_text("{}")
    assert cli(["make-default", "--data", str(samples_dir), "--out", str(tmp_path)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (tmp_path / "card.json").read_text() == "{}"


def test_the_limited_recipe_trains_from_scratch_and_the_full_one_from_imagenet(samples_dir):
    assert FULL["weights"] == "imagenet" and FULL["backbone"] == "densenet121" and FULL["split"] == "patient-wise"
    assert LIMITED["weights"] == "none" and LIMITED["split"] == "patient-wise" and LIMITED["zoom"] < 1
    assert LIMITED["hierarchy"] == FULL["hierarchy"] == "hierarchical"
    assert choose_recipe(samples_dir) == "limited"  # 22 images are far from the full 7,909
