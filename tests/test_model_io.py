"""Model folders: a saved model comes back identical, and anything wrong with a folder is refused
with a message a user can act on (never a Keras traceback)."""

import datetime
import json
import zipfile

import numpy as np
import pytest

from core.data.labels import SUBTYPES
from core.digests import file_sha256
from core.errors import ModelFolderError
from core.model.archive import export_zip, import_zip
from core.model.classifier import build_classifier
from core.model.folders import (
    CARD_FILE,
    MODEL_FILE,
    find_model_folders,
    load_model_folder,
    read_card,
    save_model_folder,
    update_card,
)

SIZE = 64


def _card(**extra):
    return {"name": "tiny", "backbone": "small_cnn", "hierarchy": "hierarchical",
            "weights_init": "random initialisation", "demo": False,
            "training": {"data_source": "synthetic", "split_protocol": "patient-wise"}, **extra}


@pytest.fixture(scope="module")
def tiny_model():
    model, _ = build_classifier("small_cnn", "hierarchical", weights=None, input_size=SIZE)
    return model


@pytest.fixture
def folder(tmp_path, tiny_model):
    return save_model_folder(tiny_model, tmp_path / "tiny", _card())


def test_round_trip_gives_identical_predictions_and_a_complete_card(folder, tiny_model):
    images = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    loaded, card = load_model_folder(folder)
    before, after = tiny_model(images, training=False), loaded(images, training=False)
    for name in ("stage1", "benign_subtype", "malignant_subtype"):
        np.testing.assert_array_equal(np.asarray(before[name]), np.asarray(after[name]))
    assert card["sha256"] == file_sha256(folder / MODEL_FILE)
    assert card["input_size"] == SIZE and card["labels"]["subtypes"] == list(SUBTYPES)
    assert "64x64" in card["preprocessing"]["description"]
    assert card["preprocessing"]["normalization"] == "unit"  # small_cnn's mode, from the registry
    assert {"tensorflow", "keras"} <= set(card["versions"])
    assert datetime.datetime.fromisoformat(card["created"]).tzinfo is not None
    assert card["training"]["split_protocol"] == "patient-wise" and card["demo"] is False
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_tampered_model_file_is_refused(folder):
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="does not match its card - it may be corrupt or tampered"):
        load_model_folder(folder)


def test_missing_folder_and_missing_files_have_clear_errors(tmp_path, folder):
    with pytest.raises(ModelFolderError, match="Model folder not found"):
        load_model_folder(tmp_path / "nope")
    (folder / MODEL_FILE).unlink()
    with pytest.raises(ModelFolderError, match="no model.keras"):
        load_model_folder(folder)
    (folder / CARD_FILE).unlink()
    with pytest.raises(ModelFolderError, match="not a model folder"):
        load_model_folder(folder)


def test_common_model_path_mistakes_name_the_right_folder(tmp_path, monkeypatch):
    """--model given a model's file, a run folder or an empty path: the messages said "Model folder not
    found: .../model.keras" (the file exists), "has no card.json" (RUN/model is right there) and "."."""
    from core.model.folders import GENERATOR
    from core.model.loading import load_predictor

    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    (model / CARD_FILE).write_text("{}")
    (model / MODEL_FILE).write_bytes(b"PK")
    for given in (model / MODEL_FILE, model / CARD_FILE):
        with pytest.raises(ModelFolderError, match=f"is a file of a model folder: pass its folder, {model}$"):
            load_predictor(given)
    monkeypatch.chdir(model)
    with pytest.raises(ModelFolderError, match=f"pass its folder, {model}$"):
        load_predictor(MODEL_FILE)
    with pytest.raises(ModelFolderError, match=f"it is not a model folder; did you mean {model}\\?$"):
        load_predictor(tmp_path / "run")
    (tmp_path / "run" / "other").mkdir()
    (tmp_path / "run" / "other" / CARD_FILE).write_text("{}")
    with pytest.raises(ModelFolderError, match=f"did you mean one of {model}, {tmp_path / 'run' / 'other'}\\?$"):
        load_predictor(tmp_path / "run")  # RUN/model named first
    for empty in ("", " "):
        with pytest.raises(ModelFolderError, match="^No model folder given \\(the path is empty\\)"):
            load_predictor(empty)
        with pytest.raises(ModelFolderError, match="^No model folder given"):
            load_model_folder(empty, kind=GENERATOR)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelFolderError, match="notes.txt is a file, not a model folder"):
        load_predictor(tmp_path / "notes.txt")


