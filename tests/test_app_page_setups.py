"""Pages under model setups of their own (each test writes its own model folders, not tests/test_app_pages.py's
shared environment): the model list, the Compare page, an ensemble's performance, the TTA switch, large uploads
and the plain-word column headings."""

import json

import pytest
from streamlit.testing.v1 import AppTest

from tests.app_helpers import APP, APP_TIMEOUT, app_like_the_server, app_with_models, make_model_folder, tables, texts


def test_the_model_list_leaves_out_a_fields_cross_validations_fold_models(tmp_path, monkeypatch):
    """RUN/fold-k/model of a fields CV is uncalibrated and has no figures: the run's final model stands
    for it in the selector. A tf.data CV's folds are whole evaluated runs and stay."""
    from pathlib import Path

    from core.app import registry

    def card(folder, pipeline):
        folder.mkdir(parents=True)
        (folder / "card.json").write_text(json.dumps({"name": folder.parent.name, "training": {"pipeline": pipeline}}))

    runs = tmp_path / "runs"
    for run, pipeline in (("cv", "fields"), ("tf", "tfdata")):
        (runs / run).mkdir(parents=True)
        (runs / run / "cv.json").write_text("{}")
        card(runs / run / "fold-0" / "model", pipeline)
    card(runs / "cv" / "fold-1" / "member-1" / "model", "fields")
    card(runs / "cv" / "model", "fields")
    card(runs / "single" / "fold-0" / "model", "fields")  # a folder named so, outside a CV: listed
    monkeypatch.setenv("BREAKHIS_MODEL_DIRS", str(runs))
    monkeypatch.setenv("BREAKHIS_DEFAULT_MODEL", str(tmp_path / "none"))
    listed = {str(Path(f).relative_to(runs.resolve())) for f in registry.available_models()}
    assert listed == {"cv/model", "tf/fold-0/model", "single/fold-0/model"}


def test_the_compare_page_never_sets_runs_of_other_test_images_side_by_side(tmp_path, monkeypatch):
    """The two bundled classifiers were measured on different images (a 5-fold CV's out-of-fold images,
    one patient-wise test split): two groups of one model each, with the warning, and no exception."""
    from tests.app_helpers import app_on_bundled_models

    app = app_on_bundled_models(monkeypatch, tmp_path / "runs", "default")
    app.switch_page("pages/compare.py").run()
    assert not app.exception, app.exception
    assert "not comparable" in " ".join(w.value for w in app.warning)
    groups = [s.value for s in app.subheader if s.value.startswith("Group ")]
    assert len(groups) == 2 and all(": 1 model on " in g for g in groups), groups
    assert any("never saw its patient during training" in g for g in groups) and any(g.endswith(" test images") for g in groups)
    shown = tables(app, "metric")
    assert len(shown) == 3  # and their cross-validations on the same folds (tests/test_compare.py)
    assert shown[2].columns[2].endswith(": mean +- std over folds")
    # the Model performance page's metric names, not the raw keys
    assert {"stage-1 ROC AUC", "subtype macro-F1 (8 classes)"} <= set(shown[0]["metric"]) and \
        "stage1 auc" not in set(shown[0]["metric"])


def test_the_compare_page_tells_apart_two_models_of_the_same_name(tmp_path, monkeypatch):
    """A copied model folder has its original's card name: one column and one button each, no
    StreamlitDuplicateElementKey."""
    import shutil

    from tests.app_helpers import REPO

    for name in ("default", "copy"):
        shutil.copytree(REPO / "models" / "default", tmp_path / "models" / name)
    app_like_the_server(monkeypatch, tmp_path / "models", REPO / "models" / "small-cnn", tmp_path / "runs")
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/compare.py").run()
    app.multiselect(key="compare_models").set_value([str(tmp_path / "models" / n) for n in ("default", "copy")]).run()
    assert not app.exception, app.exception
    [table, folds] = tables(app, "metric")  # test set, CV
    name = json.loads((REPO / "models" / "default" / "card.json").read_text())["name"]
    assert [c for c in table.columns if c.startswith(name)] == [f"{name} (models/{n})" for n in ("default", "copy")]
    assert len([b for b in app.button if b.label.startswith(f"Make {name}")]) == 2
    assert [c for c in folds.columns if c.endswith("over folds")] == [f"{name} (models/{n}): mean +- std over folds"
                                                                      for n in ("default", "copy")]


