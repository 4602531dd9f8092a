"""`python -m core slide` / `slides`: output files, exit codes, and a 2-worker Dask cluster on
127.0.0.1 giving the same files as the serial run. Tile counts are the whole-field model's
(models/small-cnn: one 200X field per tile)."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.cli import main as cli
from core.slide.batch import SlideJob, analyse_slide
from core.testing.slides import write_mosaic
from tests.conftest import REPO, WHOLE_FIELD_MODEL


@pytest.fixture(scope="module")
def slide_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    write_mosaic(folder / "mosaic.tif")
    # A plain image of twice a 200X field's width: two tiles, its scale from the name.
    field = next((REPO.parent / "shared" / "breakhis" / "real").rglob("SOB_M_MC-14-19979-200-013.png"))
    rgb = np.asarray(Image.open(field).convert("RGB"))
    Image.fromarray(np.concatenate([rgb, rgb[:, ::-1]], axis=1)).save(folder / "SOB_M_MC-14-19979-200-099.png")
    (folder / "notes.tif").write_text("not a slide\n")
    return folder


def test_one_slide_writes_every_output(slide_folder, tmp_path, capsys):
    assert cli(["slide", str(slide_folder / "mosaic.tif"), "--out", str(tmp_path), "--top-k", "1",
                "--model", str(WHOLE_FIELD_MODEL)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["label"] in ("benign", "malignant") and row["tissue_tiles"] == 8
    card = json.loads((WHOLE_FIELD_MODEL / "card.json").read_text())  # labelled where it predicts
    assert (row["model"], row["model_limited"]) == (card["name"], card["evidence"]["limited"]) and row["model_limited"]
    assert {p.name for p in tmp_path.iterdir()} == {"heatmap.png", "tiles.csv", "suspicious_regions.geojson",
                                                    "summary.json"}
    assert Image.open(tmp_path / "heatmap.png").size[0] == 1024


def test_a_bad_slide_is_a_user_error(slide_folder, tmp_path, capsys):
    assert cli(["slide", str(slide_folder / "notes.tif"), "--out", str(tmp_path)]) == 2
    assert "text file" in capsys.readouterr().err and not (tmp_path / "summary.json").exists()
    assert analyse_slide(SlideJob(str(slide_folder / "notes.tif"), str(tmp_path), str(WHOLE_FIELD_MODEL)))[
        "error_kind"] == "input"


def test_dask_cluster_gives_the_serial_results(slide_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the workers import this checkout's core
    # Dask's worker processes are spawned, and spawn re-imports the parent's __main__ module: after an
    # AppTest in the same session that is app.py, which cannot run in a worker. The CLI's __main__ is
    # core.__main__; here a bare module stands in for pytest's.
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    serial, dask = tmp_path / "serial", tmp_path / "dask"
    assert cli(["slides", str(slide_folder), "--out", str(serial), "--serial", "--top-k", "1",
                "--model", str(WHOLE_FIELD_MODEL)]) == 1  # notes.tif
    capsys.readouterr()
    assert cli(["slides", str(slide_folder), "--out", str(dask), "--workers", "2", "--top-k", "1",
                "--model", str(WHOLE_FIELD_MODEL)]) == 1
    assert "distributed" not in capsys.readouterr().err  # Dask's own INFO lines (~30 a batch) stay quiet
    table = pd.read_csv(dask / "slides.csv")
    assert list(table["slide"]) == ["SOB_M_MC-14-19979-200-099.png", "mosaic.tif", "notes.tif"]
    assert table["error"].fillna("").str.contains("text file").tolist() == [False, False, True]
    assert table.loc[0, "tissue_tiles"] == 2
    for name in ("SOB_M_MC-14-19979-200-099", "mosaic"):
        for file in ("tiles.csv", "suspicious_regions.geojson", "heatmap.png"):
            assert (dask / name / file).read_bytes() == (serial / name / file).read_bytes(), (name, file)
    shutil.rmtree(tmp_path)


def test_a_slide_failing_unexpectedly_is_its_rows_error_and_the_batch_goes_on(slide_folder, tmp_path, monkeypatch):
    """Any failure of one slide (not only a SlideError) is recorded in its row; the later slides are
    analysed and slides.csv is written."""
    import core.slide.batch as batch

    opened = batch.open_slide

    def failing(path, **options):
        if str(path).endswith(".png"):
            raise ValueError("could not broadcast input array from shape (460,700,2) into shape (460,700,3)")
        return opened(path, **options)

    monkeypatch.setattr(batch, "open_slide", failing)
    assert cli(["slides", str(slide_folder), "--out", str(tmp_path), "--serial", "--top-k", "1",
                "--model", str(WHOLE_FIELD_MODEL)]) == 1
    table = pd.read_csv(tmp_path / "slides.csv").set_index("slide")
    assert "ValueError: could not broadcast" in table.loc["SOB_M_MC-14-19979-200-099.png", "error"]
    assert table.loc["SOB_M_MC-14-19979-200-099.png", "error_kind"] == "failure"
    assert pd.isna(table.loc["mosaic.tif", "error"]) and table.loc["mosaic.tif", "tissue_tiles"] == 8
    assert (tmp_path / "mosaic" / "summary.json").is_file()
    # One slide: the tool's failure exits 1 as core.cli says (it exited 2, a user error, like a bad file).
    assert cli(["slide", str(slide_folder / "SOB_M_MC-14-19979-200-099.png"), "--out", str(tmp_path / "one"),
                "--model", str(WHOLE_FIELD_MODEL)]) == 1


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_a_cluster_without_workers_is_refused_not_waited_for(workers, tmp_path, capsys):
    """A LocalCluster of 0 workers takes the tasks and never runs them: the batch hung for ever."""
    assert cli(["slides", str(tmp_path), "--out", str(tmp_path / "out"), "--workers", workers]) == 2
    assert "--workers: must be at least 1" in capsys.readouterr().err


def test_every_slide_gets_its_own_output_folder(tmp_path):
    """x.png and x.jpg, a/y.png and a__y.png mapped to one folder each pair, the second slide's files
    replacing the first's; a name without a twin keeps its plain folder."""
    from core.slide.batch import slide_jobs

    (tmp_path / "a").mkdir()
    for name in ("x.png", "x.jpg", "a/y.png", "a__y.png", "mosaic.tif"):
        (tmp_path / name).write_bytes(b"")
    jobs = slide_jobs(tmp_path, tmp_path / "out", "model")
    outs = {job.path: job.out_dir for job in jobs}
    assert len(set(outs.values())) == 5
    assert outs[str(tmp_path / "mosaic.tif")] == str(tmp_path / "out" / "mosaic")