def test_bad_cards_are_refused(folder):
    card = json.loads((folder / CARD_FILE).read_text())
    (folder / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        load_model_folder(folder)
    (folder / CARD_FILE).write_text(json.dumps({k: v for k, v in card.items() if k != "sha256"}))
    with pytest.raises(ModelFolderError, match="lacks sha256"):
        load_model_folder(folder)
    swapped = dict(card, labels={**card["labels"], "subtypes": list(reversed(SUBTYPES))})
    (folder / CARD_FILE).write_text(json.dumps(swapped))
    with pytest.raises(ModelFolderError, match="different label order"):
        load_model_folder(folder)
    (folder / CARD_FILE).write_text(json.dumps(dict(card, hierarchy="flat")))
    with pytest.raises(ModelFolderError, match="do not match a flat model"):
        load_model_folder(folder)


def test_unloadable_model_with_a_matching_checksum_is_a_clear_error(folder):
    (folder / MODEL_FILE).write_bytes(b"this is not a keras archive")
    card = json.loads((folder / CARD_FILE).read_text())
    (folder / CARD_FILE).write_text(json.dumps(dict(card, sha256=file_sha256(folder / MODEL_FILE))))
    with pytest.raises(ModelFolderError, match="Keras could not load"):
        load_model_folder(folder)


def test_update_card_keeps_the_checksum_valid_and_refuses_tampered_models(folder):
    update_card(folder, metrics={"stage1": {"accuracy": 0.9}})
    _, card = load_model_folder(folder)
    assert card["metrics"]["stage1"]["accuracy"] == 0.9
    (folder / MODEL_FILE).write_bytes((folder / MODEL_FILE).read_bytes() + b"x")
    with pytest.raises(ModelFolderError, match="tampered"):
        update_card(folder, metrics={})


def test_export_zip_holds_both_files_and_imports_back(folder, tmp_path):
    archive = export_zip(folder, tmp_path / "out" / "tiny.zip")
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == ["tiny/card.json", "tiny/model.keras"]
    imported = import_zip(archive, tmp_path / "imported")
    assert file_sha256(imported / MODEL_FILE) == file_sha256(folder / MODEL_FILE)
    load_model_folder(imported)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ModelFolderError, match="not a zip file"):
        import_zip(tmp_path / "junk.zip", tmp_path / "imported2")


def test_save_requires_backbone_and_a_consistent_input_size(tmp_path, tiny_model):
    with pytest.raises(ValueError, match="backbone"):
        save_model_folder(tiny_model, tmp_path / "a", {"hierarchy": "hierarchical"})
    with pytest.raises(ValueError, match="input_size"):
        save_model_folder(tiny_model, tmp_path / "b", _card(input_size=224))


def test_find_model_folders_lists_card_folders_sorted(tmp_path):
    for relative in ("models/default", "runs/b/model", "runs/a/model", "runs/.hidden/model"):
        (tmp_path / relative).mkdir(parents=True)
        (tmp_path / relative / CARD_FILE).write_text("{}")
    (tmp_path / "runs" / "no_card").mkdir()
    found = find_model_folders(tmp_path / "models", tmp_path / "runs", tmp_path / "missing")
    assert found == [tmp_path / "models/default", tmp_path / "runs/a/model", tmp_path / "runs/b/model"]


