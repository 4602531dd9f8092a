"""Balancing strategies change only the training table, and the preview reports their effect."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data.balance import (
    STRATEGIES,
    apply_strategy,
    balance_preview,
    class_weights,
    find_synthetic_images,
    oversample,
    synthetic_fill,
    undersample,
)
from core.data.breakhis import load_manifest, synthetic_name
from core.data.labels import SUBTYPES
from core.data.splits import assert_no_case_leakage, make_split
from core.errors import UserInputError


@pytest.fixture(scope="module")
def split(manifest_path) -> pd.DataFrame:
    return make_split(load_manifest(manifest_path), seed=0)


@pytest.fixture(scope="module")
def train(split) -> pd.DataFrame:
    return split[split["split"] == "train"]


@pytest.fixture(scope="module")
def gan_dir(tmp_path_factory) -> Path:
    """GAN output: 30 adenosis and 5 lobular images, plus files that must be ignored."""
    folder = tmp_path_factory.mktemp("gan")
    tile = Image.new("RGB", (16, 16), (200, 120, 180))
    for n in range(30):
        tile.save(folder / synthetic_name("adenosis", "dcgan v1", 0, n))
    (folder / "lobular").mkdir()
    for n in range(5):
        tile.save(folder / "lobular" / synthetic_name("lobular_carcinoma", "stylegan", 3, n))
    tile.save(folder / "SOB_B_A-14-22549AB-40-001.png")  # A real name: not synthetic.
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_class_weights_are_balanced(train):
    weights = class_weights(train)
    counts = train["subtype"].value_counts()
    assert set(weights) == set(counts.index)
    totals = {s: weights[s] * counts[s] for s in weights}
    assert np.allclose(list(totals.values()), len(train) / len(counts))
    assert weights["ductal_carcinoma"] == min(weights.values()) < 1 < max(weights.values())
    assert class_weights(train, column="label")["benign"] > 1 > class_weights(train, column="label")["malignant"]


def test_oversample_equalises_and_keeps_every_original(train):
    result = oversample(train, seed=0)
    counts = result["subtype"].value_counts()
    assert (counts == train["subtype"].value_counts().max()).all() and len(counts) == 8
    assert set(result["path"]) == set(train["path"])  # Only duplicates added.
    assert oversample(train, seed=0).equals(result)
    assert not oversample(train, seed=1)["path"].equals(result["path"])


def test_undersample_cuts_the_majority_to_second_largest(train):
    counts = train["subtype"].value_counts()
    assert counts.index[0] == "ductal_carcinoma"
    result = undersample(train, seed=0)
    after = result["subtype"].value_counts()
    assert after["ductal_carcinoma"] == counts.iloc[1]
    assert after.drop("ductal_carcinoma").equals(counts.drop("ductal_carcinoma").reindex(after.drop("ductal_carcinoma").index))
    assert result["path"].is_unique and set(result["path"]) <= set(train["path"])
    assert (undersample(train, target="smallest")["subtype"].value_counts() == counts.min()).all()
    assert undersample(train, target=100)["subtype"].value_counts().max() == 100
    duplicated_index = pd.concat([train, train.head(5)])  # Non-unique index labels still work.
    assert len(undersample(duplicated_index, target=10)) <= 80
    assert len(oversample(duplicated_index)) >= len(duplicated_index)
    with pytest.raises(ValueError, match="Undersampling target"):
        undersample(train, target="median")


def test_find_synthetic_images(gan_dir):
    found = find_synthetic_images(gan_dir)
    assert len(found) == 35 and found["synthetic"].all() and (found["case"] == "synthetic").all()
    assert found["subtype"].value_counts().to_dict() == {"adenosis": 30, "lobular_carcinoma": 5}
    assert (found.loc[found["subtype"] == "adenosis", "label"] == "benign").all()
    with pytest.raises(UserInputError, match="not found"):
        find_synthetic_images(gan_dir / "missing")


def _small(train: pd.DataFrame) -> pd.DataFrame:
    """40 real images per subtype, except adenosis (20) and lobular carcinoma (10)."""
    small = train.groupby("subtype").head(40)
    keep = {"adenosis": 20, "lobular_carcinoma": 10}
    return small[small.groupby("subtype").cumcount() < small["subtype"].map(keep).fillna(40)]


def test_synthetic_fill_adds_marked_training_rows(train, gan_dir):
    small = _small(train)
    result = synthetic_fill(small, gan_dir, seed=0)
    added = result[result["synthetic"]]
    assert added["subtype"].value_counts().to_dict() == {"adenosis": 20, "lobular_carcinoma": 5}
    assert (added["case"] == "synthetic").all() and (added["split"] == "train").all()
    assert (added["protocol"] == small["protocol"].iloc[0]).all()
    assert all(Path(p).name.startswith("SYN_") for p in added["path"])
    assert result.attrs["shortfall"] == {"lobular_carcinoma": 25}
    assert result.iloc[: len(small)]["path"].tolist() == small["path"].tolist()
    assert synthetic_fill(small, gan_dir, seed=0)["path"].equals(result["path"])
    assert not synthetic_fill(small, gan_dir, seed=1)["path"].equals(result["path"])


def test_synthetic_fill_respects_target_and_subtypes(train, gan_dir):
    small = _small(train)
    result = synthetic_fill(small, gan_dir, subtypes=["adenosis"], target=30, seed=0)
    assert result["synthetic"].sum() == 10 and result.attrs["shortfall"] == {}
    assert set(result.loc[result["synthetic"], "subtype"]) == {"adenosis"}
    with pytest.raises(ValueError, match="Unknown subtype"):
        synthetic_fill(small, gan_dir, subtypes=["carcinoma"])


def test_synthetic_images_only_ever_join_training(split, gan_dir):
    with pytest.raises(ValueError, match="training split only"):
        synthetic_fill(split, gan_dir)
    with pytest.raises(ValueError, match="training split only"):
        apply_strategy(split[split["split"] != "train"], "oversample")
    train = split[split["split"] == "train"]
    filled, _ = apply_strategy(train, "synthetic", synthetic_dir=gan_dir)
    combined = pd.concat([filled, split[split["split"] != "train"]], ignore_index=True)
    assert_no_case_leakage(combined)  # Synthetic rows are all in train.


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_apply_strategy_and_preview_agree(train, gan_dir, strategy):
    result, weights = apply_strategy(train, strategy, synthetic_dir=gan_dir, seed=0)
    assert (weights is not None) == (strategy == "class_weights")
    preview = balance_preview(train, strategy, synthetic_dir=gan_dir, seed=0)
    assert list(preview.index) == list(SUBTYPES)
    assert preview["before"].to_dict() == train["subtype"].value_counts().reindex(SUBTYPES).to_dict()
    assert preview["after"].to_dict() == result["subtype"].value_counts().reindex(SUBTYPES, fill_value=0).to_dict()
    effective = preview["effective"]
    if strategy == "class_weights":
        assert np.allclose(effective, len(train) / 8)  # Weighted counts are equal.
    elif strategy == "oversample":
        assert (effective == preview["before"].max()).all()
    elif strategy == "undersample":
        assert effective.max() == preview["before"].nlargest(2).iloc[1]
    elif strategy == "synthetic":
        assert preview["synthetic_added"].sum() == 35 and (effective >= preview["before"]).all()
    else:
        assert (effective == preview["before"]).all()


def test_strategy_errors_are_clear(train):
    with pytest.raises(ValueError, match="Unknown balancing strategy"):
        apply_strategy(train, "smote")
    with pytest.raises(ValueError, match="needs a folder of GAN images"):
        apply_strategy(train, "synthetic")
    with pytest.raises(ValueError, match="empty"):
        class_weights(train.iloc[:0])


def _provenance_folder(folder: Path, name: str, protocol: str) -> None:
    """A folder of one SYN_ image of generator `name` and its provenance.json (split `protocol`)."""
    import json

    from core.data.selection import SplitSpec

    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / synthetic_name("adenosis", name, 0, 0))
    record = {"generator": name, "sha256": protocol, "fingerprint": "F", "data_source": "real",
              "split": {**SplitSpec().to_dict(), "protocol": protocol}}
    (folder / "provenance.json").write_text(json.dumps({"generators": {name: record}}))


def test_each_generator_is_judged_by_its_own_folders_provenance(tmp_path):
    """Two generators may share a name in sibling folders: the leaky one's images must not pass on
    the other one's provenance."""
    from core.data.selection import SplitSpec
    from core.data.synthetic import check_synthetic_folder

    _provenance_folder(tmp_path / "a", "gan", "none")  # trained on every image, val/test included
    _provenance_folder(tmp_path / "b", "gan", "patient-wise")
    problems = check_synthetic_folder(tmp_path, "F", SplitSpec())
    assert len(problems) == 1 and "(in a)" in problems[0] and "trained on all images" in problems[0]
    assert check_synthetic_folder(tmp_path / "b", "F", SplitSpec()) == []
    (tmp_path / "c").mkdir()  # a provenance.json in a folder above covers the images below it
    _provenance_folder(tmp_path / "c" / "d", "gan", "patient-wise")
    (tmp_path / "c" / "d" / "provenance.json").rename(tmp_path / "c" / "provenance.json")
    assert check_synthetic_folder(tmp_path / "c", "F", SplitSpec()) == []


def test_a_tampered_provenance_record_is_refused_in_words(tmp_path):
    import json

    from core.data.selection import SplitSpec
    from core.data.synthetic import check_synthetic_folder

    _provenance_folder(tmp_path / "a", "gan", "patient-wise")
    (tmp_path / "a" / "provenance.json").write_text(json.dumps({"generators": {"gan": "trust me"}}))
    with pytest.raises(UserInputError, match="not a provenance file"):
        check_synthetic_folder(tmp_path, "F", SplitSpec())
