"""Patient-wise splits on the full BreakHis manifest: no leakage, stratified, deterministic."""

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest

from core.data.breakhis import index_folder, load_manifest
from core.data.labels import SUBTYPES
from core.data.splits import (
    IMAGE,
    PATIENT,
    PROTOCOLS,
    assert_no_case_leakage,
    case_table,
    describe_split,
    make_split,
    patient_kfold,
    shared_cases,
    shared_content,
)


@pytest.fixture(scope="module")
def manifest(manifest_path) -> pd.DataFrame:
    return load_manifest(manifest_path)


@pytest.mark.parametrize("seed", [0, 1, 7, 42])
def test_patient_split_has_no_leakage_and_full_coverage(manifest, seed):
    split = make_split(manifest, seed=seed)
    assert_no_case_leakage(split)
    assert (split["protocol"] == PATIENT).all()
    assert set(split["split"]) == {"train", "val", "test"} and split["split"].notna().all()
    assert len(split) == len(manifest) and split.index.equals(manifest.index)
    description = describe_split(split)
    assert description["missing_subtypes"]["train"] == [] and description["missing_subtypes"]["test"] == []
    # Adenosis has only two cases (train first, then test), so val is the only gap allowed.
    assert set(description["missing_subtypes"]["val"]) <= {"adenosis"}
    assert sum(description["cases"].values()) == 70
    # Counts reasonable: a clear majority of patients and images in train, none empty.
    assert 0.55 <= description["images"]["train"] / len(manifest) <= 0.8
    assert description["cases"]["test"] >= 8 and description["cases"]["val"] >= 8
    assert not description["leaky"] and description["shared_cases"] == 0


def test_split_is_deterministic_and_seed_dependent(manifest):
    first, again = make_split(manifest, seed=3), make_split(manifest, seed=3)
    assert first["split"].equals(again["split"])
    other = make_split(manifest, seed=4)
    assert not first["split"].equals(other["split"])


def test_mixed_cases_are_kept_whole(manifest):
    """Case 14-13412 has a ductal and a lobular slide; 14-21998 three slides of two subtypes."""
    split = make_split(manifest, seed=0)
    for case in ("14-13412", "14-21998", "14-29960"):
        assert split.loc[split["case"] == case, "split"].nunique() == 1
    table = case_table(manifest)
    assert table.at["14-13412", "subtypes"] == {"ductal_carcinoma", "lobular_carcinoma"}
    assert table.at["14-13412", "subtype"] == "lobular_carcinoma"  # Tie goes to the rarer subtype.
    assert table.at["14-21998", "subtype"] == "fibroadenoma"  # 258 fibroadenoma vs 235 phyllodes images.
    assert len(table) == 70 and table["images"].sum() == 7909


def test_leakage_is_detected_by_name(manifest):
    split = make_split(manifest, seed=0)
    case = split["case"].iloc[0]
    other = split.loc[split["case"] != case, "split"].loc[lambda s: s != split["split"].iloc[0]].iloc[0]
    split.loc[split.index[0], "split"] = other
    with pytest.raises(ValueError, match=case):
        assert_no_case_leakage(split)


def test_image_level_protocol_is_labelled_leaky(manifest):
    split = make_split(manifest, protocol="image-level", seed=0)
    assert (split["protocol"] == IMAGE).all() and "leaky" in IMAGE
    description = describe_split(split)
    assert description["leaky"] and description["shared_cases"] > 50
    with pytest.raises(ValueError, match="more than one split"):
        assert_no_case_leakage(split)
    # Stratified per subtype: each subtype's test share is close to 15 %.
    test_share = split.groupby("subtype")["split"].apply(lambda s: (s == "test").mean())
    assert test_share.between(0.13, 0.17).all()


def test_kfold_covers_every_case_exactly_once_as_test(manifest):
    folds = patient_kfold(manifest, k=5, seed=0)
    assert len(folds) == 5
    test_cases = [set(fold.loc[fold["split"] == "test", "case"]) for fold in folds]
    all_cases = set(manifest["case"])
    assert set().union(*test_cases) == all_cases
    assert sum(len(cases) for cases in test_cases) == len(all_cases)  # Disjoint.
    for fold in folds:
        assert_no_case_leakage(fold)
        assert (fold["protocol"] == PATIENT).all()
        assert set(fold["split"]) == {"train", "val", "test"}
        assert describe_split(fold)["missing_subtypes"]["train"] == []
    # Each subtype's cases are spread: a subtype with >= 5 cases is tested in every fold.
    for subtype in ("ductal_carcinoma", "fibroadenoma", "mucinous_carcinoma", "tubular_adenoma"):
        assert all(describe_split(fold)["subtypes"]["test"][subtype] > 0 for fold in folds)


