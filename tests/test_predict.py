"""Predictor: probabilities are read correctly from both model kinds, stage 2 follows stage 1,
TTA is one batched pass, the refer flag fires when it should, and the CLI survives bad files."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from core.cli import main as cli
from core.data.labels import CLASSES, SUBTYPES, SUBTYPES_BY_CLASS
from core.data.preprocess import batch_for_model
from core.model.classifier import build_classifier
from core.model.folders import save_model_folder
from core.model.loading import load_predictor
from core.model.predict import DEMO_REASON
from tests.app_helpers import result_lines

SIZE = 64
REPO = Path(__file__).resolve().parent.parent


def _save(tmp_path_factory, hierarchy, demo=False, biases=None):
    """A tiny model; `biases` {output: logits} zeroes that head's kernel so its output is exact."""
    model, _ = build_classifier("small_cnn", hierarchy, weights=None, input_size=SIZE)
    for name, logits in (biases or {}).items():
        kernel, _ = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([np.zeros_like(kernel), np.asarray(logits, np.float32)])
    card = {"name": f"tiny-{hierarchy}", "backbone": "small_cnn", "hierarchy": hierarchy, "demo": demo}
    return save_model_folder(model, tmp_path_factory.mktemp(hierarchy) / "model", card)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _save(tmp_path_factory, "hierarchical")


@pytest.fixture(scope="module")
def predictor(folder):
    return load_predictor(folder)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (460, 700, 3), dtype=np.uint8), rng.integers(0, 256, (50, 80, 3), dtype=np.uint8),
            rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]


def test_probabilities_sum_to_one_and_match_the_model(predictor, images):
    predictions = predictor.predict(images)
    raw = predictor.model(batch_for_model(images, SIZE), training=False)
    for i, p in enumerate(predictions):
        assert sum(p.stage1.values()) == pytest.approx(1, abs=1e-5)
        assert sum(p.stage2.values()) == pytest.approx(1, abs=1e-5)
        assert sum(p.other_stage2.values()) == pytest.approx(1, abs=1e-5)
        assert sum(p.subtype_probabilities().values()) == pytest.approx(1, abs=1e-5)
        np.testing.assert_allclose(list(p.stage1.values()), np.asarray(raw["stage1"])[i], atol=1e-5)
        assert p.confidence == pytest.approx(p.p_label * p.p_subtype)


def test_batching_keeps_order(predictor, images):
    together = predictor.predict(images)
    alone = [predictor.predict([image])[0] for image in images]
    for a, b in zip(together, alone):
        assert a.label == b.label and a.subtype == b.subtype
        np.testing.assert_allclose(list(a.stage1.values()), list(b.stage1.values()), atol=1e-5)


@pytest.mark.parametrize("stage1_logits, expected_label, expected_subtype", [
    ([0.0, 20.0], "malignant", "lobular_carcinoma"),
    ([20.0, 0.0], "benign", "tubular_adenoma"),
])
def test_stage2_comes_from_the_head_stage1_picks(tmp_path_factory, stage1_logits, expected_label, expected_subtype):
    folder = _save(tmp_path_factory, "hierarchical", biases={
        "stage1": stage1_logits, "benign_subtype": [0, 0, 0, 20], "malignant_subtype": [0, 20, 0, 0]})
    p = load_predictor(folder).predict([np.zeros((80, 120, 3), np.uint8)])[0]
    assert (p.label, p.subtype) == (expected_label, expected_subtype)
    assert list(p.stage2) == list(SUBTYPES_BY_CLASS[expected_label])
    other = CLASSES[1 - CLASSES.index(expected_label)]
    assert list(p.other_stage2) == list(SUBTYPES_BY_CLASS[other])
    assert p.confidence > 0.99 and p.refer is False and p.refer_reasons == []


