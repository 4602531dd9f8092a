"""`evaluate --data` on a folder that lacks some of a run's images: the held-out figures (metrics.json, the
card, report.html) are never replaced by a subset's, and a folder without BreakHis names is said to be one."""

import json
import shutil

import pandas as pd
import pytest

from core.cli import main as cli
from tests.test_evaluate import _copy_run, metrics, run_dir  # noqa: F401  (the tiny trained run and its figures)


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


def _held_out_files(run):
    return {name: (run / name).read_bytes() for name in ("metrics.json", "report.html", "model/card.json")}


def test_missing_or_unreadable_test_images_never_replace_the_held_out_figures(metrics, run_dir, tmp_path, capsys):  # noqa: F811
    """A data folder that moved and was partly copied replaced metrics.json, the card's figures and report.html
    with a subset's (exit 0), while the card's evidence still named every test image. It is refused (exit 2)
    and they stay as they were; --allow-missing writes the subset's figures beside them, said to be a subset."""
    from core.evaluation.evaluate import write_outputs

    run, data = _moved(run_dir, tmp_path)
    write_outputs(run, metrics)
    held_out = _held_out_files(run)
    test = pd.read_csv(run / "split.csv").query("split == 'test'")
    gone = [data / p.rsplit("/", 1)[-1] for p in test["path"][:5]]
    for path in gone:
        path.unlink()
    assert cli(["evaluate", str(run), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "5 missing (test 5)" in err and "--allow-missing" in err and "left as they are" in err
    assert _held_out_files(run) == held_out and not list(run.glob("*subset*"))

    assert cli(["evaluate", str(run), "--data", str(data), "--allow-missing"]) == 0
    out = capsys.readouterr().out
    assert "metrics_test_subset.json" in out and "SUBSET: 27 of the 32 listed test images" in out
    assert _held_out_files(run) == held_out
    subset = json.loads((run / "metrics_test_subset.json").read_text())
    assert subset["subset"]["missing"] == 5 and "not the run's figures" in subset["subset"]["statement"]
    assert subset["data"]["images"] == 27 and (run / "report_test_subset.html").is_file()

    for original in pd.read_csv(run_dir / "split.csv").query("split == 'test'")["path"][:5]:
        shutil.copy(original, data)  # all back, listed where they are (--data would skip a broken file), one broken
    split = pd.read_csv(run / "split.csv")
    split.assign(path=[str(data / p.rsplit("/", 1)[-1]) for p in split["path"]]).to_csv(run / "split.csv", index=False)
    gone[0].write_bytes(b"not an image")
    assert cli(["evaluate", str(run)]) == 2
    assert "1 unreadable" in capsys.readouterr().err and _held_out_files(run) == held_out


def test_a_missing_validation_image_is_refused_too(run_dir, tmp_path):  # noqa: F811
    """The thresholds the card keeps are chosen on the validation images: a subset of them is not the run's."""
    from core.errors import UserInputError
    from core.evaluation.evaluate import evaluate_run

    run, data = _moved(run_dir, tmp_path)
    val = pd.read_csv(run / "split.csv").query("split == 'val'")
    (data / val["path"].iloc[0].rsplit("/", 1)[-1]).unlink()
    with pytest.raises(UserInputError, match=r"1 missing \(val 1\)"):
        evaluate_run(run, data_dir=data, write=False)


def test_a_subset_without_malignant_images_prints_n_a_and_a_failed_write_changes_nothing(metrics, run_dir, tmp_path,  # noqa: F811
                                                                                          capsys, monkeypatch):
    """The recall at the recall-favouring threshold is undefined on test images without a malignant one: the
    command crashed (TypeError formatting None) after it had rewritten metrics.json, the card and report.html.
    It prints n/a; and a write that fails part way (here the report) leaves the previous files as they were."""
    import core.evaluation.evaluate as evaluate

    run, data = _moved(run_dir, tmp_path)
    evaluate.write_outputs(run, metrics)
    held_out = _held_out_files(run)
    test = pd.read_csv(run / "split.csv").query("split == 'test' and label == 'malignant'")
    for path in test["path"]:
        (data / path.rsplit("/", 1)[-1]).unlink()
    assert cli(["evaluate", str(run), "--data", str(data), "--allow-missing"]) == 0
    out = capsys.readouterr().out
    assert "malignant recall n/a" in out and "None" not in out
    assert "n/a for stage 1: " in out  # why its balanced accuracy is undefined: no malignant image left

    def broken(results, path, card=None):
        path.write_text("half a report")
        raise RuntimeError("plotly failed")

    monkeypatch.setattr(evaluate, "write_report", broken)
    for original in pd.read_csv(run_dir / "split.csv").query("split == 'test' and label == 'malignant'")["path"]:
        shutil.copy(original, data)  # all images there again: this evaluation would replace the held-out figures
    assert cli(["evaluate", str(run), "--data", str(data)]) == 1
    assert _held_out_files(run) == held_out and not list(run.glob(".*"))


def test_a_recalibration_whose_re_evaluation_is_refused_leaves_the_card_as_it_was(metrics, run_dir, tmp_path,  # noqa: F811
                                                                                     capsys):
    """`calibrate --data` wrote new temperatures into the card, then its re-evaluation refused the folder that
    lacked test images: a card calibrated anew whose figures were measured with the old calibration."""
    from core.evaluation.evaluate import write_outputs

    run, data = _moved(run_dir, tmp_path)
    write_outputs(run, metrics)
    held_out = _held_out_files(run)
    test = pd.read_csv(run / "split.csv").query("split == 'test'")
    (data / test["path"].iloc[0].rsplit("/", 1)[-1]).unlink()
    assert cli(["calibrate", str(run), "--data", str(data)]) == 2
    assert "the card's calibration was put back" in capsys.readouterr().err
    assert _held_out_files(run) == held_out
