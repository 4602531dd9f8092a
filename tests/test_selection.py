"""One selection of images for every user: split specs, folds, fingerprints and portable paths."""

import shutil

import pandas as pd
import pytest

from core.data.breakhis import index_folder
from core.data.selection import (
    NO_SPLIT,
    SplitSpec,
    assign_splits,
    fingerprint,
    relative_to_data,
    resolve_paths,
    select_images,
)
from core.data.splits import PATIENT, patient_kfold


def test_a_spec_normalises_protocols_and_refuses_impossible_folds():
    assert SplitSpec("patient").protocol == PATIENT == SplitSpec("patient-wise").protocol
    assert SplitSpec("image-level").label == "image-level (leaky)"
    assert SplitSpec(folds=5, fold=2).label == "patient-wise 5-fold CV (fold 2)"
    for bad in (dict(folds=1), dict(folds=3, fold=3), dict(folds=3, protocol="image-level")):
        with pytest.raises(ValueError, match="k-fold"):
            SplitSpec(**bad)
    with pytest.raises(ValueError, match="Unknown split protocol"):
        SplitSpec("by-slide")


def test_k_fold_selection_is_the_splitters_own_fold(synthetic_breakhis):
    images = index_folder(synthetic_breakhis).images
    for fold in range(3):
        selected = assign_splits(images, SplitSpec(folds=3, fold=fold, seed=4))
        expected = patient_kfold(images, k=3, seed=4)[fold]
        assert selected["split"].tolist() == expected["split"].tolist()
        assert set(selected["protocol"]) == {f"patient-wise 3-fold CV (fold {fold})"}
    everything = assign_splits(images, SplitSpec(NO_SPLIT))
    assert set(everything["split"]) == {"train"} and len(everything) == len(images)
    at_40x = assign_splits(images, SplitSpec(magnification="40X"))
    assert set(at_40x["magnification"]) == {"40X"}


def test_the_fingerprint_names_the_data_not_the_folder(synthetic_breakhis, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(synthetic_breakhis, moved)
    original, copy = select_images(synthetic_breakhis, SplitSpec()), select_images(moved, SplitSpec())
    assert original.fingerprint == copy.fingerprint
    assert original.split["split"].tolist() == copy.split["split"].tolist()
    next(moved.rglob("*.png")).unlink()
    assert select_images(moved, SplitSpec()).fingerprint != original.fingerprint
    assert fingerprint(original.split.iloc[::-1]) == original.fingerprint  # order does not matter


def test_paths_relative_to_the_data_folder_round_trip(synthetic_breakhis, tmp_path):
    table = select_images(synthetic_breakhis, SplitSpec()).split
    outside = table.iloc[:1].assign(path=str(tmp_path / "SYN_A-gan-0-00001.png"))  # a GAN image elsewhere
    both = pd.concat([table, outside], ignore_index=True)
    relative = relative_to_data(both, synthetic_breakhis)
    assert relative["path"].iloc[0].startswith("BreaKHis_v1/") and relative["path"].iloc[-1] == outside["path"].item()
    moved = tmp_path / "moved"
    restored = resolve_paths(relative, moved)
    assert restored["path"].iloc[0] == str(moved / relative["path"].iloc[0])
    assert restored["path"].iloc[-1] == outside["path"].item()


def test_the_training_log_names_images_filed_under_two_patients(synthetic_breakhis, tmp_path, caplog):
    """A copy of a patient's image under another patient was used twice without a word in the log."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_breakhis, data)
    original = sorted(data.rglob("*-14-1013-*.png"))[0]
    shutil.copy(original, data / original.name.replace("14-1013", "14-99001"))
    with caplog.at_level("WARNING", logger="core.data.selection"):
        selection = select_images(data, SplitSpec())
    assert len(selection.split) == 96 and "14-99001" not in set(selection.split["case"])
    assert "1 file is byte-identical to an image of another patient" in caplog.text
    assert "(case 14-99001) = " in caplog.text


def test_the_training_log_names_a_file_in_a_folder_of_another_label(synthetic_breakhis, tmp_path, caplog):
    """Nothing was skipped, so nothing was logged, although a malignant name sat in benign/."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_breakhis, data)
    malignant = sorted(data.rglob("SOB_M_DC-*.png"))[0]
    benign = next(data.rglob("benign"))
    malignant.rename(benign / malignant.name)
    with caplog.at_level("WARNING", logger="core.data.selection"):
        select_images(data, SplitSpec())
    assert f"{benign / malignant.name}: folder benign but the name says malignant" in caplog.text