def test_the_model_badge_marks_demo_models(folder):
    from core.app.registry import describe_model, model_badge

    card = read_card(folder)
    assert "DEMO" not in model_badge(card) and model_badge(card) == "tiny (small_cnn)"
    assert model_badge(dict(card, demo=True)).startswith("DEMO · tiny")
    assert describe_model(card)["sha256"] == card["sha256"] and describe_model(card)["protocol"] == "patient-wise"
    # A fields cross-validation's card has no split: its protocol and images are its metrics'.
    cv = dict(card, training={}, metrics={"protocol": "patient-wise 5-fold cross-validation, pooled out-of-fold",
                                          "images": 757})
    assert describe_model(cv)["protocol"].startswith("patient-wise 5-fold") and describe_model(cv)["images"] == 757


def test_one_folder_format_for_every_kind(tmp_path, folder):
    from core.gan.model import GanConfig, build_generator
    from core.model.folders import CLASSIFIER, GENERATOR

    config = GanConfig(image_size=32, width=16, latent_dim=8)
    generator = save_model_folder(build_generator(config), tmp_path / "generator",
                                  {"image_size": 32, "latent_dim": 8, "subtypes": list(SUBTYPES)}, kind=GENERATOR)
    model, card = load_model_folder(generator, kind=GENERATOR)
    assert card["kind"] == GENERATOR and card["sha256"] == file_sha256(generator / MODEL_FILE)
    assert model.output_shape == (None, None, None, 3) and "preprocessing" not in card
    assert read_card(folder)["kind"] == CLASSIFIER
    with pytest.raises(ModelFolderError, match="holds a GAN generator, not a classifier"):
        load_model_folder(generator)
    with pytest.raises(ModelFolderError, match="holds a classifier, not a GAN generator"):
        load_model_folder(folder, kind=GENERATOR)
    with pytest.raises(ValueError, match="'latent_dim'"):
        save_model_folder(build_generator(config), tmp_path / "bad", {"image_size": 32, "subtypes": []}, kind=GENERATOR)
    assert find_model_folders(tmp_path, kind=GENERATOR) == [generator]
    assert find_model_folders(tmp_path, kind=CLASSIFIER) == [folder]


def test_saved_file_holds_weights_not_optimizer_state(tmp_path):
    """A compiled, trained model must not drag Adam's moments into the file (3x the size)."""
    model, _ = build_classifier("small_cnn", weights=None, input_size=64)
    model.compile("adam", loss={name: "categorical_crossentropy" for name in model.output_names})
    images = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    targets = {name: np.eye(out.shape[-1])[np.zeros(4, int)] for name, out in model(images).items()}
    model.fit(images, targets, verbose=0)
    folder = save_model_folder(model, tmp_path / "m", {"backbone": "small_cnn", "hierarchy": "hierarchical"})
    weight_bytes = sum(np.asarray(w).nbytes for w in model.weights)
    assert (folder / "model.keras").stat().st_size < 1.2 * weight_bytes
    loaded, _ = load_model_folder(folder)
    assert isinstance(loaded.output, dict) and set(loaded.output) == set(model.output)


def test_a_model_that_cannot_be_explained_is_refused_with_a_message(tmp_path, tiny_model):
    wrong = save_model_folder(tiny_model, tmp_path / "wrong", _card(backbone="densenet121"))
    with pytest.raises(ModelFolderError, match="no layer 'conv5_block16_concat'.*densenet121"):
        load_model_folder(wrong)
    unknown = save_model_folder(tiny_model, tmp_path / "unknown", _card())
    update_card(unknown, backbone="resnet9000")  # the checksum still matches
    with pytest.raises(ModelFolderError, match="backbone is not usable.*resnet9000"):
        load_model_folder(unknown)


