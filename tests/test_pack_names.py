"""A field pack writes one file per row: fields.csv never lists more fields than the pack holds."""

import shutil

import pandas as pd
import pytest
from PIL import Image

from core.cli import main
from core.data.breakhis import index_folder
from core.data.fields import PACK_INDEX, pack_fields
from core.errors import DatasetError


@pytest.fixture
def one_field_three_formats(samples_dir, tmp_path):
    """QA's folder: one field as .png, .jpg and .PNG in two folders, and one other field."""
    good = sorted(samples_dir.rglob("*-40-*.png"))[0]
    other = sorted(samples_dir.rglob("*-100-*.png"))[0]
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    shutil.copy(good, data / "a" / good.name)
    Image.open(good).convert("RGB").save(data / "a" / f"{good.stem}.jpg")
    shutil.copy(good, data / "b" / f"{good.stem}.PNG")
    shutil.copy(other, data / "b" / other.name)
    return data


def test_pack_fields_says_how_many_fields_it_wrote(one_field_three_formats, tmp_path, capsys):
    """`pack-fields` said "wrote 4 fields" but wrote 2 JPEGs (one field's three copies share a pack name)
    and fields.csv listed that name three times."""
    assert main(["pack-fields", "--data", str(one_field_three_formats), "--out", str(tmp_path / "pack")]) == 0
    assert "wrote 2 fields of 2 patients" in capsys.readouterr().out
    listed = pd.read_csv(tmp_path / "pack" / PACK_INDEX)["file"]
    assert listed.is_unique and sorted(listed) == sorted(p.name for p in (tmp_path / "pack").glob("*.jpg"))


def test_a_table_with_one_field_twice_is_refused_before_anything_is_written(one_field_three_formats, tmp_path):
    """A table that holds one field twice (two indexes put together, or names differing in case only)
    was packed as fewer files than rows: the second copy overwrote the first under the same name."""
    table = index_folder(one_field_three_formats).images
    twice = pd.concat([table, table.head(1).assign(path=table["path"].iloc[0].replace(".jpg", ".png"))])
    with pytest.raises(DatasetError, match="would be one file of the pack"):
        pack_fields(twice, tmp_path / "pack")
    assert not (tmp_path / "pack").exists()


def test_a_folder_without_breakhis_images_is_refused_in_words_by_pack_fields_and_train(one_field_three_formats,
                                                                                      tmp_path, capsys):
    """`pack-fields` and `train --pipeline fields` said "No real images of magnification all in DIR": the
    option's value read as a word. Both now say what was looked for (and at which magnification, when one
    was chosen) and how to see what was skipped, with the usage-error exit status."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not an image")
    Image.new("RGB", (64, 48), "white").save(other / "photo.png")
    commands = (["pack-fields", "--data", str(other), "--out", str(tmp_path / "pack")],
                ["train", "--pipeline", "fields", "--data", str(other), "--out", str(tmp_path / "run"), "--epochs", "1"])
    for command in commands:
        assert main(command) == 2
        said = capsys.readouterr().err
        assert f"No real BreakHis images in {other}" in said and "python -m core index" in said, said
        assert "magnification all" not in said
    assert main(["pack-fields", "--data", str(one_field_three_formats), "--out", str(tmp_path / "pack"),
                 "--magnification", "400X"]) == 2
    assert f"No real BreakHis images at 400X in {one_field_three_formats}" in capsys.readouterr().err
    assert not (tmp_path / "pack").exists()