def test_flat_model_sums_classes_and_renormalises_subtypes(tmp_path_factory):
    # p(ductal | malignant) = 0.48 / 0.8 = 0.6: far from a rounding boundary of the 2-decimal reason
    # (0.625 sat exactly on one and printed 0.62 or 0.63 depending on float error).
    wanted = np.array([0.05, 0.05, 0.05, 0.05, 0.48, 0.22, 0.05, 0.05])
    folder = _save(tmp_path_factory, "flat", biases={"subtype8": np.log(wanted)})
    p = load_predictor(folder).predict([np.zeros((70, 90, 3), np.uint8)])[0]
    assert p.label == "malignant" and p.stage1["malignant"] == pytest.approx(0.8, abs=1e-5)
    assert p.subtype == "ductal_carcinoma" and p.p_subtype == pytest.approx(0.6, abs=1e-5)
    assert p.other_stage2["adenosis"] == pytest.approx(0.25, abs=1e-5)
    np.testing.assert_allclose([p.subtype_probabilities()[s] for s in SUBTYPES], wanted, atol=1e-5)
    # per stage: p(malignant) 0.8 passes 0.7, p(ductal | malignant) 0.6 does not
    assert p.refer and p.refer_reasons == ["subtype uncertain (0.60 < 0.70)"]
    assert not p.refer_stage1 and p.refer_subtype


def test_tta_is_one_batched_pass_averaging_the_8_dihedral_views(predictor, images):
    calls = []
    compiled = predictor._forward_tta
    predictor._forward_tta = lambda batch: calls.append(tuple(batch.shape)) or compiled(batch)
    try:
        predictions = predictor.predict(images[:2], tta=True)
    finally:
        predictor._forward_tta = compiled
    assert calls == [(2, SIZE, SIZE, 3)]  # both images, all 8 views: a single forward call
    base = batch_for_model(images[:2], SIZE)
    views = [np.rot90(v, k, axes=(1, 2)) for v in (base, base[:, :, ::-1]) for k in range(4)]
    expected = np.mean([np.asarray(predictor.model(np.ascontiguousarray(v), training=False)["stage1"])
                        for v in views], axis=0)
    for i, p in enumerate(predictions):
        assert p.tta
        np.testing.assert_allclose(list(p.stage1.values()), expected[i], atol=1e-5)


def test_refer_on_low_confidence_and_always_for_demo_models(predictor, images, tmp_path_factory):
    p = predictor.predict(images[:1], refer_threshold=1.0)[0]
    assert p.refer and p.refer_reasons[0].startswith("stage 1 uncertain (")
    assert not predictor.predict(images[:1], refer_threshold=0.0)[0].refer
    demo = load_predictor(_save(tmp_path_factory, "hierarchical", demo=True))
    assert demo.is_demo
    flagged = demo.predict(images[:1], refer_threshold=0.0)[0]
    assert flagged.refer and flagged.refer_reasons == [DEMO_REASON]