def test_write_json_atomic_leaves_a_complete_readable_file(tmp_path):
    from core.jsonfile import write_json_atomic

    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"accuracy": np.float32(0.5), "n": 3})
    assert json.loads(target.read_text()) == {"accuracy": 0.5, "n": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_write_json_atomic_writes_standard_json_without_nan_or_infinity(folder, tmp_path):
    """json.dump wrote NaN and Infinity, which are not JSON: browsers' JSON.parse, jq and PostgreSQL refused
    the card of a model with an undefined metric. They are written as null, at any depth, numpy's too."""
    from core.jsonfile import read_json, write_json_atomic

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))

    data = {"ece": float("nan"), "nested": {"list": [1.0, float("inf"), (float("-inf"), "x")]},
            "np": np.float32("nan"), "array": np.array([0.5, np.nan, np.inf]), "path": tmp_path, "n": np.int64(3)}
    target = write_json_atomic(tmp_path / "metrics.json", data)
    assert strict(target.read_text()) == {"ece": None, "nested": {"list": [1.0, None, [None, "x"]]}, "np": None,
                                          "array": [0.5, None, None], "path": str(tmp_path), "n": 3}
    update_card(folder, metrics={"stage1_ece": float("nan"), "stage1_accuracy": 0.75})  # no crash
    assert strict((folder / CARD_FILE).read_text())["metrics"] == {"stage1_ece": None, "stage1_accuracy": 0.75}
    assert read_json(folder / CARD_FILE)["metrics"]["stage1_ece"] is None
    load_model_folder(folder)  # the card stays valid

def _zip(path, entries: dict) -> str:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def test_a_refused_import_leaves_nothing_behind(folder, tmp_path):
    """A tampered model with its card unchanged is refused, and the folder the app would list (runs/)
    stays empty, so a retry with the right zip is not refused as 'already exists'."""
    model, card = (folder / MODEL_FILE).read_bytes(), (folder / CARD_FILE).read_bytes()
    tampered = bytearray(model)
    tampered[len(tampered) // 2] ^= 0xFF
    dest = tmp_path / "runs"
    with pytest.raises(ModelFolderError, match="^bad.zip: model.keras: model file does not match its card"):
        import_zip(_zip(tmp_path / "bad.zip", {"tiny/model.keras": bytes(tampered), "tiny/card.json": card}), dest)
    assert find_model_folders(dest) == [] and not any(dest.rglob(MODEL_FILE))
    imported = import_zip(_zip(tmp_path / "good.zip", {"tiny/model.keras": model, "tiny/card.json": card}), dest)
    assert imported == dest / "tiny" and find_model_folders(dest) == [imported]


def test_a_zip_of_a_hidden_folder_is_imported_under_a_visible_name(folder, tmp_path, capsys):
    """A zip whose folder is '.name' was unpacked into a hidden folder the model lists skip: imported,
    checksum verified, and never offered. It is imported as 'name', and the command says so."""
    from core.cli import main as cli

    model, card = (folder / MODEL_FILE).read_bytes(), (folder / CARD_FILE).read_bytes()
    hidden = _zip(tmp_path / "hidden.zip", {".tiny/model.keras": model, ".tiny/card.json": card})
    dest = tmp_path / "runs"
    assert cli(["import-model", str(hidden), "--dest", str(dest)]) == 0
    out, err = capsys.readouterr()
    assert f"imported {dest / 'tiny'} (checksum verified)" in out
    assert "hidden folder '.tiny'" in err and "imported as 'tiny'" in err
    assert find_model_folders(dest) == [dest / "tiny"] and not (dest / ".tiny").exists()


def test_a_zip_bomb_is_refused_before_anything_is_unpacked(folder, tmp_path, monkeypatch):
    """The declared sizes are checked first (zipfile never reads past them), so a few kB that would
    unpack to far more than any model folder never reach the disk."""
    import core.model.archive as archive

    monkeypatch.setattr(archive, "MAX_UNPACKED_BYTES", 1 << 20)
    bomb = _zip(tmp_path / "bomb.zip", {"tiny/model.keras": bytes(4 << 20), "tiny/card.json": b"{}"})
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(ModelFolderError, match="would unpack to"):
        import_zip(bomb, tmp_path / "runs")
    assert not any(p.is_file() for p in (tmp_path / "runs").rglob("*"))


def test_import_paths_that_cannot_be_used_are_user_errors(folder, tmp_path, capsys):
    """A missing zip, a folder given as the zip, a destination (or the folder it would create) that
    is a file: each a message and exit 2, not a traceback."""
    from core.cli import main as cli

    archive = export_zip(folder, tmp_path / "tiny.zip")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "tiny").write_text("x")
    for zip_path, dest, message in ((tmp_path / "missing.zip", tmp_path / "d", "not found"),
                                    (tmp_path, tmp_path / "d", "is a folder"),
                                    (archive, tmp_path / "a_file", "not a folder"),
                                    (archive, tmp_path / "taken", "already exists")):
        assert cli(["import-model", str(zip_path), "--dest", str(dest)]) == 2, (zip_path, dest)
        assert message in capsys.readouterr().err, (zip_path, dest)


