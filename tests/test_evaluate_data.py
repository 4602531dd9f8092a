"""`evaluate --data` on a folder that lacks some of a run's images: the held-out figures (metrics.json, the
card, report.html) are never replaced by a subset's, and a folder without BreakHis names is said to be one."""

import shutil

import pandas as pd

from core.cli import main as cli
from tests.test_evaluate import _copy_run, run_dir  # noqa: F401  (the tiny trained run, a fixture)


def _moved(run_dir, to):  # noqa: F811
    """A copy of the run whose data folder moved away (split.csv names /nowhere/...), and a copy of that
    data: the images its --data must find again by file name."""
    run = _copy_run(run_dir, to / "run")
    split = pd.read_csv(run / "split.csv")
    data = to / "data"
    data.mkdir()
    for path in split["path"]:
        shutil.copy(path, data)
    split.assign(path="/nowhere/" + split["path"].map(lambda p: p.rsplit("/", 1)[-1])).to_csv(run / "split.csv",
                                                                                             index=False)
    return run, data


def test_a_folder_without_the_listed_names_says_images_are_matched_by_file_name(run_dir, tmp_path, capsys):  # noqa: F811
    run, data = _moved(run_dir, tmp_path)
    for i, path in enumerate(sorted(data.iterdir())):  # the same images under names that are not BreakHis names
        path.rename(data / f"img_{i:03d}.png")
    assert cli(["evaluate", str(run), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    listed = int((pd.read_csv(run / "split.csv")["split"] == "test").sum())
    assert f"None of the {listed} 'test' images" in err and "matched by their BreakHis file name" in err
    assert str(data) in err and "pass --data" not in err