def test_the_performance_page_of_an_ensemble_without_a_common_test_set_says_why_it_has_no_figures(tmp_path, monkeypatch):
    """It told the user to run `python -m core evaluate RUN`, which refuses a folder without split.csv."""
    from core.training.ensemble_run import ensemble_run

    members = [make_model_folder(tmp_path / "members" / name, demo=False, name=name) for name in ("a", "b")]
    ensemble = ensemble_run(members, tmp_path / "models" / "a-plus-b")
    app = app_with_models(monkeypatch, tmp_path / "models", ensemble, tmp_path / "runs")
    app.switch_page("pages/performance.py").run()
    assert not app.exception, app.exception
    assert "This ensemble has no evaluation of its own: members held out different cases" in texts(app.warning)
    assert "python -m core evaluate" not in texts(app.warning)


@pytest.mark.parametrize("model, declared", [("default", True), ("small-cnn", False)])
def test_the_tta_switch_says_when_a_models_views_always_hold_the_symmetries(tmp_path, monkeypatch, model, declared):
    """The bundled field model always predicts over its crops in the 8 symmetries: its switch is shown on
    and locked (an off switch that changed nothing misled); a whole-field model's is the user's."""
    from tests.app_helpers import REPO

    app_like_the_server(monkeypatch, REPO / "models", REPO / "models" / model, tmp_path / "runs")
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/diagnose.py").run()
    assert not app.exception, app.exception
    [switch] = [t for t in app.toggle if "Test-time augmentation" in t.label]
    assert (switch.key, switch.value, switch.proto.disabled) == (("tta_declared", True, True) if declared
                                                                 else ("tta", False, False))


def test_a_large_upload_of_unknown_scale_is_diagnosed_whole_and_says_how_to_tile_it(tmp_path, monkeypatch):
    import io

    import numpy as np
    from PIL import Image

    from tests.app_helpers import REPO

    app_like_the_server(monkeypatch, REPO / "models", REPO / "models" / "default", tmp_path / "runs")
    field = np.asarray(Image.open(sorted((REPO / "assets" / "samples").rglob("*-200-*.png"))[0]).convert("RGB"))
    buffer = io.BytesIO()
    region = np.concatenate([np.concatenate([field, field[:, ::-1]], axis=1),
                             np.concatenate([field[::-1], field[::-1, ::-1]], axis=1)])  # 2 x 2 fields
    Image.fromarray(region).save(buffer, "PNG")
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/diagnose.py").run()
    app.file_uploader(key="uploads").set_value([("region.png", buffer.getvalue(), "image/png")]).run()
    assert not app.exception, app.exception
    infos = texts(app.info)
    assert "region.png is 1400x920 px and states no magnification" in infos and "choose its magnification" in infos


def test_an_upload_is_tiled_by_its_upright_size(tmp_path, monkeypatch):
    """Diagnose decided tiling from the size as stored: a camera JPEG stored turned a quarter (EXIF
    orientation 6) of a region 1300x700 px at 200X was diagnosed whole, its upright copy tiled."""
    import io

    import numpy as np
    from PIL import Image

    from tests.app_helpers import REPO

    app_like_the_server(monkeypatch, REPO / "models", REPO / "models" / "default", tmp_path / "runs")
    field = np.asarray(Image.open(sorted((REPO / "assets" / "samples").rglob("*-200-*.png"))[0]).convert("RGB"))
    upright = Image.fromarray(np.tile(field, (2, 2, 1))[:700, :1300])
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=95, exif=exif)
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/diagnose.py").run()
    app.selectbox(key="magnification").set_value("200X").run()
    app.file_uploader(key="uploads").set_value([("camera.jpg", buffer.getvalue(), "image/jpeg"),
                                                ("camera copy.jpg", buffer.getvalue(), "image/jpeg")]).run()
    assert not app.exception, app.exception
    infos = texts(app.info)
    assert "camera.jpg (1300x700 px) is much larger than the field the model was trained on" in infos
    assert "Given more than once, analysed once: camera copy.jpg (as camera.jpg)." in infos
    from core.store.audit import Store

    [row] = Store.open().events(kinds="slide")
    # The case table (and so the CSV and the PDF, made from it) lists both uploads: they had no row at all.
    [table] = tables(app, "call")
    assert list(table["call"]) == ["analysed as tiles", "given more than once"]
    assert table["reasons"].str.contains("call over the tiles").iloc[0] and str(table["audit id"].iloc[0]) == str(row["id"])
    assert "Notes: rotated/flipped upright using EXIF orientation 6" in texts(app.caption)  # as a field's card says
    app.slider(key="opacity").set_value(0.8).run()  # drawn differently, the same run: no second audit row
    assert [e["id"] for e in Store.open().events(kinds="slide")] == [row["id"]]
    assert f"Audit #{row['id']}" in " ".join(c.value for c in app.caption)


