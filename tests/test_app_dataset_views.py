"""Class-balance views of the bundled BreakHis manifest, before and after each balancing strategy, and which
server folders the Dataset page may scan."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from core import paths
from core.app import dataset_views
from core.data.breakhis import index_folder, load_manifest, summarize, synthetic_name
from core.data.labels import SUBTYPES
from core.data.splits import PATIENT, make_split


@pytest.fixture(scope="module")
def manifest(manifest_path):
    return load_manifest(manifest_path)


@pytest.fixture(scope="module")
def train(manifest):
    split = make_split(manifest, protocol=PATIENT, seed=0)
    return split[split["split"] == "train"]


def test_imbalance_ratios_of_breakhis(manifest):
    # 3,451 ductal carcinoma vs 444 adenosis images; 5,429 malignant vs 2,480 benign.
    assert dataset_views.imbalance_ratio(manifest, "subtype") == pytest.approx(3451 / 444)
    assert dataset_views.imbalance_ratio(manifest, "label") == pytest.approx(5429 / 2480)
    assert dataset_views.imbalance_text(dataset_views.group_counts(manifest, "label")) == "2.2 : 1"
    assert dataset_views.absence_note(manifest) is None


def test_a_missing_class_or_subtype_is_named_never_read_as_balance(manifest):
    """Only benign images: the ratio over the groups present read 1.0 : 1 (classes) and 2.5 : 1 (4 of 8
    subtypes), as if balanced; an absent group is now named, and no ratio is given."""
    benign = manifest[manifest["label"] == "benign"]
    assert dataset_views.imbalance_ratio(benign, "label") == float("inf")
    assert dataset_views.imbalance_ratio(benign, "subtype") == float("inf")
    assert dataset_views.imbalance_text(dataset_views.group_counts(benign, "label")) == "n/a: Malignant absent"
    assert dataset_views.imbalance_text(dataset_views.group_counts(benign, "subtype")) == "n/a: 4 of 8 subtypes absent"
    assert dataset_views.imbalance_text(dataset_views.group_counts(benign, "subtype"), reason=False) == "n/a"
    note = dataset_views.absence_note(benign)
    assert "no malignant image" in note and "4 of 8 subtypes" in note and "Ductal carcinoma" in note
    assert "Adenosis" not in note
    one = manifest.head(1)  # a one-image folder
    assert dataset_views.imbalance_text(dataset_views.group_counts(one, "subtype")) == "n/a: 7 of 8 subtypes absent"


def test_the_strategy_table_names_what_is_absent(manifest):
    benign = make_split(manifest[manifest["label"] == "benign"], protocol=PATIENT, seed=0)
    summary = dataset_views.strategy_summary(dataset_views.balanced_versions(benign[benign["split"] == "train"]))
    assert set(summary["class imbalance (max/min)"]) == {"n/a: Malignant absent"}
    assert set(summary["subtype imbalance (max/min)"]) == {"n/a: 4 of 8 subtypes absent"}


def test_figures_count_every_image(manifest):
    assert sum(dataset_views.class_figure(manifest).data[0].y) + sum(
        dataset_views.class_figure(manifest).data[1].y) == len(manifest)
    heat = dataset_views.magnification_figure(manifest).data[0].z
    assert np.asarray(heat).sum() == len(manifest) and np.asarray(heat).shape == (8, 4)
    subtypes = dataset_views.subtype_figure(manifest)
    assert sum(sum(trace.y) for trace in subtypes.data) == len(manifest)
    cases = dataset_views.case_figure(manifest).data[0]
    assert sum(cases.y) == len(manifest) and len(cases.y) == manifest.groupby(["case", "subtype"]).ngroups


def test_a_scanned_folder_shows_in_the_heat_map_every_image_it_counts(samples_dir, tmp_path):
    """A BreakHis-like name at 50X was counted by the Images metric (summarize) but had no column in the
    heat map (40X-400X): the page said 2 images and showed 1. Both come from the same index now."""
    good = sorted(samples_dir.rglob("*-40-*.png"))[0]
    shutil.copy(good, tmp_path / good.name)
    shutil.copy(good, tmp_path / good.name.replace("-40-", "-50-"))
    images = index_folder(tmp_path).images
    heat = np.asarray(dataset_views.magnification_figure(images).data[0].z)
    assert heat.sum() == summarize(images)["images"] == 1


def test_each_strategy_changes_the_balance_as_it_should(train):
    versions = dataset_views.balanced_versions(train)
    assert list(versions) == ["none", "class_weights", "oversample", "undersample"]  # no GAN folder
    summary = dataset_views.strategy_summary(versions).set_index("strategy")
    ratio = summary["subtype imbalance (max/min)"].str.removesuffix(" : 1")
    assert summary.loc["As is", "training images"] == len(train)
    assert float(ratio["As is"]) > 5
    assert ratio["Class weights"] == ratio["Oversampling"] == "1.00"
    assert summary.loc["Class weights", "training images"] == len(train)
    assert summary.loc["Oversampling", "training images"] > len(train)
    assert summary.loc["Undersampling", "training images"] < len(train)
    figure = dataset_views.strategy_figure(versions)
    assert {annotation.text for annotation in figure.layout.annotations} == {
        "As is", "Class weights", "Oversampling", "Undersampling"}


def test_the_fields_pipeline_is_shown_as_it_trains_its_none_balanced_by_sampling_and_loss_weights(train, tmp_path):
    """With --pipeline fields (the CPU default and the bundled recipe) --balance none means 1/sqrt subtype
    sampling and weighted losses; the views showed only the tf.data meaning ('As is', 7 : 1)."""
    from core.training.field_fit import sampling

    versions = dataset_views.balanced_versions(train)
    fields = dataset_views.fields_versions(versions)
    assert list(fields) == ["fields_none"]  # no GAN folder; class weights, over- and undersampling are refused there
    summary = dataset_views.strategy_summary(fields).set_index("strategy")
    assert summary.loc["Fields: none", "training images"] == len(train)
    assert summary.loc["Fields: none", "subtype imbalance (max/min)"] == "1.00 : 1"
    assert "1/sqrt(their subtype's count)" in summary.loc["Fields: none", "how"]
    draw, _, weights = sampling(train["subtype"].to_numpy())  # what field_fit trains with
    adenosis = (train["subtype"] == "adenosis").to_numpy()
    assert fields["fields_none"].loc["adenosis", "effective"] == pytest.approx(
        draw[adenosis].sum() * len(train) * weights[SUBTYPES.index("adenosis")])
    tile = np.full((64, 64, 3), (200, 120, 180), np.uint8)
    Image.fromarray(tile).save(tmp_path / synthetic_name("adenosis", "test-gan", 0, 0))
    with_gan = dataset_views.fields_versions(dataset_views.balanced_versions(train, synthetic_dir=tmp_path))
    assert list(with_gan) == ["fields_none", "fields_synthetic"]
    assert "takes none or synthetic only" in dataset_views.fields_caption()


def test_the_fields_caption_names_the_retrain_forms_pipeline_choice_not_a_command_line_flag():
    """It began "(--pipeline fields: ...)" on the Dataset page and in the Retrain form's Balancing tooltip,
    a flag no one types there; it names the form's Pipeline choice (the flag is in the Dataset heading's tooltip)."""
    from core.app.retrain import PIPELINE_LABELS

    caption = dataset_views.fields_caption()
    assert "--pipeline" not in caption and "--balance" not in caption
    assert caption.startswith("The Fields pipeline (the Retrain form's Pipeline choice \"Fields\"")
    assert PIPELINE_LABELS["fields"].startswith("Fields:")  # the choice the caption names, as the form shows it


def test_gan_fill_appears_only_with_a_synthetic_folder(train, tmp_path):
    tile = np.full((64, 64, 3), (200, 120, 180), np.uint8)
    for n in range(5):
        Image.fromarray(tile).save(tmp_path / synthetic_name("adenosis", "test-gan", 0, n))
    versions = dataset_views.balanced_versions(train, synthetic_dir=tmp_path)
    assert "synthetic" in versions
    summary = dataset_views.strategy_summary(versions).set_index("strategy")
    assert summary.loc["GAN fill", "synthetic images"] == 5
    assert summary.loc["GAN fill", "training images"] == len(train) + 5
    # 5 GAN images cannot fill 7 subtypes up to the largest: what is still missing is said, never hidden
    counts = train["subtype"].value_counts()
    missing = int((counts.max() - counts).sum()) - 5
    assert summary.loc["GAN fill", "images still missing"] == missing > 0
    assert summary.loc["As is", "images still missing"] == 0
    assert f"{missing:,} images still missing (Adenosis {counts.max() - counts['adenosis'] - 5}, " in \
        summary.loc["GAN fill", "how"]
    bars = [t for t in dataset_views.strategy_figure(versions).data if t.name.endswith("missing")]
    assert sum(sum(t.y) for t in bars) == missing and {t.xaxis for t in bars} == {"x5"}  # GAN fill's panel only


def test_thumbnails_exist_for_every_subtype_of_the_bundled_samples(samples_dir):
    chosen = dataset_views.thumbnails(index_folder(samples_dir).images, per_subtype=2)
    assert set(chosen) == set(SUBTYPES)
    assert all(1 <= len(paths) <= 2 for paths in chosen.values())


def test_only_the_open_folders_and_their_sub_folders_are_scanned(tmp_path, monkeypatch):
    opened, other = tmp_path / "open", tmp_path / "other"
    (opened / "sub").mkdir(parents=True)
    other.mkdir()
    (opened / "escape").symlink_to(other)  # a link inside an open folder that leads out of it
    monkeypatch.setenv("BREAKHIS_DATASET_DIRS", f"{tmp_path / 'elsewhere'}{os.pathsep}{opened}")
    assert dataset_views.scan_problem(str(opened)) is None
    assert dataset_views.scan_problem(str(opened / "sub")) is None
    assert dataset_views.scan_problem(str(opened / "nope")) == f"Folder not found: {opened / 'nope'}"
    for refused in ("/", "/etc", str(other), str(opened / "escape"), str(opened / ".." / "other")):
        problem = dataset_views.scan_problem(refused)
        assert "may not scan that folder" in problem and "/" not in problem, refused  # no path, not even its own
        assert "BREAKHIS_DATASET_DIRS" in dataset_views.scan_problem(refused, admin=True)
    assert str(opened) in dataset_views.scan_problem("/etc", admin=True)  # the administrator sees what is open
    assert dataset_views.scan_problem("/no/such", admin=False) == dataset_views.scan_problem("/etc", admin=False)


def test_the_bundled_samples_and_the_shared_data_are_open_by_default_and_an_empty_setting_closes_all(monkeypatch):
    monkeypatch.delenv("BREAKHIS_DATASET_DIRS", raising=False)
    assert paths.dataset_dirs() == [paths.SAMPLES_DIR, paths.SHARED_DATA_DIR]
    assert dataset_views.scan_problem(str(paths.SAMPLES_DIR / "BreaKHis_v1")) is None
    monkeypatch.setenv("BREAKHIS_DATASET_DIRS", "")
    assert paths.dataset_dirs() == []
    assert "switched off" in dataset_views.scan_problem(str(paths.SAMPLES_DIR), admin=True)


def test_a_scanned_folder_is_stated_with_its_size_next_to_the_figures_and_in_their_titles(samples_dir, tmp_path,
                                                                                          monkeypatch):
    """A chart exported alone said neither what nor how many it counts; a file path read "Folder not found";
    a one-case training split read "1 training images from 1 cases"; "As is" said "resampled table"."""
    for image in samples_dir.rglob("*.png"):
        shutil.copy(image, tmp_path / image.name)
    (tmp_path / "notes.txt").write_text("not an image")
    result = index_folder(tmp_path)
    caption = dataset_views.folder_caption(result.images, "flat", len(result.skipped))
    assert caption.startswith("Scanned folder flat: 22 BreakHis images of 16 cases and 17 slides, labelled ")
    assert "1 other file skipped" in caption and "Partial or different from the full BreakHis: images 22" in caption
    source = dataset_views.source_line(result.images, "flat")
    assert source == "folder flat, 22 images" and dataset_views.source_line(result.images) == \
        "BreakHis v1 (bundled manifest), 22 images"
    for figure in (dataset_views.class_figure, dataset_views.subtype_figure, dataset_views.magnification_figure,
                   dataset_views.case_figure):
        assert figure(result.images, source=source).layout.title.text.endswith("<sup>folder flat, 22 images</sup>")
    one = result.images.head(1)
    assert "1 training image from 1 case." in dataset_views.training_caption(one)
    versions = dataset_views.balanced_versions(one)
    assert "<sup>folder flat, 1 training image</sup>" in dataset_views.strategy_figure(
        versions, dataset_views.source_line(one, "flat", what="training image")).layout.title.text
    how = dataset_views.strategy_summary(versions).set_index("strategy")["how"]
    assert how["As is"] == "nothing changed" and how["Class weights"] == "loss weights, data unchanged"
    monkeypatch.setenv("BREAKHIS_DATASET_DIRS", str(tmp_path))
    picked = str(tmp_path / "notes.txt")
    assert dataset_views.scan_problem(picked) == f"{picked} is a file, not a folder: name the folder that holds the images."
