"""The Dataset page through AppTest: which server folders it scans (BREAKHIS_DATASET_DIRS), and what it
says about a scanned folder or a broken manifest. The views' functions are tested in test_app_dataset_views."""

import json
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from core import paths
from core.store import accounts
from core.store.audit import Store
from core.testing.apptest import sign_in
from tests.app_helpers import APP, APP_TIMEOUT, PASSWORD, app_like_the_server, make_model_folder, tables


@pytest.fixture(scope="module")
def environment(tmp_path_factory, samples_dir):
    """The app with one folder open for scanning: a flat copy of the bundled samples."""
    root = tmp_path_factory.mktemp("dataset-page")
    default = make_model_folder(root / "models" / "default", demo=True)
    opened = root / "open"
    (opened / "flat").mkdir(parents=True)
    (opened / "benign").mkdir()
    for image in samples_dir.rglob("*.png"):
        shutil.copy(image, opened / "flat" / image.name)
        if image.name.startswith("SOB_B_"):
            shutil.copy(image, opened / "benign" / image.name)
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, root / "models", default, root / "runs")
        patch.setenv("BREAKHIS_DATASET_DIRS", str(opened))
        yield {"open": opened, "root": root}


def shown(app: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("error", "warning", "info", "caption", "text", "markdown")
                     for e in getattr(app, kind))


def scan(app: AppTest, folder) -> AppTest:
    app.radio(key="dataset_source").set_value("Scan a dataset folder").run()
    return app.text_input(key="dataset_folder").set_value(str(folder)).run()


def test_a_pathologist_may_scan_only_the_open_folders_and_sees_no_server_path(environment, monkeypatch):
    monkeypatch.delenv("BREAKHIS_SINGLE_USER")
    accounts.add_account(Store.open(), "pat", PASSWORD, "pathologist")
    app = sign_in(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run(), "pat", PASSWORD)
    app.switch_page("pages/dataset.py").run()
    for outside in ("/", "/etc", str(environment["root"] / "models"), str(environment["open"] / ".." / "runs")):
        scan(app, outside)
        assert not app.exception and not app.metric, outside  # nothing scanned
        assert "may not scan that folder" in shown(app) and "Ask an administrator" in shown(app)
        assert "/etc" not in shown(app) and str(environment["root"]) not in shown(app)  # no server path
    scan(app, environment["open"] / "flat")
    assert not app.exception and app.metric[0].value == "22"


def test_an_administrator_is_told_which_folders_are_open_and_how_to_open_another(environment):
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()  # single-user mode: the local administrator
    app.switch_page("pages/dataset.py").run()
    scan(app, "/etc")
    assert not app.metric and str(environment["open"]) in shown(app) and "BREAKHIS_DATASET_DIRS" in shown(app)
    assert "adduser.conf" not in shown(app)


def test_a_folder_without_malignant_images_shows_no_ratio_but_what_is_absent(environment):
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/dataset.py").run()
    scan(app, environment["open"] / "benign")
    assert not app.exception
    assert [metric.value for metric in app.metric[3:5]] == ["n/a", "n/a"]  # was 2.5 : 1 and 1.0 : 1
    assert "no malignant image" in shown(app) and "4 of 8 subtypes (Ductal carcinoma" in shown(app)
    tfdata, fields = tables(app, "strategy")
    assert set(tfdata["class imbalance (max/min)"]) == set(fields["class imbalance (max/min)"]) == {
        "n/a: Malignant absent"}


def test_a_manifest_that_disagrees_with_its_names_is_an_error_and_the_page_stays_usable(environment, monkeypatch,
                                                                                       manifest_path):
    bad = environment["root"] / "bad_manifest.csv"
    bad.write_text(manifest_path.read_text().replace(",benign,adenosis,", ",malignant,adenosis,", 1))
    monkeypatch.setattr(paths, "MANIFEST", bad)
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/dataset.py").run()
    assert not app.exception  # was: ValueError, the page replaced by "This app has encountered an error"
    assert "line 2 disagrees with its file name" in shown(app) and "label 'malignant'" in shown(app)
    scan(app, environment["open"] / "flat")
    assert not app.exception and app.metric[0].value == "22"


def chart_titles(app: AppTest) -> list[str]:
    return [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in app.get("plotly_chart")]


