"""Ensembles and uncertainty: members on the same split averaged after calibration, every member
and the ensemble evaluated on the same cases, disagreement as a refer reason, mean heat maps."""

import json
from pathlib import Path

import numpy as np
import pytest

from core.data.labels import CLASSES
from core.model.loading import load_predictor

TINY = dict(backbone="small_cnn", weights="none", input_size=64, batch_size=16, epochs=3, patience=3,
            echo_stdout=False)


@pytest.fixture(scope="module")
def ensemble(synthetic_breakhis, tmp_path_factory):
    """Three small models on the same patient-wise split (three seeds of initialisation only)."""
    from core.training.ensemble_run import ensemble_run
    from core.training.fit import train

    root = tmp_path_factory.mktemp("ensemble")
    members = []
    for seed in (0, 1, 2):
        # The split seed stays 0: the same split; training randomness differs through the run folder order.
        import keras

        keras.utils.set_random_seed(seed)
        run = root / f"member{seed}"
        train(dict(data=str(synthetic_breakhis), out=str(run), seed=0, learning_rate=10 ** -(2.5 + seed / 2), **TINY))
        members.append(run / "model")
    ensemble_run(members, root / "ens")
    return root / "ens"


def test_the_ensemble_and_each_member_are_evaluated_on_the_same_cases(ensemble):
    metrics = json.loads((ensemble / "metrics.json").read_text())
    assert len(metrics["members"]) == 3
    for member in metrics["members"]:
        assert member["data"] == metrics["data"]  # same held-out images and cases
    # The ensemble serves the mean of its members' calibrated stage-1 probabilities, so on the same
    # images its Brier score can be no worse than their mean Brier score (the score is convex): this
    # fails if the members were scored on other cases or the ensemble did not average them. Counts
    # such as macro-F1 have no such bound: three 3-epoch members flip with thread scheduling.
    members_brier = np.mean([m["stage1_brier"] for m in metrics["members"]])
    assert metrics["stage1_brier"] <= members_brier + 1e-9, (metrics["stage1_brier"], members_brier)
    assert metrics["stage1_brier"] < max(m["stage1_brier"] for m in metrics["members"])  # members differ
    from core.app.performance import members_table

    shown = members_table(metrics)  # what the Model performance page lays out
    assert shown["stage-1 Brier"].tolist() == [round(s["stage1_brier"], 4) for s in [metrics, *metrics["members"]]]
    assert metrics["uncertainty"]["source"] == "ensemble members" and not metrics["uncertainty"]["needs_tta"]
    card = json.loads((ensemble / "model" / "card.json").read_text())
    assert card["kind"] == "ensemble" and card["thresholds"]["uncertainty"]["p_malignant_spread"] >= 0
    # Members trained on a few patients are LIMITED DATA models, and so is their mean, wherever it predicts.
    from core.app.registry import model_badge

    members = [json.loads((ensemble.parent / f"member{seed}" / "model" / "card.json").read_text()) for seed in (0, 1, 2)]
    assert all(m["evidence"]["limited"] for m in members)
    assert card["evidence"]["limited"] and model_badge({**card, "demo": False}).startswith("LIMITED DATA · ")
    assert all(m["evidence"]["statement"] in card["evidence"]["statement"] for m in members)


def test_an_ensemble_predicts_the_mean_of_calibrated_members_with_their_disagreement(ensemble, samples_dir):
    from core.data.images import load_image

    predictor = load_predictor(ensemble / "model")
    assert type(predictor).__name__ == "EnsemblePredictor" and len(predictor.members) == 3
    rgb = load_image(sorted(samples_dir.rglob("*.png"))[0]).rgb
    prediction = predictor.predict([rgb])[0]
    members = [m.predict([rgb])[0] for m in predictor.members]
    expected = np.mean([m.stage1["malignant"] for m in members])
    assert prediction.stage1["malignant"] == pytest.approx(expected, abs=1e-5)
    assert prediction.uncertainty["views"] == 3 and prediction.uncertainty["source"] == "ensemble members"
    spread = np.std([m.stage1["malignant"] for m in members])
    assert prediction.uncertainty["p_malignant_spread"] == pytest.approx(spread, abs=1e-5)
    predictor.uncertainty_threshold = -1.0  # any spread is more than allowed: a refer reason
    assert any("the ensemble's 3 models disagree about malignancy" in r
               for r in predictor.predict([rgb])[0].refer_reasons), spread
    predictor.uncertainty_threshold = 1.0  # no spread can exceed it: no such reason
    assert not any("disagree" in r for r in predictor.predict([rgb])[0].refer_reasons)


