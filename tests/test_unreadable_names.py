"""A folder of files named like BreakHis images that are no images (QA #8): the Retrain form passed it (its check read
names only), the job then failed with "No real BreakHis images in DIR (files named like ...)", though the files were
named so: nothing said they could not be read. The form, and both pipelines' refusals, now say how many could not
be read as images and name one or two."""

import shutil

import pytest
from PIL import Image

JUNK = "2 files named as BreakHis images could not be read as images (e.g. SOB_B_A-14-22549AB-100-001.png, " \
       "SOB_M_DC-14-2523-100-001.png)"


@pytest.fixture
def junk(tmp_path):
    """The QA folder: garbage bytes and an empty file under BreakHis names, and a text file."""
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "SOB_B_A-14-22549AB-100-001.png").write_bytes(b"garbage bytes")
    (folder / "SOB_M_DC-14-2523-100-001.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_the_forms_folder_check_says_the_files_named_as_images_cannot_be_read(junk, samples_dir):
    from core.data.breakhis import folder_problem

    problem = folder_problem(str(junk))
    assert problem.startswith(f"{junk} holds no readable BreakHis image: {JUNK}."), problem
    shutil.copy(sorted(samples_dir.rglob("SOB_*.png"))[0], junk)  # one readable image: the run skips the rest
    assert folder_problem(str(junk)) is None


@pytest.mark.parametrize("pipeline", ["tfdata", "fields"])
def test_both_pipelines_say_it_in_their_refusal(junk, tmp_path, capsys, pipeline):
    from core.cli import USER_ERROR, main

    assert main(["train", "--pipeline", pipeline, "--data", str(junk), "--out", str(tmp_path / "run"),
                 "--epochs", "1"]) == USER_ERROR
    assert JUNK in capsys.readouterr().err


def test_at_a_magnification_only_its_unreadable_files_are_counted(junk, tmp_path, capsys):
    from core.cli import USER_ERROR, main

    Image.new("RGB", (64, 48), "white").save(junk / "SOB_B_A-14-22549AB-40-001.png")  # readable, at 40X
    assert main(["pack-fields", "--data", str(junk), "--out", str(tmp_path / "pack"), "--magnification", "100X"]) \
        == USER_ERROR
    assert f"No real BreakHis images at 100X in {junk}" in (said := capsys.readouterr().err) and JUNK in said
    assert main(["pack-fields", "--data", str(junk), "--out", str(tmp_path / "pack"), "--magnification", "400X"]) \
        == USER_ERROR
    assert "could not be read" not in capsys.readouterr().err