def test_a_large_scan_mostly_of_glass_is_tiled_not_refused(tmp_path, monkeypatch):
    """One field of tissue on a 4000x4000 scan at 200X (2 % tissue): the whole-image H&E check refused
    it as blank background although it is tiled, and the tiles have their own tissue check (the Slide
    page analysed it). A small image mostly of glass is still refused."""
    import io

    import numpy as np
    from PIL import Image

    from core.app import slides
    from core.app.service import read_item
    from tests.app_helpers import REPO

    app_like_the_server(monkeypatch, REPO / "models", REPO / "models" / "default", tmp_path / "runs")
    field = np.asarray(Image.open(sorted((REPO / "assets" / "samples").rglob("*-200-*.png"))[0]).convert("RGB"))
    scan = np.full((4000, 4000, 3), 242, np.uint8)
    scan[1000:1460, 1000:1700] = field
    buffer = io.BytesIO()
    Image.fromarray(scan).save(buffer, "PNG")
    assert read_item("biopsy_scan.png", buffer.getvalue()).not_histology.startswith(slides.MOSTLY_GLASS)
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/diagnose.py").run()
    app.selectbox(key="magnification").set_value("200X").run()
    app.file_uploader(key="uploads").set_value([("biopsy_scan.png", buffer.getvalue(), "image/png")]).run()
    assert not app.exception, app.exception
    assert "is much larger than the field the model was trained on" in texts(app.info)
    assert "Call over the tiles" in " ".join(str(m.value) for m in app.markdown)
    assert "biopsy_scan.png" not in texts(app.warning)
    small, glass = io.BytesIO(), np.full((600, 600, 3), 242, np.uint8)
    glass[:60, :100] = field[:60, :100]
    Image.fromarray(glass).save(small, "PNG")  # less than a field at 200X: diagnosed whole, so refused
    app.file_uploader(key="uploads").set_value([("glass.png", small.getvalue(), "image/png")]).run()
    assert not app.exception and "blank background" in " ".join(str(w.value) for w in app.warning)


def test_performance_and_compare_head_technical_columns_in_plain_words_and_define_terms_in_tooltips(tmp_path,
                                                                                                     monkeypatch):
    """QA: "macro F1", "ECE before", "Brier after", "pooled out-of-fold", "p(subtype | class)" and "case x tumour-type
    rows" were shown without a word of what they are. Columns are headed in plain words (the term in brackets, defined
    in the tooltip); captions that use a term define it in their tooltip; each keeps its protocol and data size."""
    from tests.app_helpers import app_on_bundled_models

    app = app_on_bundled_models(monkeypatch, tmp_path / "runs", "default")
    app.switch_page("pages/performance.py").run()
    assert not app.exception
    headers = {}
    for frame in app.dataframe:
        headers.update(json.loads(frame.proto.columns or "{}"))
    assert headers["ECE before"]["label"] == "calibration error before (ECE)" and "calibration" in headers["ECE before"]["help"]
    assert headers["Brier after"]["label"] == "probability error after (Brier)"
    assert headers["macro F1"]["label"] == "F1, classes weighted equally (macro F1)"
    assert "every one counting equally" in headers["macro F1"]["help"]
    helped = {c.value: c.help for c in app.caption}
    referral = next(text for text in helped if "p(subtype | class)" in text)
    assert "its probability for the subtype, given that class" in helped[referral]
    calibration = next(text for text in helped if text.startswith("temperature scaling"))
    assert "expected calibration error" in helped[calibration] and "temperature" in helped[calibration]
    protocol = next(text for text in helped if text.startswith("Measured on patients each model never saw"))
    assert "757 images from 46 cases" in protocol and "every patient is held out once" in helped[protocol]

    app.switch_page("pages/compare.py").run()
    assert not app.exception
    badges = {c.value: c.help for c in app.caption if "patient-and-tumour-type groups" in c.value}
    assert badges and all("counts each patient once per tumour type" in text for text in badges.values())
    folds = next(json.loads(f.proto.columns) for f in app.dataframe if any(c.endswith("pooled out-of-fold")
                                                                            for c in f.value.columns))
    assert all("every patient is held out once" in config["help"] for name, config in folds.items()
               if name.endswith("pooled out-of-fold"))