def test_an_ensemble_heat_map_is_the_mean_of_its_members_maps(ensemble, samples_dir, monkeypatch):
    from core.data.images import load_image
    from core.model import cam
    from core.model.cam import explain
    from core.model.heatmap import to_heatmap

    predictor = load_predictor(ensemble / "model")
    rgb = load_image(sorted(samples_dir.rglob("*.png"))[1]).rgb
    passes = []
    for member in predictor.members:  # count each member's compiled passes
        explainer = cam.explainer_for(member)
        monkeypatch.setattr(explainer, "gradcam_pass",
                            lambda batch, tta=False, run=explainer.gradcam_pass: passes.append(len(batch))
                            or run(batch, tta))
    diagnosis = explain(predictor, rgb)
    other = next(c for c in CLASSES if c != diagnosis.prediction.label)
    assert explain(predictor, rgb, "gradcam", other).explanations["stage1"].target == other
    # One pass per member, for the vote's targets and for targets no member predicted: each pass
    # holds every target's map.
    assert passes == [1] * 6
    monkeypatch.undo()
    p = diagnosis.prediction
    maps = [explain(m, rgb, "gradcam", p.label, p.subtype).explanations["stage2"].heatmap for m in predictor.members]
    expected, _ = to_heatmap(np.mean(maps, axis=0), rgb.shape[:2])
    np.testing.assert_allclose(diagnosis.explanations["stage2"].heatmap, expected, atol=1e-5)
    assert diagnosis.explanations["stage1"].target == p.label


def test_a_swapped_member_is_refused(ensemble, tmp_path):
    import shutil

    from core.errors import ModelFolderError

    copy = tmp_path / "ens"
    shutil.copytree(ensemble.parent, copy)
    card = json.loads((copy / "ens" / "model" / "card.json").read_text())
    card["members"][0]["sha256"] = "0" * 64
    (copy / "ens" / "model" / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFolderError, match="not the model this ensemble was built from"):
        load_predictor(copy / "ens" / "model")


def test_test_time_views_give_a_single_model_its_uncertainty(ensemble, samples_dir):
    from core.data.images import load_image

    member = load_predictor(ensemble / "model").members[0]
    rgb = load_image(sorted(samples_dir.rglob("*.png"))[2]).rgb
    assert member.predict([rgb])[0].uncertainty is None  # one view: nothing to disagree
    with_views = member.predict([rgb], tta=True)[0]
    assert with_views.uncertainty["views"] == 8 and with_views.uncertainty["source"] == "test-time views"
    assert 0.0 <= with_views.uncertainty["p_malignant_spread"] <= 0.5 and with_views.uncertainty["mutual_information"] >= 0


def test_an_ensemble_whose_evaluation_fails_leaves_nothing_behind(synthetic_breakhis, tmp_path):
    """ensemble_run is all or nothing: a failed evaluation (here a split.csv without its label column, as
    single-split fields runs wrote) used to leave OUT/model, and the retry said "already holds a model"."""
    import pandas as pd
    import pytest

    from core.data.breakhis import index_folder
    from core.data.splits import PATIENT, make_split
    from core.errors import UserInputError
    from core.model.classifier import build_classifier
    from core.model.folders import save_model_folder
    from core.training.ensemble_run import ensemble_run

    split = make_split(index_folder(synthetic_breakhis).images, PATIENT, seed=0)
    members = []
    for seed in (0, 1):  # untrained: evaluation only needs two models of one split
        run = tmp_path / f"member{seed}"
        run.mkdir()
        split.drop(columns="label").to_csv(run / "split.csv", index=False)
        model, _ = build_classifier("small_cnn", "hierarchical", weights=None, input_size=32)
        members.append(save_model_folder(model, run / "model", {"backbone": "small_cnn", "hierarchy": "hierarchical"}))
    kept = tmp_path / "kept"  # an existing OUT keeps what it held
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for out in (tmp_path / "ens", kept):
        with pytest.raises(UserInputError, match="lacks the column"):
            ensemble_run(members, out)
        assert not out.exists() if out.name == "ens" else sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    for member in members:  # the members' runs mended: the retry runs
        split.to_csv(member.parent / "split.csv", index=False)
    ensemble_run(members, tmp_path / "ens")
    assert (tmp_path / "ens" / "metrics.json").is_file() and pd.read_csv(tmp_path / "ens" / "split.csv")["label"].any()
    moved = split.assign(path=["/nowhere/" + Path(p).name for p in split["path"]])  # the data folder moved
    for member in members:
        moved.to_csv(member.parent / "split.csv", index=False)
    with pytest.raises(UserInputError, match="--data DIR"):  # refused, as evaluate is; the CLI now takes --data
        ensemble_run(members, tmp_path / "moved")
    ensemble_run(members, tmp_path / "moved", data=synthetic_breakhis)  # found again by file name
    assert json.loads((tmp_path / "moved" / "metrics.json").read_text())["data"]["images"] == (split["split"] == "test").sum()


