"""`python -m core predict` follows the Diagnose page's rules (core.app.service, core.app.slides): the same
warnings, the same 'refer for review', tiles for a large image, duplicates once, paths as given, and
an exit code that says whether anything got a call. Tiny models and the bundled samples: seconds."""

import json

import pytest

from core.cli import main as cli
from core.model.classifier import build_classifier
from core.model.folders import save_model_folder


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


def test_an_image_warning_refers_the_image_in_the_cli_as_in_the_app(tiny_40x, field_400x, capsys):
    """One rule for 'refer for review' (core.app.service.ImageResult.refer): either stage, or a warning."""
    cli(["predict", str(field_400x), "--json", "--threshold", "0", "--model", tiny_40x])
    record = _records(capsys)[0]
    assert not record["refer_stage1"] and not record["refer_subtype"]  # no stage is referred at threshold 0
    assert record["refer"] is True and record["refer_reasons"] == record["warnings"]
    cli(["predict", str(field_400x), "--threshold", "0", "--model", tiny_40x])
    assert "| REFER for review, warning: The model was trained on 40X" in capsys.readouterr().out
