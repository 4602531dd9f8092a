"""A training split without a class (QA retrain #4): 480 benign images trained to completion, not DEMO, and
showed "stage-1 accuracy 1.00". Both pipelines now refuse such a run at its start, naming the class; a card
written before this (or by a run that got past it) is DEMO wherever the model is described."""

import json
import shutil

import pytest

TINY = ["--backbone", "small_cnn", "--weights", "none", "--input-size", "32", "--epochs", "1", "--batch-size", "16"]


@pytest.fixture(scope="module")
def benign_only(synthetic_breakhis, tmp_path_factory):
    """The 48 benign images of the synthetic set, 12 patients: no malignant image anywhere."""
    folder = tmp_path_factory.mktemp("benign") / "data"
    shutil.copytree(synthetic_breakhis, folder)
    (malignant,) = folder.rglob("breast/malignant")
    shutil.rmtree(malignant)
    return folder


@pytest.mark.parametrize("pipeline", [["tfdata"], ["fields", "--warmup-steps", "2"],
                                      ["fields", "--warmup-steps", "2", "--folds", "3"]],
                         ids=["tfdata", "fields", "fields-cv"])
def test_a_training_split_without_a_class_is_refused_at_start_naming_it(benign_only, tmp_path, capsys, pipeline):
    from core.cli import USER_ERROR, main

    out = tmp_path / "run"
    assert main(["train", "--pipeline", *pipeline, "--data", str(benign_only), "--out", str(out), *TINY]) == USER_ERROR
    said = capsys.readouterr().err
    assert "error: The training split has no malignant images" in said and "benign" in said
    assert not (out / "model").exists()
    end = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()][-1]
    assert end["status"] == "failed" and "no malignant images" in end["message"]  # what the Retrain page shows


def test_a_card_whose_weights_never_saw_a_class_is_demo_wherever_it_is_described():
    """An older one-class card (demo false, LIMITED only) and the rule a new card is written with."""
    from types import SimpleNamespace

    from core.app.registry import describe_model, model_badge
    from core.training.runcard import is_demo

    older = {"name": "bigbenign", "backbone": "small_cnn", "demo": False,
             "evidence": {"images": 320, "patients": 16, "limited": True, "statement": "weights learnt from ..."},
             "training": {"by_subtype": {"adenosis": 80, "fibroadenoma": 80, "phyllodes_tumor": 80,
                                         "tubular_adenoma": 80}},
             "metrics": {"split": "test", "intervals": {"patient": {"cases": 4, "stage1_accuracy": {
                 "value": 1.0, "low": 1.0, "high": 1.0}}}}}
    assert describe_model(older)["demo"] and model_badge(older) == "DEMO · bigbenign (small_cnn)"
    both = {**older, "training": {"by_subtype": {"adenosis": 300, "ductal_carcinoma": 300}}}
    assert not describe_model(both)["demo"] and model_badge(both).startswith("LIMITED DATA · bigbenign")
    # ... and the predictor's banner, Compare and make-default read the same rule (they read the card's flag alone)
    from core.app.comparison import Run
    from core.model.folders import card_is_demo
    from core.model.predict import Predictor
    from core.training.recipes import demo_reason

    assert card_is_demo(older) and not card_is_demo(both)
    assert Predictor(None, {**older, "hierarchy": "hierarchical", "input_size": 32}).is_demo
    assert Run.__dict__["demo"].fget(SimpleNamespace(card=older))
    assert demo_reason(older) == "its weights never saw a real malignant image"
    config = SimpleNamespace(demo=False)
    assert is_demo(config, {"images": 320, "by_class": {"benign": 320, "malignant": 0}})
    assert not is_demo(config, {"images": 320, "by_class": {"benign": 160, "malignant": 160}})


def test_the_evidence_of_a_new_card_counts_its_real_training_images_per_class(synthetic_breakhis):
    from core.data.breakhis import index_folder
    from core.training.runcard import evidence

    learnt = evidence(index_folder(synthetic_breakhis).images, "random initialisation", "the test split")
    assert learnt["by_class"] == {"benign": 48, "malignant": 48}