def _stub_member(dihedral: bool):
    """A classifier with no Keras model whose outputs are fixed: enough for what an ensemble reports."""
    from core.data.labels import SUBTYPES_BY_CLASS
    from core.model.predict import Predictor

    card = {"hierarchy": "hierarchical", "input_size": 64}
    if dihedral:  # a field model whose card declares the 8 symmetries (as models/default's does)
        card["views"] = {"kind": "field", "input_size": 64, "crop_px": 224, "crops": 3, "dihedral": True,
                         "field_px": [350, 230]}
    member = Predictor(None, card)
    outputs = {"stage1": [0.3, 0.7], **{f"{c}_subtype": [1 / len(s)] * len(s) for c, s in SUBTYPES_BY_CLASS.items()}}
    member.probabilities = lambda images, tta=False, tiles=False, magnifications=None: {
        name: np.tile(np.float32(p), (len(images), 1)) for name, p in outputs.items()}
    return member


@pytest.mark.parametrize("dihedral, expected", [((True, False), True), ((False, False), False)])
def test_an_ensemble_says_tta_when_a_member_averages_its_symmetries(dihedral, expected):
    """An ensemble has no views of its own: its prediction and audit settings said "tta": false although
    a member whose card declares the 8 symmetries (models/default) averaged them."""
    from core.app.records import diagnosis_settings
    from core.model.ensemble import EnsemblePredictor

    predictor = EnsemblePredictor([_stub_member(d) for d in dihedral], {"hierarchy": "hierarchical"})
    rgb = np.zeros((64, 64, 3), np.uint8)
    assert predictor.uses_tta() is expected and predictor.predict([rgb])[0].tta is expected
    assert diagnosis_settings(predictor, False, None, "not stated")["tta"] is expected
    assert predictor.uses_tta(True) and predictor.predict([rgb], tta=True)[0].tta
    # Predictions interpreted from outputs elsewhere (the app's service, a slide) say the same.
    assert predictor.interpret(predictor.probabilities([rgb]))[0].tta is expected
    declared = predictor.members[0]  # a single model that declares its symmetries says so however interpreted
    assert declared.interpret(declared.probabilities([rgb]))[0].tta is dihedral[0]


@pytest.mark.parametrize("dihedral, fixed", [((True, True), True), ((True, False), False), ((False, False), False)])
def test_the_tta_choice_is_locked_only_when_it_changes_nothing(dihedral, fixed):
    """Diagnose locked its TTA toggle on for an ensemble of models/default and small-cnn, which then gave the plain
    member symmetries the CLI does not: the choice is fixed only when every member declares them."""
    from core.model.ensemble import EnsemblePredictor

    predictor = EnsemblePredictor([_stub_member(d) for d in dihedral], {"hierarchy": "hierarchical"})
    assert predictor.tta_fixed() is fixed
    assert predictor.members[0].tta_fixed() is dihedral[0]


def test_members_of_one_split_share_it_whether_their_split_csv_paths_are_relative_or_absolute(tmp_path):
    """A tf.data run writes paths relative to its data folder, a fields run absolute ones: an ensemble of the two
    on the very same split was called 'members held out different cases (e.g. k-fold)' and left unevaluated."""
    import pandas as pd

    from core.training.ensemble_run import shared_split

    names = [f"SOB_B_A-14-22549AB-40-00{i}.png" for i in range(4)]
    splits = ["train", "train", "val", "test"]
    runs = {}
    for run, paths in (("tfdata", names), ("fields", [f"/data/tiny/{n}" for n in names]),
                       ("other", names[::-1])):
        (tmp_path / run / "model").mkdir(parents=True)
        pd.DataFrame({"path": paths, "split": splits}).to_csv(tmp_path / run / "split.csv", index=False)
        runs[run] = tmp_path / run / "model"
    common = shared_split([runs["tfdata"], runs["fields"]])
    assert common is not None and list(common["path"]) == names  # the first member's rows
    assert shared_split([runs["fields"], runs["tfdata"]]) is not None
    assert shared_split([runs["tfdata"], runs["other"]]) is None  # the same images in other splits
