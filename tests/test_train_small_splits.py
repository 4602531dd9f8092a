"""A fields run on one split of a small folder (QA #3): 16 patients, 2 of each subtype, leave the validation split
empty; the run trained to the end, then failed with NumPy's "need at least one array to concatenate" when it fitted
its temperatures on no validation prediction. It is now refused at its start, naming the split and its counts."""

import json

import pytest

TINY = ["--backbone", "small_cnn", "--weights", "none", "--input-size", "32", "--epochs", "1", "--batch-size", "16",
        "--warmup-steps", "2"]


@pytest.fixture(scope="module")
def two_per_subtype(tmp_path_factory):
    """16 patients, 2 per subtype, 2 images each: the patient-wise split gives none of them to validation."""
    from core.testing.synthetic import write_synthetic_breakhis

    return write_synthetic_breakhis(tmp_path_factory.mktemp("small"), images_per_case=2, cases_per_subtype=2)


def test_a_fields_run_whose_validation_split_is_empty_is_refused_before_training(two_per_subtype, tmp_path, capsys):
    """The CLI exits with a user error naming the empty split, its counts and --folds; the run's stream ends
    "failed" with the same words (what a Retrain job shows) and has no epoch: nothing was trained."""
    from core.cli import USER_ERROR, main

    out = tmp_path / "run"
    assert main(["train", "--pipeline", "fields", "--data", str(two_per_subtype), "--out", str(out), *TINY]) == USER_ERROR
    said = capsys.readouterr().err
    assert "error: Cannot train on one split: its validation split would be empty" in said
    assert "validation 0 patients (0 images)" in said and "16 patients in all, at most 2 patients of a subtype" in said
    assert "--folds K" in said and "Patient-wise cross-validation folds" in said
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["event"] in ("start", "epoch_begin", "step")]
    assert events[-1]["status"] == "failed" and "validation split would be empty" in events[-1]["message"]
    assert not (out / "model").exists()


def test_an_empty_test_split_is_named_too(synthetic_breakhis):
    """One patient per subtype gives every patient to training: both held-out splits are named."""
    from core.data.breakhis import index_folder
    from core.data.splits import make_split
    from core.errors import UserInputError
    from core.training.runcard import refuse_empty_held_out

    images = index_folder(synthetic_breakhis).images
    one_each = images[images["case"].isin(images.drop_duplicates("subtype")["case"])]
    with pytest.raises(UserInputError, match="its validation and test split would be empty") as refused:
        refuse_empty_held_out(make_split(one_each))
    assert "test 0 patients (0 images)" in str(refused.value)
    refuse_empty_held_out(make_split(images))  # 3 patients of each subtype: every split has some