def test_bad_input_is_a_clear_error(predictor):
    assert predictor.predict([]) == []
    with pytest.raises(ValueError, match="uint8 RGB"):
        predictor.predict([np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(ValueError, match="uint8 RGB"):
        predictor.predict([np.zeros((32, 32), np.uint8)])
    with pytest.raises(ValueError, match="refer_threshold"):
        predictor.predict([np.zeros((32, 32, 3), np.uint8)], refer_threshold=1.5)


def test_concurrent_predictions_from_threads_agree(predictor, images):
    expected = [p.stage1["malignant"] for p in predictor.predict(images)]
    results, errors = [None] * 4, []

    def worker(i):
        try:
            results[i] = [p.stage1["malignant"] for p in predictor.predict(images, tta=i % 2 == 1)]
        except Exception as error:  # Collected and asserted below.
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    np.testing.assert_allclose(results[0], expected, atol=1e-5)
    np.testing.assert_allclose(results[2], expected, atol=1e-5)


def test_cli_prints_one_line_per_image_and_reports_bad_files(folder, samples_dir, tmp_path, capsys):
    real = sorted(samples_dir.rglob("*.png"))[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code = cli(["predict", str(real[0]), str(broken), str(real[1]), "--model", str(folder)])
    lines = result_lines(capsys.readouterr().out)
    assert code == 1 and len(lines) == 3
    assert lines[0].startswith(f"{real[0]}\t") and lines[2].startswith(f"{real[1]}\t")  # each path as given
    assert lines[1].startswith(f"{broken}\tERROR")
    assert all(("benign (" in line or "malignant (" in line) for line in (lines[0], lines[2]))

    assert cli(["predict", str(real[0]), "--model", str(folder), "--json", "--tta", "--threshold", "0"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["file"] == real[0].name and record["tta"] is True and record["refer"] is False
    assert record["label"] in CLASSES and record["subtype"] in SUBTYPES_BY_CLASS[record["label"]]

    assert cli(["predict", str(real[0]), "--model", str(tmp_path / "missing")]) == 2
    assert "Model folder not found" in capsys.readouterr().err


def test_cli_runs_as_a_module_with_json_lines(folder, samples_dir, tmp_path):
    real = sorted(samples_dir.rglob("*.png"))[0]
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "core", "predict", str(real), str(empty), "--json",
                             "--model", str(folder)], cwd=REPO, capture_output=True, text=True, timeout=300)
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert result.returncode == 1 and len(records) == 2
    assert records[0]["file"] == real.name and 0 <= records[0]["confidence"] <= 1
    assert records[1]["file"] == "empty.png" and "empty" in records[1]["error"]


def test_one_factory_loads_each_kind_and_refuses_a_generator(predictor, folder, tmp_path):
    from core.errors import ModelFolderError
    from core.model.predict import Predictor

    assert type(predictor) is Predictor and predictor.members == [predictor]  # a single model is its own member
    generator = tmp_path / "generator"
    generator.mkdir()
    (generator / "card.json").write_text(json.dumps({"kind": "gan_generator", "image_size": 64, "latent_dim": 8,
                                                     "subtypes": ["adenosis"], "sha256": "0" * 64}))
    with pytest.raises(ModelFolderError, match="GAN generator, which cannot classify images"):
        load_predictor(generator)


def test_a_referral_reason_shows_the_probability_below_its_threshold():
    from core.model.decisions import below

    assert below(0.60, 0.70) == "0.60 < 0.70"
    assert below(0.9753, 0.9762) == "0.975 < 0.9762"  # the threshold as the page caption states it, not "0.98"
    assert below(0.97621, 0.97623) == "0.97621 < 0.97623"  # never "a < a"


def test_the_cli_labels_a_limited_model_wherever_it_predicts(folder, samples_dir, capsys, caplog):
    """The bundled model learnt from 46 patients: every JSON record and the log say LIMITED DATA and
    what the weights learnt from; a model without that evidence is not labelled so."""
    from core.paths import DEFAULT_MODEL_DIR

    real = sorted(samples_dir.rglob("*.png"))[0]
    assert cli(["predict", str(real), "--json", "--model", str(DEFAULT_MODEL_DIR)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["model_badge"].startswith("LIMITED DATA · ") and record["model_limited"] is True
    assert "LIMITED DATA" in caplog.text and "weights learnt from " in caplog.text
    caplog.clear()
    assert cli(["predict", str(real), "--json", "--model", str(folder)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["model_badge"] == "tiny-hierarchical (small_cnn)" and record["model_limited"] is False
    assert "LIMITED DATA" not in caplog.text


def test_the_cli_predicts_every_image_of_a_folder(folder, samples_dir, tmp_path, capsys):
    """`predict scans/`: each image of the folder's tree, sorted, hidden files left out and other files
    named in one line; a folder without images is an error line that says so, not 'file not found'."""
    import shutil

    scans, empty = tmp_path / "scans", tmp_path / "empty"
    (scans / "day2").mkdir(parents=True)
    (scans / ".cache").mkdir()
    empty.mkdir()
    real = sorted(samples_dir.rglob("*.png"))[:2]
    shutil.copy(real[0], scans / real[0].name)
    shutil.copy(real[1], scans / "day2" / real[1].name)
    shutil.copy(real[1], scans / ".cache" / "thumb.png")
    (scans / "notes.txt").write_text("not an image")
    assert cli(["predict", str(scans), str(empty), "--model", str(folder)]) == 1  # the empty folder failed
    lines = result_lines(capsys.readouterr().out)
    assert [line.split("\t")[0] for line in lines] == [str(scans), str(scans / real[0].name),
                                                        str(scans / "day2" / real[1].name), str(empty)]
    assert lines[0].endswith(": notes.txt")
    assert lines[3] == f"{empty}\tERROR: '{empty}' is a folder without images (PNG, JPEG, TIFF, BMP, GIF, WEBP)."