def test_small_dataset_split(synthetic_breakhis):
    """96 synthetic images, 3 cases per subtype: exactly one case per subtype in each split."""
    images = index_folder(synthetic_breakhis).images
    split = make_split(images, seed=0)
    per_split = split.groupby(["subtype", "split"])["case"].nunique().unstack()
    assert (per_split[["train", "val", "test"]] == 1).all().all()


def test_bad_inputs_have_clear_errors(manifest):
    with pytest.raises(ValueError, match="Unknown split protocol"):
        make_split(manifest, protocol="slide-wise")
    with pytest.raises(ValueError, match="empty"):
        make_split(manifest.iloc[:0])
    with pytest.raises(ValueError, match="room for training"):
        make_split(manifest, val_fraction=0.5, test_fraction=0.5)
    synthetic = manifest.head(3).assign(synthetic=True)
    with pytest.raises(ValueError, match="training part only"):
        make_split(pd.concat([manifest, synthetic]))
    with pytest.raises(ValueError, match="k must be"):
        patient_kfold(manifest, k=71)
    assert set(PROTOCOLS) == {PATIENT, IMAGE}


def test_synthetic_rows_are_ignored_for_leakage_but_must_stay_in_train(manifest):
    split = make_split(manifest, seed=0)
    extra = split.head(2).assign(case="synthetic", synthetic=True, split="train")
    combined = pd.concat([split, extra], ignore_index=True)
    assert shared_cases(combined) == {}
    assert_no_case_leakage(combined)
    combined.loc[combined.index[-1], "split"] = "test"
    with pytest.raises(ValueError, match="synthetic image"):
        assert_no_case_leakage(combined)
    assert describe_split(combined)["synthetic"] == {"train": 1, "val": 0, "test": 1}


def test_subtype_order_in_description(manifest):
    description = describe_split(make_split(manifest, seed=0))
    assert list(description["subtypes"]["train"]) == list(SUBTYPES)
    assert sum(description["images"].values()) == 7909


def test_zero_validation_fraction(manifest):
    split = make_split(manifest, val_fraction=0.0, seed=0)
    assert set(split["split"]) == {"train", "test"}
    folds = patient_kfold(manifest, k=3, val_fraction=0.0)
    assert all(set(fold["split"]) == {"train", "test"} for fold in folds)


@pytest.fixture
def copied_patient(synthetic_breakhis, tmp_path) -> Path:
    """The synthetic set plus every image of case 14-1013 again under a new patient, 14-99001."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_breakhis, root)
    for path in sorted(root.rglob("*-14-1013-*.png")):
        shutil.copy(path, root / path.name.replace("14-1013", "14-99001"))
    return root


def _in_two_splits(split: pd.DataFrame) -> int:
    digest = split["path"].map(lambda path: hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return int((split.groupby(digest)["split"].nunique() > 1).sum())


def test_identical_images_of_two_patients_never_sit_in_two_splits(copied_patient):
    """A patient's images copied under another accession number were two cases to the splitter, so the
    same pictures landed in train and test (seeds 0, 3, 4 and most k-folds on BreakHis) while
    assert_no_case_leakage passed. Indexing leaves the copies out, so no split or fold can hold both."""
    images = index_folder(copied_patient).images
    assert "14-99001" not in set(images["case"]) and (images["case"] == "14-1013").sum() == 4
    for seed in range(6):
        assert _in_two_splits(make_split(images, seed=seed)) == 0, seed
    for fold in patient_kfold(images, k=4, seed=0):
        assert _in_two_splits(fold) == 0


def test_leakage_check_catches_identical_files_under_other_names(copied_patient):
    """A table built without index_folder (a manifest, added images) can still hold both copies: the
    leakage check compares file contents too, not only case names."""
    original = sorted(copied_patient.rglob("*-14-1013-*.png"))[0]
    copy = copied_patient / original.name.replace("14-1013", "14-99001")
    table = pd.DataFrame({"path": [str(original), str(copy)], "case": ["14-1013", "14-99001"],
                          "subtype": ["phyllodes_tumor"] * 2, "split": ["train", "test"]})
    assert shared_content(table) == [{str(original): "train", str(copy): "test"}]
    with pytest.raises(ValueError, match="1 image\\(s\\) sit in more than one split as byte-identical"):
        assert_no_case_leakage(table)
    assert_no_case_leakage(table.assign(split="test"))  # both on one side: no leak
