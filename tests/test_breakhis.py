"""BreakHis names, folder indexing in any layout, the full manifest, and the dataset CLI."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from core.cli import main as cli
from core.data import download as dataset
from core.data.breakhis import (
    COLUMNS,
    index_folder,
    load_manifest,
    parse_name,
    parse_synthetic_name,
    summarize,
    synthetic_name,
)
from core.data.labels import MAGNIFICATIONS, SUBTYPES
from core.errors import DatasetError


@pytest.mark.parametrize("filename, expected", [
    ("SOB_B_A-14-22549AB-40-001.png", ("benign", "adenosis", "40X", "14-22549AB", "14-22549", "SOB_B_A_14-22549AB")),
    ("SOB_M_DC-14-2523-400-010.png", ("malignant", "ductal_carcinoma", "400X", "14-2523", "14-2523", "SOB_M_DC_14-2523")),
    ("SOB_B_PT-14-21998AB-100-005.png", ("benign", "phyllodes_tumor", "100X", "14-21998AB", "14-21998", "SOB_B_PT_14-21998AB")),
    ("SOB_B_TA-14-3411F-200-012.png", ("benign", "tubular_adenoma", "200X", "14-3411F", "14-3411", "SOB_B_TA_14-3411F")),
    ("data/x/SOB_M_LC-14-13412-40-007.tif", ("malignant", "lobular_carcinoma", "40X", "14-13412", "14-13412", "SOB_M_LC_14-13412")),
    ("sob_m_mc-14-10147-40-001.PNG", ("malignant", "mucinous_carcinoma", "40X", "14-10147", "14-10147", "SOB_M_MC_14-10147")),
])
def test_parse_name(filename, expected):
    name = parse_name(filename)
    assert (name.label, name.subtype, name.magnification, name.slide, name.case, name.slide_folder) == expected


@pytest.mark.parametrize("filename", [
    "SOB_B_DC-14-2523-400-010.png",  # Ductal carcinoma is not benign.
    "SOB_M_X-14-2523-400-010.png",   # Unknown subtype code.
    "SOB_B_A-14-22549AB-40-001.txt",
    "SOB_B_A-14-22549AB-001.png",    # No magnification.
    "SOB_B_A-14-22549AB-50-002.png",  # Not a BreakHis magnification (40, 100, 200, 400 only).
    "SOB_B_A-14-22549AB-0-002.png",
    "SOB_B_A-14-22549AB-4000-002.png",
    "holiday.png",
    synthetic_name("adenosis", "dcgan", 0, 1),
])
def test_non_breakhis_names(filename):
    assert parse_name(filename) is None


def test_synthetic_names_round_trip():
    name = synthetic_name("papillary_carcinoma", "style gan/v2", 7, 12)
    assert name == "SYN_PC-style_gan_v2-7-00012.png"
    assert parse_synthetic_name(name) == "papillary_carcinoma"
    assert parse_synthetic_name("SOB_M_PC-14-9146-40-001.png") is None


@pytest.fixture(scope="module")
def samples(samples_dir):
    return index_folder(samples_dir)


def test_index_real_samples(samples):
    images = samples.images
    assert samples.skipped == [] and samples.misfiled == []
    assert list(images.columns) == COLUMNS and len(images) == 22
    assert set(images["subtype"]) == set(SUBTYPES)
    assert set(images["magnification"]) == set(MAGNIFICATIONS)
    assert not images["synthetic"].any()
    assert all(Path(p).is_file() for p in images["path"])


def _copy_layouts(samples_dir: Path, root: Path) -> dict[str, Path]:
    """The same 22 files as Kaggle's doubled archive, one flat folder, and one folder per class."""
    files = sorted(samples_dir.rglob("*.png"))
    layouts = {name: root / name for name in ("kaggle", "flat", "by_class")}
    shutil.copytree(samples_dir / "BreaKHis_v1", layouts["kaggle"] / "BreaKHis_v1" / "BreaKHis_v1")
    for path in files:
        (layouts["flat"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, layouts["flat"] / path.name)
        folder = layouts["by_class"] / parse_name(path.name).subtype
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    return layouts


def _labels(images: pd.DataFrame) -> pd.DataFrame:
    table = images.assign(path=images["path"].map(lambda p: Path(p).name))
    return table.sort_values("path").reset_index(drop=True)


def test_layouts_index_identically(samples, samples_dir, tmp_path):
    reference = _labels(samples.images)
    for name, folder in _copy_layouts(samples_dir, tmp_path).items():
        result = index_folder(folder)
        assert result.skipped == [] and result.misfiled == [], name
        pd.testing.assert_frame_equal(_labels(result.images), reference, obj=name)


def test_bad_files_are_skipped_with_reasons(samples_dir, tmp_path):
    good = sorted(samples_dir.rglob("*.png"))
    folder = tmp_path / "messy"
    folder.mkdir()
    for path in good[:3]:
        shutil.copy(path, folder / path.name)
    data = good[3].read_bytes()
    (folder / "README.txt").write_text("BreakHis notes")
    (folder / "SOB_B_A-14-22549AB-40-901.png").write_bytes(b"")
    (folder / "SOB_B_A-14-22549AB-40-902.png").write_bytes(data[: len(data) // 2])
    (folder / "SOB_B_A-14-22549AB-40-903.png").write_text("just text, named like an image")
    (folder / "holiday.png").write_bytes(data)
    (folder / "copy").mkdir()
    shutil.copy(good[0], folder / "copy" / good[0].name)
    (folder / ".DS_Store").write_bytes(b"\x00")

    result = index_folder(folder)  # Must not raise.
    assert len(result.images) == 3
    reasons = {Path(path).name: reason for path, reason in result.skipped}
    assert reasons["README.txt"] == "not an image file name"
    assert reasons["SOB_B_A-14-22549AB-40-901.png"] == "empty file"
    assert reasons["SOB_B_A-14-22549AB-40-902.png"].startswith("unreadable image")
    assert reasons["SOB_B_A-14-22549AB-40-903.png"].startswith("unreadable image")
    assert reasons["holiday.png"] == "name is not a BreakHis image name"
    assert reasons[good[0].name].startswith("duplicate of")
    assert ".DS_Store" not in reasons and len(reasons) == 6
    assert "6 files skipped" in result.summary()


def test_one_field_in_several_formats_is_indexed_once(samples_dir, tmp_path):
    """The same field as .png, .jpg and .PNG (same BreakHis name) was indexed three times: the counts
    said 3 images of one field and a pack of them wrote one file three times. One image per field now;
    the other copies are skipped as duplicates, like a copy of the same file name."""
    good = sorted(samples_dir.rglob("*-40-*.png"))[0]
    other = sorted(samples_dir.rglob("*-100-*.png"))[0]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(good, tmp_path / "a" / good.name)
    Image.open(good).convert("RGB").save(tmp_path / "a" / f"{good.stem}.jpg")
    shutil.copy(good, tmp_path / "b" / f"{good.stem}.PNG")
    shutil.copy(other, tmp_path / "b" / f"{other.stem.lower()}.tif")  # another field: kept
    result = index_folder(tmp_path)
    # the lossless original is kept, not the JPEG copy that sorts before it
    assert sorted(Path(p).name for p in result.images["path"]) == [good.name, f"{other.stem.lower()}.tif"]
    assert summarize(result.images)["images"] == 2
    first = str(tmp_path / "a" / good.name)
    assert sorted((Path(p).name, reason) for p, reason in result.skipped) == sorted([
        (f"{good.stem}.jpg", f"duplicate of {first}"), (f"{good.stem}.PNG", f"duplicate of {first}")])


def test_a_name_of_another_magnification_is_skipped_with_its_reason(samples_dir, tmp_path):
    """A 50X name was indexed as an image that the magnification charts (40X-400X) never showed, so the
    Dataset page's Images metric and its heat map disagreed; it is now skipped, saying why."""
    good = sorted(samples_dir.rglob("*-40-*.png"))[0]
    shutil.copy(good, tmp_path / good.name)
    shutil.copy(good, tmp_path / good.name.replace("-40-", "-50-"))
    result = index_folder(tmp_path)
    assert result.images["magnification"].tolist() == ["40X"]
    assert [(Path(p).name, reason) for p, reason in result.skipped] == [
        (good.name.replace("-40-", "-50-"),
         "magnification 50X is not a BreakHis magnification (40X, 100X, 200X, 400X)")]


def test_an_image_filed_under_two_patients_is_indexed_once_and_reported(samples_dir, tmp_path):
    """The same bytes stored as another patient's image were indexed twice (dedup was by name only), so a
    patient-wise split could put the picture in train and test, and the scan report said nothing. Only
    the name that sorts first is indexed now (whatever the walk order, so every layout agrees), and the
    scan report names both files and both patients."""
    good = sorted(samples_dir.rglob("*-40-*.png"))[0]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    copy = tmp_path / "a" / "SOB_M_DC-15-99001-40-001.png"  # another patient, even another class; walked first
    shutil.copy(good, copy)
    shutil.copy(good, tmp_path / "b" / good.name)
    same_size = bytearray(good.read_bytes())
    same_size[-40] ^= 0xFF  # same size, other bytes: another image, kept
    (tmp_path / "a" / "SOB_M_DC-15-99001-40-002.png").write_bytes(bytes(same_size))
    result = index_folder(tmp_path, check_readable=False)
    kept = tmp_path / "b" / good.name
    assert sorted(Path(p).name for p in result.images["path"]) == [good.name, "SOB_M_DC-15-99001-40-002.png"]
    assert result.copies == result.cross_patient_copies == [(str(copy), str(kept))]
    assert result.skipped == [(str(copy), "same bytes as an indexed image of another name")]
    summary = result.summary()
    assert "1 file is byte-identical to an image of another patient" in summary
    assert f"{copy} (case 15-99001) = {kept} (case {parse_name(good.name).case})" in summary


def test_only_files_of_a_shared_size_are_read_for_the_content_check(samples_dir, tmp_path, monkeypatch):
    """Hashing every image would read a 7,909-image folder whole at each scan: only size collisions are."""
    from core.data import breakhis

    files = sorted(samples_dir.rglob("*.png"))[:4]
    for path in files:
        shutil.copy(path, tmp_path / path.name)
    shutil.copy(files[0], tmp_path / "SOB_B_A-15-99001-40-001.png")
    read = []
    monkeypatch.setattr(breakhis, "_sha256", lambda path, *_: read.append(path) or "same")
    groups = breakhis.identical_files(sorted(map(str, tmp_path.iterdir())))
    assert sorted(map(Path, read)) == sorted([tmp_path / files[0].name, tmp_path / "SOB_B_A-15-99001-40-001.png"])
    assert len(groups) == 1 and len(groups[0]) == 2


def test_a_file_in_a_folder_of_another_label_is_listed_as_a_likely_mistake(samples_dir, tmp_path):
    """SOB_M_DC-... inside benign/ was counted as malignant without a word. Labels still come from the
    name, but the scan report lists every file whose class, subtype, magnification or slide folder
    names another label than its file name."""
    files = {parse_name(p.name).subtype: p for p in sorted(samples_dir.rglob("*.png")) if "-100-" not in p.name}
    ductal, adenosis, fibroadenoma = files["ductal_carcinoma"], files["adenosis"], files["fibroadenoma"]
    (tmp_path / "benign" / "fibroadenoma").mkdir(parents=True)
    (tmp_path / "Benign" / "Fibroadenoma" / "100X").mkdir(parents=True)
    shutil.copy(ductal, tmp_path / "benign" / ductal.name)  # a malignant name in benign/
    shutil.copy(adenosis, tmp_path / "benign" / "fibroadenoma" / adenosis.name)  # another benign subtype
    shutil.copy(fibroadenoma, tmp_path / "Benign" / "Fibroadenoma" / "100X" / fibroadenoma.name)
    result = index_folder(tmp_path)
    assert len(result.images) == 3 and result.skipped == []
    assert result.images.set_index(result.images["path"].map(lambda p: Path(p).name)).at[
        ductal.name, "label"] == "malignant"  # still labelled by its name
    magnification = parse_name(fibroadenoma.name).magnification  # not 100X; Benign/Fibroadenoma are right
    assert sorted(result.misfiled) == sorted([
        (str(tmp_path / "benign" / ductal.name), "folder benign but the name says malignant"),
        (str(tmp_path / "benign" / "fibroadenoma" / adenosis.name), "folder fibroadenoma but the name says adenosis"),
        (str(tmp_path / "Benign" / "Fibroadenoma" / "100X" / fibroadenoma.name),
         f"folder 100X but the name says {magnification}")])
    summary = result.summary()
    assert "3 files are in a folder that names another label than the file name" in summary
    assert f"{tmp_path / 'benign' / ductal.name}: folder benign but the name says malignant" in summary


def test_missing_folder_raises(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        index_folder(tmp_path / "nope")


@pytest.fixture(scope="module")
def manifest(manifest_path):
    return load_manifest(manifest_path)


def test_manifest_counts(manifest):
    summary = summarize(manifest)
    assert summary["images"] == 7909
    assert summary["by_class"] == {"benign": 2480, "malignant": 5429}
    assert summary["by_subtype"] == {
        "adenosis": 444, "fibroadenoma": 1014, "phyllodes_tumor": 453, "tubular_adenoma": 569,
        "ductal_carcinoma": 3451, "lobular_carcinoma": 626, "mucinous_carcinoma": 792, "papillary_carcinoma": 560,
    }
    assert summary["by_magnification"] == {"40X": 1995, "100X": 2081, "200X": 2013, "400X": 1820}
    assert summary["slides"] == 82 and summary["cases"] == 70 and summary["synthetic"] == 0
    assert manifest["path"].is_unique


def test_every_sample_agrees_with_its_manifest_row(samples, samples_dir, manifest):
    by_name = manifest.assign(name=manifest["path"].map(lambda p: Path(p).name)).set_index("name")
    breast = samples_dir / "BreaKHis_v1" / "histology_slides" / "breast"
    for row in samples.images.itertuples(index=False):
        name = Path(row.path).name
        expected = by_name.loc[name]
        for column in ("label", "subtype", "magnification", "slide", "slide_folder", "case"):
            assert getattr(row, column) == expected[column], (name, column)
        assert Path(row.path).relative_to(breast).as_posix() == expected["path"]


def test_manifest_root_and_disagreeing_rows(manifest_path, tmp_path):
    rooted = load_manifest(manifest_path, root="/data/breakhis")
    assert rooted["path"].iloc[0].startswith("/data/breakhis/benign/")
    bad = pd.read_csv(manifest_path).head(3)
    bad.loc[1, "label"] = "malignant"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DatasetError, match=r"line 3 disagrees with its file name .*SOB_B_A-14-22549AB-100-002\.png: "
                                           r"label 'malignant' where the name says 'benign'\."):
        load_manifest(tmp_path / "bad.csv")


@pytest.mark.parametrize("text, reason", [
    ("path,label\nx.png,benign\n", r"lacks the column\(s\) subtype, magnification; it needs path, label"),
    ("path,label,subtype,magnification\nx.png,benign,adenosis,40X\n",
     r"line 2: x\.png: name is not a BreakHis image name\."),
    ("path,label,subtype,magnification\nSOB_B_A-14-22549AB-40-001.png,benign,adenosis,100X\n",
     r"line 2 disagrees .*: magnification '100X' where the name says '40X'\."),
    ("", "cannot be read as CSV"),
])
def test_a_manifest_that_cannot_be_used_says_where_and_why(tmp_path, text, reason):
    """A bare ValueError crashed the Dataset page; a manifest without the columns was said to disagree
    with the file name 'x.png'. Now a DatasetError names the line and the right reason."""
    (tmp_path / "manifest.csv").write_text(text)
    with pytest.raises(DatasetError, match=reason):
        load_manifest(tmp_path / "manifest.csv")
    with pytest.raises(DatasetError, match="Manifest not found"):
        load_manifest(tmp_path / "missing.csv")


def test_breakhis_cli_writes_csv(samples_dir, tmp_path, capsys):
    assert cli(["index", str(samples_dir), "--csv", str(tmp_path / "index.csv")]) == 0
    assert "22 images indexed" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "index.csv")) == 22


# --- python -m core index / download -----------------------------------------------------------

def test_dataset_index_command(samples_dir, tmp_path, capsys):
    assert cli(["index", str(samples_dir)]) == 0
    out = capsys.readouterr().out
    assert "22 images indexed" in out and "Partial or different" in out and "images 22 (full: 7909)" in out
    (tmp_path / "empty").mkdir()
    assert cli(["index", str(tmp_path / "empty")]) == 2  # a user error, like every command's
    assert "No BreakHis images" in capsys.readouterr().err
    assert cli(["index", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_full_manifest_is_reported_complete(manifest):
    assert dataset.completeness(summarize(manifest)).startswith("Complete")


def test_download_without_network_fails_fast_with_manual_steps(tmp_path, capsys, monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(dataset.socket, "create_connection", unreachable)
    assert cli(["download", "--dest", str(tmp_path / "bh")]) == 1
    err = capsys.readouterr().err
    assert "Cannot reach www.kaggle.com" in err
    assert "Manual steps" in err and "ambarish/breakhis" in err and f"python -m core index {tmp_path / 'bh'}" in err


class _Connection:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_kagglehub_error_gives_manual_steps(tmp_path, capsys, monkeypatch):
    import kagglehub

    def no_credentials(handle, *args, **kwargs):
        raise PermissionError("401 Unauthorized: missing Kaggle credentials")

    monkeypatch.setattr(dataset.socket, "create_connection", lambda *a, **k: _Connection())
    monkeypatch.setattr(kagglehub, "dataset_download", no_credentials)
    monkeypatch.delenv("KAGGLEHUB_CACHE", raising=False)
    assert cli(["download", "--dest", str(tmp_path / "bh")]) == 1
    err = capsys.readouterr().err
    assert "PermissionError" in err and "401" in err and "Manual steps" in err
    assert "KAGGLEHUB_CACHE" not in dataset.os.environ  # Restored after the attempt.


def test_download_success_indexes_into_dest(samples_dir, tmp_path, capsys, monkeypatch):
    import kagglehub

    def fake_download(handle, *args, **kwargs):
        assert handle == "ambarish/breakhis"
        target = Path(dataset.os.environ["KAGGLEHUB_CACHE"]) / "datasets" / "ambarish" / "breakhis" / "versions" / "4"
        shutil.copytree(samples_dir / "BreaKHis_v1", target / "BreaKHis_v1" / "BreaKHis_v1")
        return str(target)

    monkeypatch.setattr(dataset.socket, "create_connection", lambda *a, **k: _Connection())
    monkeypatch.setattr(kagglehub, "dataset_download", fake_download)
    assert cli(["download", "--dest", str(tmp_path / "bh")]) == 0
    out = capsys.readouterr().out
    assert "22 images indexed" in out and str(tmp_path / "bh" / "kagglehub") in out
