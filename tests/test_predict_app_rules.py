"""`python -m core predict` follows the Diagnose page's rules (core.app.service, core.app.slides): the same
warnings, the same 'refer for review', tiles for a large image, duplicates once, paths as given, and
an exit code that says whether anything got a call. Tiny models and the bundled samples: seconds."""

import json
import shutil

import pytest

from core.cli import main as cli
from core.model.classifier import build_classifier
from core.model.folders import save_model_folder
from tests.app_helpers import result_lines


def _model(folder, **card):
    model, _ = build_classifier("small_cnn", "hierarchical", weights=None, input_size=64)
    return str(save_model_folder(model, folder, {"name": "tiny", "backbone": "small_cnn",
                                                 "hierarchy": "hierarchical", **card}))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_40x(tmp_path_factory):
    """A model whose card says it learnt from 40X images only (the app warns on other magnifications)."""
    return _model(tmp_path_factory.mktemp("tiny40") / "model", training={"magnification": "40X"})


@pytest.fixture(scope="module")
def field_400x(samples_dir):
    return next(samples_dir.rglob("SOB_B_F-14-25197-400-033.png"))


def _records(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_the_magnification_warning_of_the_app_is_in_the_cli(tiny_40x, field_400x, capsys):
    warning = "The model was trained on 40X images only; this image is 400X."
    cli(["predict", str(field_400x), "--json", "--model", tiny_40x])
    record = _records(capsys)[0]
    assert record["magnification"] == "400X" and warning in record["warnings"]
    cli(["predict", str(field_400x), "--model", tiny_40x])
    assert warning in capsys.readouterr().out


def test_the_magnification_source_names_the_cli_option(tiny, field_400x, tmp_path, capsys):
    """The service's 'chosen by user' is the page's control; here it is --magnification."""
    renamed = tmp_path / "field.png"
    shutil.copy(field_400x, renamed)
    cli(["predict", str(renamed), "--json", "--magnification", "400X", "--model", tiny])
    assert [(r["magnification"], r["magnification_source"]) for r in _records(capsys)] == [("400X", "--magnification")]


def test_an_image_warning_refers_the_image_in_the_cli_as_in_the_app(tiny_40x, field_400x, capsys):
    """One rule for 'refer for review' (core.app.service.ImageResult.refer): either stage, or a warning."""
    cli(["predict", str(field_400x), "--json", "--threshold", "0", "--model", tiny_40x])
    record = _records(capsys)[0]
    assert not record["refer_stage1"] and not record["refer_subtype"]  # no stage is referred at threshold 0
    assert record["refer"] is True and record["refer_reasons"] == record["warnings"]
    cli(["predict", str(field_400x), "--threshold", "0", "--model", tiny_40x])
    assert "| REFER for review, warning: The model was trained on 40X" in capsys.readouterr().out


def _enlarged(sample, path, size):
    """A sample field resized up to `size`: H&E colours, larger than a field."""
    from PIL import Image

    Image.open(sample).convert("RGB").resize(size).save(path)
    return str(path)


def test_a_large_image_is_tiled_as_on_the_diagnose_page(tiny, field_400x, tmp_path, capsys):
    """A 400X image of 2000x1400 px spans 4 of the model's fields: the page analyses it as tiles
    (core.app.slides.tile_reason), so the CLI does too, with the page's sentence; no single-field call."""
    from core.app import slides
    from core.app.service import diagnose_items
    from core.model.loading import load_predictor

    big = _enlarged(field_400x, tmp_path / "biopsy_400x.png", (2000, 1400))
    predictor = load_predictor(tiny)
    page = diagnose_items(predictor, [("biopsy_400x.png", open(big, "rb").read())])[0]
    reason = slides.tile_reason(predictor.card, page, None)
    assert reason and "analysed as 4 tiles" in reason
    cli(["predict", big, "--json", "--model", tiny])
    record = _records(capsys)[0]
    assert record["tiled"] is True and record["tile_reason"] == reason and "stage1" not in record
    assert record["label"] in ("benign", "malignant") and record["slide"]["tiles_total"] == 4
    cli(["predict", big, "--model", tiny])
    line = "\n".join(result_lines(capsys.readouterr().out))
    assert line.split("\t")[1].startswith("Call over the tiles: ") and reason in line


def test_every_record_says_its_outcome_and_the_loaders_notes_reach_the_text_line(tiny, field_400x, tmp_path,
                                                                                 capsys):
    """Each kind of record had its own keys (a refused image 'call' and no model_limited, a tiled one no
    magnification), and the loader's notes (16-bit scaled) were in the JSON, the page, CSV and PDF but not the
    text line. One "outcome" key, model_limited and magnification on every analysed record; notes on the line."""
    import numpy as np
    from PIL import Image

    grey, broken, deep = tmp_path / "grey.png", tmp_path / "broken.png", tmp_path / "deep_400x.png"
    Image.new("RGB", (120, 90), (128, 128, 128)).save(grey)
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    field = np.asarray(Image.open(field_400x).convert("RGB")).astype(np.uint16) * 16  # 12-bit values
    Image.fromarray(field[..., 0]).save(deep)  # 16-bit greyscale: converted, with a note
    big = _enlarged(field_400x, tmp_path / "biopsy_400x.png", (2000, 1400))
    cli(["predict", str(field_400x), str(grey), str(broken), big, "--json", "--model", tiny])
    records = {r["file"]: r for r in _records(capsys)}
    assert [records[name]["outcome"] for name in (field_400x.name, "grey.png", "broken.png", "biopsy_400x.png")] == \
        ["called", "not analysed: not H&E tissue", "error", "analysed as tiles"]
    for name in (field_400x.name, "grey.png", "biopsy_400x.png"):
        assert records[name]["model_limited"] is not None and "magnification" in records[name], name
    cli(["predict", str(deep), "--json", "--model", tiny])
    [record] = _records(capsys)
    assert record["notes"] and "16-bit" in record["notes"][0]
    cli(["predict", str(deep), "--model", tiny])
    assert f"| notes: {record['notes'][0]}" in capsys.readouterr().out


def test_a_large_image_of_unknown_scale_gets_the_pages_scale_hint(tiny, field_400x, tmp_path, capsys):
    big = _enlarged(field_400x, tmp_path / "scan.png", (1400, 920))
    cli(["predict", big, "--json", "--model", tiny])
    hint = _records(capsys)[0]["scale_hint"]
    assert hint.startswith("scan.png is 1400x920 px and states no magnification, so it was diagnosed as one field")
    cli(["predict", big, "--model", tiny])
    assert hint in capsys.readouterr().out


def test_each_line_names_the_path_as_given(tiny, samples_dir, tmp_path, capsys, monkeypatch):
    """Two field1.png of two cases are told apart; a mistyped folder is shown, not only '*.png'."""
    real = sorted(samples_dir.rglob("*.png"))[:2]
    for case, source in zip(("caseA", "caseB"), real):
        (tmp_path / "cases" / case).mkdir(parents=True)
        shutil.copy(source, tmp_path / "cases" / case / "field1.png")
    monkeypatch.chdir(tmp_path)
    cli(["predict", "cases", "nowhere/*.png", "--model", tiny])
    lines = result_lines(capsys.readouterr().out)
    assert [line.split("\t")[0] for line in lines] == ["cases/caseA/field1.png", "cases/caseB/field1.png",
                                                       "nowhere/*.png"]
    assert lines[2] == "nowhere/*.png\tERROR: 'nowhere/*.png': file not found."
    cli(["predict", "cases", "--json", "--model", tiny])
    records = _records(capsys)
    assert [(r["file"], r["path"]) for r in records] == [("field1.png", "cases/caseA/field1.png"),
                                                         ("field1.png", "cases/caseB/field1.png")]


def test_the_exit_code_says_whether_any_input_got_a_call(tiny, field_400x, tmp_path, capsys):
    """0: calls (a not-H&E image is no failure); 1: some inputs unreadable; 3: no input got a call."""
    from PIL import Image

    grey, broken = tmp_path / "grey.png", tmp_path / "broken.png"
    Image.new("RGB", (120, 90), (128, 128, 128)).save(grey)
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert cli(["predict", str(grey), str(field_400x), "--model", tiny]) == 0
    assert cli(["predict", str(broken), str(field_400x), "--model", tiny]) == 1
    assert cli(["predict", str(grey), "--model", tiny]) == 3
    assert cli(["predict", str(grey), str(broken), "--model", tiny]) == 3
    capsys.readouterr()
    assert cli(["predict", "--help"]) == 0
    epilog = " ".join(capsys.readouterr().out.split())
    assert "3 no input got a call" in epilog and "not H&E tissue is not a failure" in epilog


def test_text_output_carries_the_limited_data_label_on_stdout(tiny, samples_dir, tmp_path, capsys):
    """A saved `predict ... > results.txt` of a limited or demo model says so in its first line."""
    from core.model.decisions import referral_rule
    from core.model.loading import load_predictor
    from core.paths import DEFAULT_MODEL_DIR

    real = str(sorted(samples_dir.rglob("*.png"))[0])
    cli(["predict", real, "--model", str(DEFAULT_MODEL_DIR)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# LIMITED DATA · ") and "weights learnt from " in lines[0]
    # Both referral thresholds and their source once, exactly as the page caption and the PDF state them.
    thresholds = load_predictor(DEFAULT_MODEL_DIR).stage_thresholds(None)
    # What its probabilities are, as the page and the PDF say (the CLI never said they were calibrated).
    assert lines[1] == "# Probabilities: calibrated (temperature scaling, fitted on pooled out-of-fold predictions " \
                       "of 5-fold CV (757 images, 46 patients))."
    assert lines[2] == f"# {referral_rule(*thresholds)}" and "0.9762" in lines[2]
    assert len(lines) == 4 and lines[3].startswith(f"{real}\t")
    demo = _model(tmp_path / "demo", demo=True)
    cli(["predict", real, "--model", demo])
    assert capsys.readouterr().out.startswith("# DEMO · tiny (small_cnn)")
    cli(["predict", real, "--model", tiny, "--threshold", "0.6"])
    lines = capsys.readouterr().out.splitlines()  # a model without that evidence: no label, the rule in use
    assert lines[0].startswith("# Probabilities: ") and lines[1] == "# Referral: stage 1 below p(class) 0.60, " \
        "subtype below p(subtype | class) 0.60 (set by the user)." and lines[2].startswith(f"{real}\t")


def test_a_folder_takes_what_the_uploader_takes_follows_links_and_names_what_it_skips(tiny, field_400x, tmp_path,
                                                                                       capsys):
    from PIL import Image

    scans, elsewhere = tmp_path / "scans", tmp_path / "elsewhere"
    scans.mkdir()
    elsewhere.mkdir()
    field = Image.open(field_400x).convert("RGB")
    for name in ("x.bmp", "x.gif", "x.webp", "UPPER.PNG"):
        field.save(scans / name)
    shutil.copy(field_400x, elsewhere / "linked.png")
    (scans / "linked").symlink_to(elsewhere, target_is_directory=True)
    (scans / "loop").symlink_to(scans, target_is_directory=True)  # a link back up is walked once
    (scans / "notes.txt").write_text("not an image")
    (scans / "doc.pdf").write_bytes(b"%PDF-1.4")
    cli(["predict", str(scans), "--model", tiny])
    lines = result_lines(capsys.readouterr().out)
    assert lines[0] == f"{scans}\tskipped 2 files that are not images (PNG, JPEG, TIFF, BMP, GIF, WEBP): doc.pdf, notes.txt"
    assert [line.split("\t")[0] for line in lines[1:]] == [str(scans / n) for n in (
        "UPPER.PNG", "linked/linked.png", "x.bmp", "x.gif", "x.webp")]
    cli(["predict", str(scans), "--json", "--model", tiny])
    assert _records(capsys)[0]["skipped"] == ["doc.pdf", "notes.txt"]


def test_the_same_image_given_twice_is_named_as_on_the_page(tiny, field_400x, tmp_path, capsys):
    """The page analyses repeats once ('Given more than once'); the CLI names them the same way and still
    analyses each (no case mean weighs it twice here, and a name may state another magnification)."""
    copy = tmp_path / "copy.png"
    shutil.copy(field_400x, copy)
    assert cli(["predict", str(field_400x), str(copy), "--json", "--model", tiny]) == 0
    first, again = _records(capsys)
    assert "duplicate_of" not in first and again["duplicate_of"] == str(field_400x)
    assert again["path"] == str(copy) and again["stage1"] == first["stage1"]
    cli(["predict", str(field_400x), str(copy), "--model", tiny])
    assert result_lines(capsys.readouterr().out)[1].endswith(f" | given more than once: the same file as {field_400x}")
    cli(["predict", str(copy), str(copy), "--json", "--model", tiny])
    assert _records(capsys)[1]["duplicate_of"] == str(copy)


def test_a_closed_output_pipe_ends_quietly(tiny, field_400x, monkeypatch, caplog):
    """`predict ... | head -1`: the reader went away; no 'predict failed' traceback, the SIGPIPE code."""
    import io
    import sys

    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert cli(["predict", str(field_400x), "--model", tiny]) == 141
    assert "failed" not in caplog.text and "Traceback" not in caplog.text