def test_a_scanned_folder_says_what_and_how_many_next_to_its_figures_and_a_file_is_not_a_folder(environment):
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/dataset.py").run()
    assert all(title.endswith("<sup>BreakHis v1 (bundled manifest), 7,909 images</sup>")
               for title in chart_titles(app)[:4])
    flat = environment["open"] / "flat"
    scan(app, flat)
    assert f"Scanned folder {flat}: 22 BreakHis images of 16 cases" in shown(app)
    assert "Partial or different from the full BreakHis" in shown(app)
    titles = chart_titles(app)
    assert len(titles) == 6 and all(f"<sup>folder {flat}, 22 images</sup>" in title for title in titles[:4])
    assert all(f"<sup>folder {flat}, " in title and "training images</sup>" in title for title in titles[4:])
    assert titles[5].startswith("What the fields pipeline's subtype loss sees")  # its "none" is not "as is"
    assert "takes none or synthetic only" in shown(app) and "1/sqrt(their subtype's count)" in shown(app)
    assert "byte-identical" not in shown(app) and "names another class" not in shown(app)
    scan(app, flat / "SOB_B_A-14-22549AB-40-001.png")
    assert "is a file, not a folder" in shown(app) and "Folder not found" not in shown(app)


def test_images_filed_under_two_patients_or_in_another_labels_folder_are_said_beside_the_figures(environment):
    """The scan report listed them, in an expander that stays closed: nothing on the page said so."""
    mixed = environment["open"] / "mixed"
    (mixed / "benign").mkdir(parents=True)
    ductal, benign = (sorted((environment["open"] / "flat").glob(f"SOB_{c}-*-40-*.png"))[0] for c in ("M_DC", "B_A"))
    shutil.copy(ductal, mixed / "benign" / ductal.name)  # a malignant name in benign/
    shutil.copy(benign, mixed / benign.name)
    shutil.copy(benign, mixed / "SOB_B_A-15-99001-40-001.png")  # the same bytes as another patient's
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/dataset.py").run()
    scan(app, mixed)
    warnings = [w.value for w in app.warning]
    assert "1 image byte-identical to an image of another patient: counted once" in " ".join(warnings)
    assert "1 file in a folder that names another class, subtype, magnification or slide" in " ".join(warnings)


def test_missing_bundled_samples_are_said_and_the_manifest_figures_still_shown(environment, monkeypatch):
    """assets/samples gone (QA resil #8): the Full BreakHis manifest view was a DatasetError traceback."""
    monkeypatch.setattr(paths, "SAMPLES_DIR", environment["root"] / "no-samples")
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/dataset.py").run()
    assert not app.exception, app.exception
    assert "The bundled samples cannot be read" in shown(app) and "no-samples" in shown(app)
    assert app.metric[0].value == "7,909" and app.get("plotly_chart")


def test_a_folder_the_server_cannot_read_is_not_called_empty(environment, monkeypatch):
    """QA resil #16: an unreadable folder read "No BreakHis-named images found in that folder"."""
    import os

    walled = environment["open"] / "walled"
    walled.mkdir(exist_ok=True)
    real = os.walk

    def walk(top, *args, onerror=None, **kwargs):  # as for chmod 000 (the tests run as root)
        if os.fspath(top) == str(walled):  # index_folder's walk records it as unreadable
            if onerror:
                onerror(PermissionError(13, "Permission denied", str(top)))
            return
        yield from real(top, *args, onerror=onerror, **kwargs)

    monkeypatch.setattr(os, "walk", walk)
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/dataset.py").run()
    scan(app, walled)
    assert not app.exception, app.exception
    assert "1 folder(s) could not be read, so their images are not counted: the folder itself" in shown(app)
    assert "No BreakHis-named images found in the folders that could be read" in shown(app)


def test_the_full_set_figures_stand_next_to_the_data_the_active_model_learnt_from(tmp_path, monkeypatch):
    """The page opened on 'All 7,909 images / 70 patients' and showed 4,687 training images after balancing, and
    nowhere that the active (bundled) model learnt from 757 images of 46 patients."""
    from tests.app_helpers import app_on_bundled_models, texts

    app = app_on_bundled_models(monkeypatch, tmp_path / "runs", "default")
    app.switch_page("pages/dataset.py").run()
    assert not app.exception
    said = texts(app.info)
    assert "The active model (" in said and "weights learnt from 757 real images of 46 patients" in said
    assert "not only of those it learnt from" in said and "All 7,909 BreakHis v1 images" in texts(app.caption)
    assert "not what the active model learnt from" in texts(app.caption)


def test_the_balancing_tab_names_the_retrain_forms_pipeline_choices_not_command_line_flags(environment):
    """Its headings read "tf.data pipeline (`--pipeline tfdata`)": a flag a pathologist never types. They now name
    the Pipeline choice of the Retrain form; the flag is in the tooltip."""
    from core.app.retrain import PIPELINE_LABELS

    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/dataset.py").run()
    assert not app.exception
    headings = {e.value: e.help for e in app.markdown if e.value.startswith("**Pipeline ")}
    assert list(headings) == [f"**Pipeline {PIPELINE_LABELS[p]}**" for p in ("tfdata", "fields")]
    assert [("--pipeline tfdata" in h, "--pipeline fields" in h) for h in headings.values()] == [(True, False),
                                                                                                   (False, True)]
    assert not [e.value for e in app.markdown if "--pipeline" in e.value]