def test_an_ensemble_neither_exports_nor_imports_as_one_zip(folder, tmp_path):
    """An ensemble's card names member folders outside it: export says so, and a zip holding an
    ensemble card (with any model.keras beside it) is refused with a message, not a KeyError."""
    from core.model.folders import save_ensemble

    ensemble = save_ensemble([folder, folder], tmp_path / "ens")
    with pytest.raises(ModelFolderError, match="export each member"):
        export_zip(ensemble, tmp_path / "ens.zip")
    crafted = _zip(tmp_path / "crafted.zip", {"ens/model.keras": (folder / MODEL_FILE).read_bytes(),
                                              "ens/card.json": (ensemble / CARD_FILE).read_bytes()})
    with pytest.raises(ModelFolderError, match="ensemble"):
        import_zip(crafted, tmp_path / "runs")
    assert find_model_folders(tmp_path / "runs") == []


def test_export_never_overwrites_and_a_folder_is_no_zip(folder, tmp_path, capsys):
    """An existing file (another model's model.keras, say) is kept, not silently replaced; a folder
    as the zip is a message, not an IsADirectoryError."""
    from core.cli import main as cli

    other = tmp_path / "other.keras"
    other.write_bytes(b"keep me")
    assert cli(["export-model", str(folder), str(other)]) == 2
    assert "already exists" in capsys.readouterr().err and other.read_bytes() == b"keep me"
    assert cli(["export-model", str(folder), str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.keras", "tiny"]  # no partial zip left


def test_an_unreadable_model_file_is_a_model_folder_error(folder, monkeypatch):
    """A model.keras the server may not read (chmod 000, a bad mount) is refused with the reason, not an
    OSError traceback on Diagnose and Slide (QA resil #5)."""
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("core.model.folders.file_sha256", denied)
    with pytest.raises(ModelFolderError, match=r"cannot read .*model.keras \(Permission denied\)"):
        load_model_folder(folder)


def test_an_unreadable_card_is_not_called_invalid_json(folder, monkeypatch):
    """A card.json that cannot be read says so, not "not valid JSON" (QA resil #16)."""
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("core.model.folders.read_json", denied)
    with pytest.raises(ModelFolderError, match=r"cannot read .*card.json \(Permission denied\)") as raised:
        read_card(folder)
    assert "not valid JSON" not in str(raised.value)


def test_the_progress_stream_and_the_cards_write_json_through_one_conversion(tmp_path):
    """core.training.progress writes its lines with core.jsonfile.plain: standard JSON (NaN -> null, arrays as
    lists), and, unlike a card, never refuses a value (a log line must not stop a training): text instead."""
    import json as json_module

    import numpy as np

    from core.jsonfile import write_json_atomic
    from core.training.progress import ProgressWriter

    class Odd:
        def __str__(self):
            return "odd value"

    writer = ProgressWriter(tmp_path / "progress.jsonl", echo_stdout=False)
    writer.emit("epoch_end", loss=np.float32("nan"), sizes=np.array([1, 2]), note=Odd(), path=tmp_path)
    line = (tmp_path / "progress.jsonl").read_text().strip()
    record = json_module.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert (record["loss"], record["sizes"], record["note"], record["path"]) == (None, [1, 2], "odd value", str(tmp_path))
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "card.json", {"note": Odd()})
