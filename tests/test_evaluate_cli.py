"""What `python -m core evaluate` prints and stores beside its figures: the decision threshold with the
recall at it (one meaning per name), the intervals, the DEMO / LIMITED DATA label, every float formatted."""

import json
import re

from core.cli import main as cli
from tests.test_evaluate import _copy_run, run_dir  # noqa: F401  (the tiny trained run, a fixture)


def test_the_recall_at_the_decision_threshold_has_its_own_name_and_its_threshold(run_dir, tmp_path, capsys):  # noqa: F811
    """--threshold 0.2 stored the recall at 0.2 as "malignant_recall", while the intervals and stage-1 block
    (what Compare and Performance show) held the most probable class's under the same name; the threshold was
    printed nowhere."""
    run = _copy_run(run_dir, tmp_path / "run")
    assert cli(["evaluate", str(run), "--threshold", "0"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    argmax = metrics["stage1"]["per_class"]["malignant"]["recall"]
    assert metrics["malignant_recall"] == argmax == metrics["intervals"]["image"]["malignant_recall"]["value"]
    assert metrics["malignant_recall_at_threshold"] == {"threshold": 0.0, "value": 1.0}  # all called malignant
    assert metrics["malignant_threshold"]["decision"]["threshold"] == 0.0
    assert "decision threshold 0.000" in out and "malignant recall 1.000, benign recall 0.000" in out
    for baseline in metrics["baselines"].values():
        assert baseline["malignant_recall_at_threshold"]["threshold"] == 0.0


def test_the_printout_has_intervals_the_demo_or_limited_label_and_formatted_floats(run_dir, tmp_path, capsys):  # noqa: F811
    """On a DEMO model it printed "stage 1 accuracy 0.837 ..." with no interval and no DEMO, and one float
    unformatted ("benign recall 0.3333333333333333")."""
    from core.model.folders import update_card

    run = _copy_run(run_dir, tmp_path / "run")
    assert cli(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    first = out.splitlines()[0]
    assert first.startswith("DEMO · tiny-run (small_cnn)") and "no valid accuracy" in first
    accuracy = metrics["intervals"]["image"]["stage1_accuracy"]
    row = next(line for line in out.splitlines() if line.strip().startswith("stage-1 accuracy"))
    assert f"{accuracy['value']:.3f} (95% CI {accuracy['low']:.3f}-{accuracy['high']:.3f})" in row
    # five headline figures at image and patient level, each with its interval or why it has none
    assert out.count("95% CI") + out.count("(no spread over the patient resamples)") >= 10
    assert not re.search(r"\d\.\d{4,}", out)  # every float formatted

    update_card(run / "model", demo=False, evidence={"limited": True, "statement": "learnt from 64 images"})
    assert cli(["evaluate", str(run)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("LIMITED DATA · tiny-run (small_cnn) · patient-level stage-1 accuracy")
    assert first.endswith("learnt from 64 images") and "DEMO" not in first