def test_an_output_folder_inside_the_slide_folder_is_not_read_as_slides(tmp_path):
    """`slides DIR --out DIR/out` (or --out DIR) run twice analysed the first run's heatmap.png files
    as slides; slides in subfolders stay slides."""
    from core.slide.batch import slide_jobs

    for name in ("mosaic.tif", "a/b.png", "out/mosaic/heatmap.png", "mosaic/heatmap.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    slides = {str(tmp_path / "a/b.png"), str(tmp_path / "mosaic.tif")}
    assert {job.path for job in slide_jobs(tmp_path, tmp_path / "out", "model")} == slides | {
        str(tmp_path / "mosaic/heatmap.png")}  # not in an output folder of this --out
    (tmp_path / "out/mosaic/heatmap.png").unlink()
    assert {job.path for job in slide_jobs(tmp_path, tmp_path, "model")} == slides


@pytest.mark.parametrize("option", ["--repeats", "--benign-mosaics"])
def test_slide_threshold_needs_mosaics_of_both_kinds(option, capsys):
    """--repeats 0 made no focus mosaics, yet a rule with no sensitivity at all was chosen and written
    into the card; --benign-mosaics 0 the same without benign-only slides."""
    assert cli(["slide-threshold", str(WHOLE_FIELD_MODEL), "--data", "nowhere", option, "0", "--dry-run"]) == 2
    assert f"{option}: must be at least 1" in capsys.readouterr().err


def _unusable_model(kind: str, tmp_path):
    """A model folder a pathologist might name by mistake, and a word of the message it must give."""
    if kind == "missing":
        return tmp_path / "nowhere", "not found"
    if kind == "gan":
        return REPO / "models" / "gan-default", "cannot classify images"
    folder = tmp_path / kind
    if kind == "empty":
        folder.mkdir()
        return folder, "not a model folder"
    shutil.copytree(WHOLE_FIELD_MODEL, folder)
    if kind == "card":
        (folder / "card.json").write_text('{"kind": "classifier", ')
        return folder, "not valid JSON"
    if kind == "weights":
        data = (folder / "model.keras").read_bytes()
        (folder / "model.keras").write_bytes(data[: len(data) // 2])
        return folder, "corrupt"
    card = json.loads((folder / "card.json").read_text())  # kind == "scale": a card that states an impossible scale
    (folder / "card.json").write_text(json.dumps({**card, "scale": {"mpp": -1, "tile_px": [700, 460]}}))
    return folder, "scale is invalid"


@pytest.mark.parametrize("kind", ["missing", "empty", "card", "weights", "gan", "scale"])
@pytest.mark.parametrize("run", [["--serial"], ["--workers", "2"]])
def test_an_unusable_model_is_refused_once_before_any_slide(kind, run, slide_folder, tmp_path, monkeypatch, capsys):
    """A bad --model logged a traceback per slide, wrote OUT/slides.csv of model errors and exited 1;
    it is one message up front (exit 2), no slide read, no cluster started, nothing written."""
    import core.slide.batch as batch

    model, words = _unusable_model(kind, tmp_path)
    for name in ("open_slide", "run_dask"):
        monkeypatch.setattr(batch, name, lambda *a, **k: pytest.fail("a slide was processed with an unusable model"))
    out = tmp_path / "out"
    assert cli(["slides", str(slide_folder), "--out", str(out), "--model", str(model), *run]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("error:") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["missing", "weights", "scale"])
def test_one_slide_with_an_unusable_model_is_a_message_not_a_traceback(kind, slide_folder, tmp_path, capsys):
    model, words = _unusable_model(kind, tmp_path)
    out = tmp_path / "out"
    assert cli(["slide", str(slide_folder / "mosaic.tif"), "--out", str(out), "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("command", ["slides", "slide"])
@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_output_folder_that_cannot_be_made_is_refused_before_any_slide(command, where, slide_folder, tmp_path,
                                                                           monkeypatch, capsys):
    """--out naming a file (or a folder inside one) analysed the first slide, then crashed writing it
    with a traceback (exit 1), the later slides never run; it is refused up front with its reason."""
    import core.slide.batch as batch

    monkeypatch.setattr(batch, "open_slide", lambda *a, **k: pytest.fail("a slide was read for an unusable --out"))
    (tmp_path / "taken").write_text("a pathologist's notes\n")
    out = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "out"
    target, run = (slide_folder, ["--serial"]) if command == "slides" else (slide_folder / "mosaic.tif", [])
    assert cli([command, str(target), "--out", str(out), "--model", str(WHOLE_FIELD_MODEL), *run]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'taken'} is a file, not a folder" in err and "Traceback" not in err
    assert (tmp_path / "taken").read_text() == "a pathologist's notes\n"


@contextlib.contextmanager
def read_only(folder):
    """`folder` read-only for this process: mode 555, and for root (who ignores modes) the immutable flag."""
    folder.chmod(0o555)
    immutable = os.geteuid() == 0 and shutil.which("chattr") is not None and \
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        try:
            (folder / ".probe").touch()
        except OSError:
            yield folder
        else:
            (folder / ".probe").unlink()
            pytest.skip("no way to make a folder read-only here")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_read_only_output_folder_is_refused_before_any_slide(slide_folder, tmp_path, capsys):
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        assert cli(["slides", str(slide_folder), "--out", str(tmp_path / "ro" / "out"), "--serial",
                    "--model", str(WHOLE_FIELD_MODEL)]) == 2
    assert "cannot be written to" in capsys.readouterr().err


def test_slide_threshold_into_a_read_only_model_folder_is_refused_before_the_mosaics(tmp_path, capsys):
    """A model folder it may not write into was found out only when the chosen rule was written into
    the card, after every mosaic had run: a PermissionError traceback (exit 1)."""
    model = shutil.copytree(WHOLE_FIELD_MODEL, tmp_path / "model")
    with read_only(model):
        assert cli(["slide-threshold", str(model), "--data", str(tmp_path / "not-read")]) == 2
    err = capsys.readouterr().err
    assert f"{model} cannot be written to" in err and "--dry-run" in err and "Traceback" not in err


def test_a_slide_whose_results_cannot_be_written_is_its_rows_error(slide_folder, tmp_path, capsys):
    """OUT/mosaic already a file (or a full disk) crashed the whole batch with a traceback: the other
    slides were never analysed and slides.csv never written."""
    (tmp_path / "mosaic").write_text("not a folder\n")
    assert cli(["slides", str(slide_folder), "--out", str(tmp_path), "--serial", "--top-k", "1",
                "--model", str(WHOLE_FIELD_MODEL)]) == 1
    assert "Traceback" not in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "slides.csv").set_index("slide")
    assert f"could not be written to {tmp_path / 'mosaic'}" in table.loc["mosaic.tif", "error"]
    assert table.loc["mosaic.tif", "error_kind"] == "failure"
    assert pd.isna(table.loc["SOB_M_MC-14-19979-200-099.png", "error"])
    assert (tmp_path / "SOB_M_MC-14-19979-200-099" / "summary.json").is_file()


def test_an_interrupted_batch_writes_the_rows_it_finished_not_an_earlier_table(slide_folder, tmp_path, monkeypatch):
    """Ctrl-C in a re-run into the same --out (exit 130) left the earlier run's slides.csv, which then
    described slide folders the new run had already rewritten; then it left no table at all, though the
    slides it finished had their folders. Now: this run's finished rows, the rest named as not analysed."""
    import core.slide.batch as batch

    (tmp_path / "slides.csv").write_text("slide,out,label,model,error\nmosaic.tif,mosaic,benign,earlier,\n")
    analyse = batch.analyse_slide
    done = []

    def interrupted_after_one(job, *args):
        if done:
            raise KeyboardInterrupt
        done.append(analyse(job, *args))
        return done[-1]

    monkeypatch.setattr(batch, "analyse_slide", interrupted_after_one)
    assert cli(["slides", str(slide_folder), "--out", str(tmp_path), "--serial", "--top-k", "1",
                "--model", str(WHOLE_FIELD_MODEL)]) == 130
    assert (tmp_path / done[0]["out"] / "summary.json").is_file()
    table = pd.read_csv(tmp_path / "slides.csv")
    assert "earlier" not in set(table.get("model", pd.Series(dtype=str)).dropna())
    assert len(table) == 3 and table.loc[0, "slide"] == done[0]["slide"] and pd.isna(table.loc[0, "error"])
    assert (table.loc[1:, "error"] == batch.STOPPED).all() and (table.loc[1:, "error_kind"] == "stopped").all()


@pytest.mark.parametrize("command", ["slide", "slides"])
@pytest.mark.parametrize("option", [["--overlap", "2"], ["--overlap", "nan"], ["--batch-size", "0"],
                                    ["--min-tissue", "-1"], ["--map-side", "8"], ["--map-side", "100000"],
                                    ["--max-tiles", "0"]])
def test_an_impossible_tile_option_is_a_user_error(command, option, tmp_path, capsys):
    """--overlap 2 or --batch-size 0 ended in a ValueError traceback (exit 1) instead of its message; --max-tiles 0
    refused every slide as 'more than the limit of 0', and a huge --map-side read level 0 whole as the overview."""
    assert cli([command, str(tmp_path), "--out", str(tmp_path / "out"), *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and option[0].lstrip("-").replace("-", "_") in err and "Traceback" not in err


@pytest.mark.parametrize("option", [["--mask-mpp", "-1"], ["--mask-mpp", "0"], ["--mask-mpp", "nan"],
                                    ["--min-od", "0.5", "--max-od", "0.1"], ["--min-area-um2", "-5"]])
def test_an_impossible_tissue_option_is_a_user_error(option, slide_folder, tmp_path, capsys):
    """--mask-mpp -1 (or 0, nan) was taken silently as a tissue overview at level 0, the whole slide at full
    resolution (gigabytes for a scanned slide); min_od above max_od found 'no tissue'. Both are refused."""
    assert cli(["slide", str(slide_folder / "mosaic.tif"), "--out", str(tmp_path / "out"), *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid tissue settings") and option[0][2:].replace("-", "_") in err
    assert not (tmp_path / "out").exists()


def test_slides_in_hidden_folders_are_not_the_batchs(tmp_path):
    """A share's .snapshot/ copies, a USB stick's .Trashes/ were analysed as slides of the folder
    (only hidden file names were skipped); a folder given by a hidden path still has its slides."""
    from core.slide.batch import slide_jobs

    for name in ("a.tif", "b/c.png", ".snapshot/hourly.0/a.tif", ".Trashes/501/old.svs", "b/._c.png"):
        (tmp_path / "share" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "share" / name).write_bytes(b"")
    assert [job.path for job in slide_jobs(tmp_path / "share", tmp_path / "out", "model")] == [
        str(tmp_path / "share" / "a.tif"), str(tmp_path / "share" / "b" / "c.png")]
    (tmp_path / "share").rename(tmp_path / ".share")
    assert len(slide_jobs(tmp_path / ".share", tmp_path / "out", "model")) == 2


def test_a_linked_folder_of_slides_is_followed_once(tmp_path):
    """A folder whose only entry links to a share of slides was listed as empty (Path.rglob does not
    follow folder links); a link back up is no loop."""
    from core.slide.reader import slide_files

    share, root = tmp_path / "share", tmp_path / "slides"
    (share / "case1").mkdir(parents=True)
    root.mkdir()
    (share / "case1" / "a.svs").write_bytes(b"x")
    (share / "b.tif").write_bytes(b"x")
    (root / "scanner").symlink_to(share, target_is_directory=True)
    (share / "up").symlink_to(root, target_is_directory=True)  # a loop
    (root / "again").symlink_to(share, target_is_directory=True)  # the same folder twice
    found = [p.relative_to(root).as_posix() for p in slide_files(root)]
    assert len(found) == 2 and {f.split("/")[-1] for f in found} == {"a.svs", "b.tif"}


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.write_bytes(b""), lambda p: p.mkdir()])
def test_a_missing_or_empty_slide_is_said_before_the_model_loads(make, tmp_path, monkeypatch, capsys):
    """`slide` loaded the model (seconds) before it found the file missing, and printed a blank line before the
    error (the progress line's end, with no progress shown)."""
    import core.slide.batch

    monkeypatch.setattr(core.slide.batch, "slide_model", lambda *a: pytest.fail("the model loaded first"))
    path = tmp_path / "scan.svs"
    make(path)
    assert cli(["slide", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'scan.svs'") and ("not found" in err or "empty" in err or "folder" in err)
