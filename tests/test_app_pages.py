"""Every page through streamlit.testing.v1.AppTest, with tiny small_cnn models at input 64.

Models: a DEMO model as the default and an evaluated (non-demo) run, found through the
BREAKHIS_* environment variables the app documents.
"""

import json
import re

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.app_helpers import (
    APP,
    APP_TIMEOUT,
    app_like_the_server,
    bad_inputs,
    make_model_folder,
    open_retrain,
    tables,
    texts,
)

PAGES = {"pages/diagnose.py": "Diagnose", "pages/dataset.py": "Dataset",
         "pages/performance.py": "Model performance", "pages/retrain.py": "Retrain"}


@pytest.fixture(scope="module")
def environment(tmp_path_factory, synthetic_breakhis):
    """models/default (DEMO) plus runs/evaluated (a real core.evaluation.evaluate run on synthetic data)."""
    from core.data.breakhis import index_folder
    from core.data.splits import PATIENT, make_split
    from core.evaluation.evaluate import evaluate_run, without_curves
    from core.model.folders import update_card

    root = tmp_path_factory.mktemp("app")
    default = make_model_folder(root / "models" / "default", demo=True)
    run = root / "runs" / "evaluated"
    make_model_folder(run / "model", demo=False, name="evaluated-run")
    make_split(index_folder(synthetic_breakhis).images, PATIENT, seed=0).to_csv(run / "split.csv", index=False)
    results = evaluate_run(run, write=False)
    (run / "metrics.json").write_text(json.dumps(results))
    update_card(run / "model", metrics=without_curves(results))
    pd.DataFrame({"epoch": [0, 1], "loss": [2.0, 1.5], "val_loss": [2.1, 1.8]}).to_csv(run / "history.csv", index=False)
    make_model_folder(root / "runs" / "copy" / "model", demo=True)  # same name as the default
    stained = make_model_folder(root / "runs" / "stained" / "model", demo=False, name="stain-normalised")
    update_card(stained, stain_normalization=stain_normalizer(synthetic_breakhis).to_dict())
    generator = root / "models" / "gan-generator"  # not a classifier: must not be offered
    generator.mkdir()
    (generator / "card.json").write_text(json.dumps({"kind": "gan_generator", "name": "gan"}))
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, root / "models", default, root / "runs")
        yield {"default": default.resolve(), "evaluated": (run / "model").resolve(), "runs": root / "runs",
               "stained": stained.resolve()}


def stain_normalizer(data):
    from core.data.images import load_image
    from core.data.stain import get_normalizer

    pictures = [load_image(path, check_histology=False).rgb for path in sorted(data.rglob("*.png"))[:8]]
    return get_normalizer("macenko").fit(pictures, "8 training images")


@pytest.fixture
def app(environment) -> AppTest:
    return AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()


def test_navigation_reaches_every_page(app, environment):
    for page, title in PAGES.items():
        app.switch_page(page).run()
        assert not app.exception, f"{page}: {app.exception}"
        assert app.title[0].value == title
        assert app.selectbox(key="model_picker").value == str(environment["default"])  # sidebar on every page


def test_a_page_run_without_the_router_reruns_through_app_py(environment, monkeypatch):
    """Plain AppTest runs pages/ files alone after the first run (legacy pages-folder mode, as the
    server does on a deep link right after it starts); require_router must bring app.py back."""
    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime.pages_manager import PagesManager

    monkeypatch.setattr(app_test, "PagesManager", PagesManager)
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    app.switch_page("pages/dataset.py").run()
    assert not app.exception and app.title[0].value == "Dataset"
    assert app.selectbox(key="model_picker").value == str(environment["default"])  # app.py ran
    samples = app.switch_page("pages/diagnose.py").run().multiselect(key="samples")
    samples.set_value(samples.options[:1]).run()
    assert not app.exception
    assert "DEMO" in texts(app.sidebar.markdown) and len(app.image) == 4  # the image, two heat maps, their colour scale


def test_reruns_keep_the_shared_models_keras_state(app):
    """Streamlit would call keras.backend.clear_session() after every run (slow, and unsafe under
    a model other sessions are using); app.py turns that off."""
    from keras.src.backend.common import global_state

    global_state.set_global_attribute("app_test_probe", 42)
    app.run()
    app.switch_page("pages/dataset.py").run()
    assert global_state.get_global_attribute("app_test_probe") == 42


def test_sidebar_shows_the_demo_model_and_switches_models(app, environment):
    assert "DEMO" in texts(app.sidebar.markdown)
    picker = app.selectbox(key="model_picker")
    assert picker.options == ["DEMO · tiny-demo (small_cnn) · models/default",
                              "DEMO · tiny-demo (small_cnn) · runs/copy/model",
                              "evaluated-run (small_cnn) · runs/evaluated/model",
                              "stain-normalised (small_cnn) · runs/stained/model"]
    picker.set_value(str(environment["runs"] / "copy" / "model")).run()  # same name, other folder
    app.run()
    assert app.session_state["active_model"] == str((environment["runs"] / "copy" / "model").resolve())
    app.selectbox(key="model_picker").set_value(str(environment["evaluated"])).run()
    assert "DEMO" not in texts(app.sidebar.markdown)
    assert "evaluated-run" in texts(app.sidebar.markdown)
    split = [m.value for m in app.sidebar.markdown if "Split:" in m.value]
    assert split and re.search(r"Split: patient-wise, \d+ test images", split[0]), split  # says what it counts
    app.switch_page("pages/performance.py").run()  # the choice survives a page switch
    assert "evaluated-run" in texts(app.markdown)


def test_choosing_a_model_folder_with_a_damaged_card_is_refused_in_the_sidebar(app, environment):
    """The choice's callback reads the card for the audit row: a damaged one is a message, not an exception."""
    from core.store.audit import Store

    broken = environment["runs"] / "crashed-run" / "model"
    broken.mkdir(parents=True)
    (broken / "card.json").write_text('{"name": "half-written')  # cut short by a crash
    try:
        app.run()
        assert any("crashed-run/model (unusable" in option for option in app.selectbox(key="model_picker").options)
        app.selectbox(key="model_picker").set_value(str(broken.resolve())).run()
        assert not app.exception
        assert "This model folder cannot be used" in texts(app.sidebar.error)
        assert "not valid JSON" in texts(app.sidebar.error) and "active model was not changed" in texts(app.sidebar.error)
        assert app.session_state["active_model"] == str(environment["default"])
        assert app.selectbox(key="model_picker").value == str(environment["default"])
        assert not [e for e in Store.open().events(kinds="model_activated") if "crashed-run" in (e["subject"] or "")]
    finally:
        (broken / "card.json").unlink()
        broken.rmdir()
        broken.parent.rmdir()


def test_a_stain_normalised_model_says_so_and_shows_what_it_saw(app, environment):
    app.selectbox(key="model_picker").set_value(str(environment["stained"])).run()
    samples = app.multiselect(key="samples")
    samples.set_value([next(o for o in samples.options if "SOB_M_DC-14-2523" in o)]).run()
    assert not app.exception
    assert "Stain normalisation used: macenko to 8 training images" in texts(app.caption)
    original = app.image[0]
    assert [c for c in original.captions] == ["Image"]
    app.toggle(key="stain_0").set_value(True).run()
    assert app.image[0].captions[0].startswith("After stain normalisation")
    assert app.image[0].proto.imgs[0].url != original.proto.imgs[0].url  # another picture
    assert app.image[1].captions[0].startswith("Stage 1 Grad-CAM")


def test_diagnosing_a_bundled_sample(app):
    samples = app.multiselect(key="samples")
    sample = next(option for option in samples.options if "SOB_M_DC-14-2523" in option)
    samples.set_value([sample]).run()
    assert not app.exception
    assert "DEMO model" in texts(app.error)
    [stage1], [stage2] = tables(app, "class"), tables(app, "subtype")
    assert set(stage1["class"]) == {"Benign", "Malignant"} and len(stage2) == 4
    assert stage1["probability"].sum() == pytest.approx(1.0, abs=1e-4)
    assert stage2["probability"].sum() == pytest.approx(1.0, abs=1e-4)
    captions = [caption for image in app.image for caption in image.captions]
    assert captions[0] == "Image"
    assert captions[1].startswith("Stage 1 Grad-CAM: ") and captions[2].startswith("Stage 2 Grad-CAM: ")
    assert "Stage 1: refer for review" in texts(app.error) and "demo model: not validated" in texts(app.error)  # demo: always flagged
    assert "magnification 40X (file name)" in texts(app.markdown)

    app.toggle(key="other_0").set_value(True).run()
    [other] = tables(app, "other subtype")
    assert other["probability"].sum() == pytest.approx(1.0, abs=1e-4)
    assert not set(other["other subtype"]) & set(stage2["subtype"])
    app.selectbox(key="method").set_value("gradcam++").run()
    captions = [caption for image in app.image for caption in image.captions]
    assert captions[1].startswith("Stage 1 Grad-CAM++: ") and captions[2].startswith("Stage 2 Grad-CAM++: ")

    app.button(key="prepare_report").click().run()
    assert not app.exception
    assert app.download_button(key="download_report").label == "Report (PDF)"
    assert "Stain normalisation used" not in texts(app.caption)  # this model has none
    assert app.download_button(key="download_csv").label == "Results (CSV)"
    app.slider(key="opacity").set_value(0.8).run()  # the prepared report no longer matches the page
    assert "download_report" not in [b.key for b in app.get("download_button")]
    assert "prepare the report again" in texts(app.caption)
    app.slider(key="opacity").set_value(0.45).run()
    assert app.download_button(key="download_report").label == "Report (PDF)"


def test_the_referral_caption_states_the_thresholds_in_use(app):
    """With the user's own threshold on, the caption named the model's thresholds, not the one applied."""
    assert "Referral: stage 1 below p(class) 0.70, subtype below p(subtype | class) 0.70 (default" in texts(app.caption)
    app.toggle(key="own_threshold").set_value(True).run()
    app.slider(key="threshold").set_value(0.9).run()
    assert "Referral: stage 1 below p(class) 0.90, subtype below p(subtype | class) 0.90 (set by the user)." in \
        texts(app.caption)


def test_the_case_call_of_a_model_without_a_validated_case_threshold_does_not_claim_one(app):
    """The demo model (like an ensemble built from members) has no thresholds.case_malignant: 0.5 is a default."""
    samples = app.multiselect(key="samples")
    samples.set_value([option for option in samples.options if "SOB_M_PC-14-9146" in option]).run()
    assert not app.exception
    assert "called malignant from 0.50 (the default: no evaluation chose one for this model)" in texts(app.caption)
    assert "chose on validation patients" not in texts(app.caption)


def test_uploads_with_every_bad_input_get_messages_and_the_app_keeps_serving(app, samples_dir):
    real = next(samples_dir.rglob("SOB_B_F-14-9133-40-001.png"))
    files = [(name, data, "application/octet-stream") for name, (data, _) in bad_inputs().items()]
    files.append((real.name, real.read_bytes(), "image/png"))
    app.file_uploader(key="uploads").set_value(files).run()
    assert not app.exception
    errors, warnings = texts(app.error), texts(app.warning)
    for name, (_, expected) in bad_inputs().items():
        if expected == "error":
            assert f"'{name}'" in errors, name
    assert "text file" in errors and "decompression bomb" in errors and "truncated" in errors
    assert "empty (0 bytes)" in errors and "1x1 pixels" in errors
    assert "holiday_photo.png: not analysed: not H&E tissue" in warnings
    [table] = tables(app, "file")
    assert len(table) == len(files)
    assert table.set_index("file").loc["rgba.png", "notes"].startswith("RGBA image")
    assert (table["error"] != "").sum() == 5
    assert set(table.loc[table["call"] == "not analysed: not H&E tissue", "file"]) == {
        "deep16.png", "gray.png", "holiday_photo.png"}
    assert tables(app, "images")[0]["images"].sum() == 1  # the readable H&E ones with a case id only
    assert "4 image(s) without a BreakHis case id in their names" in texts(app.caption)  # no case call for them
    app.file_uploader(key="uploads").set_value(None).run()  # and it still serves afterwards
    assert "Upload one or more images" in texts(app.info)


def test_an_image_given_twice_is_one_image_of_its_case_with_its_own_audit_id(app, samples_dir):
    """Uploaded twice and picked as a sample too: one result, one audit row, counted once in its case."""
    one, other = (next(samples_dir.rglob(name)) for name in ("SOB_B_F-14-25197-40-023.png",
                                                             "SOB_B_F-14-25197-100-001.png"))
    app.file_uploader(key="uploads").set_value([(p.name, p.read_bytes(), "image/png") for p in (one, other, one)]).run()
    samples = app.multiselect(key="samples")
    samples.set_value([option for option in samples.options if one.name in option]).run()
    assert not app.exception
    [table] = tables(app, "file")
    assert list(table["file"]) == [one.name, other.name, one.name]  # the repeat named once (CSV and PDF too)
    assert table["audit id"][:2].nunique() == 2 and list(table["call"][2:]) == ["given more than once"]
    [cases] = tables(app, "images")
    assert list(cases["images"]) == [2]
    assert f"Given more than once, analysed once: {one.name}." in texts(app.info)


def test_uploads_survive_a_visit_to_another_page_until_forgotten(app, samples_dir):
    real = next(samples_dir.rglob("SOB_B_F-14-9133-40-001.png"))
    app.file_uploader(key="uploads").set_value([(real.name, real.read_bytes(), "image/png")]).run()
    assert real.name in texts(app.markdown)
    app.switch_page("pages/dataset.py").run()
    app.switch_page("pages/diagnose.py").run()
    assert not app.exception
    assert real.name in texts(app.markdown) and real.name in texts(app.caption)  # diagnosed again
    app.slider(key="opacity").set_value(0.6).run()  # an ordinary rerun keeps them too
    assert real.name in texts(app.markdown)
    app.button(key="forget_uploads").click().run()
    assert real.name not in texts(app.markdown)


def test_dataset_page_shows_balance_views(app, synthetic_breakhis, monkeypatch):
    monkeypatch.setenv("BREAKHIS_DATASET_DIRS", str(synthetic_breakhis))  # the folders this deployment opens
    app.switch_page("pages/dataset.py").run()
    assert not app.exception
    assert app.metric[0].value == "7,909"
    assert app.metric[3].value == f"{3451 / 444:.1f} : 1"
    assert len(app.get("plotly_chart")) == 6  # four views + the strategy comparison of each pipeline
    strategies, fields = tables(app, "strategy")
    assert list(strategies["strategy"]) == ["As is", "Class weights", "Oversampling", "Undersampling"]
    assert list(fields["strategy"]) == ["Fields: none"]
    assert len(app.image) == 8  # thumbnails: one row per subtype from the bundled samples

    app.radio(key="dataset_source").set_value("Scan a dataset folder").run()
    app.text_input(key="dataset_folder").set_value(str(synthetic_breakhis / "no-such")).run()
    assert "Folder not found" in texts(app.error)
    app.text_input(key="dataset_folder").set_value(str(synthetic_breakhis)).run()
    assert not app.exception
    assert app.metric[0].value == "96"


def test_performance_of_a_demo_model_says_it_has_no_valid_accuracy(app):
    app.switch_page("pages/performance.py").run()
    assert "NO valid accuracy" in texts(app.error)
    assert not tables(app, "what")  # no metrics table
    [comparison] = tables(app, "protocol kind")
    assert set(comparison["protocol kind"]) == {"image-level", "patient-wise"}
    assert "this app (active model)" not in set(comparison["source"])


def test_performance_of_an_evaluated_model_shows_metrics_with_their_protocol(app, environment):
    app.selectbox(key="model_picker").set_value(str(environment["evaluated"])).run()
    app.switch_page("pages/performance.py").run()
    assert not app.exception
    [table] = tables(app, "what")
    assert table["what"].iloc[0] == "Stage 1: benign vs malignant"
    assert set(table["protocol"]) == {"patient-wise"} and (table["images"] > 0).all()
    assert "patient-wise protocol" in texts(app.caption)
    charts = {chart.proto.id for chart in app.get("plotly_chart")}
    # 3 confusion matrices (stage 1, 8 subtypes, patient stage 1), 2 ROC panels, and the loss panel
    # of the training curves (the history has losses only, so no metrics panel).
    assert len(charts) == 6
    [comparison] = tables(app, "protocol kind")
    ours = comparison[comparison["source"] == "this app (active model)"]
    assert len(ours) >= 4 and set(ours["protocol kind"]) == {"patient-wise"}


def test_damaged_run_files_get_a_warning_each_and_the_card_metrics(app, environment):
    run = environment["evaluated"].parent
    metrics, history, cv = run / "metrics.json", run / "history.csv", run / "cv.json"
    good, good_history = metrics.read_text(), history.read_text()
    try:
        metrics.write_text(good[: len(good) // 2])  # e.g. a half-written file
        history.write_text("")  # an empty table
        cv.write_text("[]")  # JSON, but not a cross-validation summary
        app.selectbox(key="model_picker").set_value(str(environment["evaluated"])).run()
        app.switch_page("pages/performance.py").run()
        assert not app.exception
        warnings = texts(app.warning)
        for name in ("metrics.json", "history.csv", "cv.json"):
            assert f"{name} could not be read" in warnings, warnings
        assert "showing the metrics stored in the model card instead" in warnings
        [table] = tables(app, "what")  # still shown, from the model card
        assert table["what"].iloc[0] == "Stage 1: benign vs malignant"
        assert not any(s.value.startswith("Training curves") for s in app.subheader)
    finally:
        metrics.write_text(good)
        history.write_text(good_history)
        cv.unlink()


def test_retrain_page_says_where_training_runs(app):
    import tensorflow as tf

    open_retrain(app)
    assert not app.exception
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:  # what the page says must be what TensorFlow sees on this machine
        assert f"sees {len(gpus)} GPU" in texts(app.success)
    else:
        assert "tensorflow" in texts(app.info) and "sees no GPU" in texts(app.info) and not texts(app.success)
        assert "Training runs on the CPU" in texts(app.info)
        # ... and the form starts from what a CPU can train (the bundled model's recipe), not a
        # DenseNet121 fine-tune at 224 px under a warning
        assert app.selectbox(key="train_backbone").value == "resnet18_half"
        assert app.radio(key="train_pipeline").value == "fields"
        assert app.number_input(key="train_input_size").value == 128
    assert app.button(key="FormSubmitter:retrain-Start training").label == "Start training"


def test_the_review_queue_shows_a_slide_call_and_its_reviews(app):
    """A slide row keeps its call under "label" (no subtype, no confidence); a review of it recorded
    before the fix has label None and must still render."""
    from core.store import accounts, reviews
    from core.store.audit import Store

    store = Store.open()
    accounts.add_account(store, "bob", None, "pathologist")  # the store takes reviews by accounts only
    slide = store.record("slide", "ann", "slide-07.svs", image_sha256="cd" * 32, model="m",
                         details={"label": "malignant", "statement": "Malignant: driven by region 1.", "members": [],
                                  "demo": False, "settings": {}})
    app.switch_page("pages/review.py").run()
    assert not app.exception
    [header] = [line for line in texts(app.markdown).splitlines() if "slide-07.svs" in line]
    assert "slide call: Malignant" in header and "confidence" not in header
    assert "Malignant: driven by region 1." in texts(app.caption)
    store.record("review", "bob", "slide-07.svs", image_sha256="cd" * 32, model="m", refers_to=slide,
                 details={"agree": True, "label": None, "subtype": None, "model_call": [None, None], "comment": "old"})
    app.toggle(key="include_reviewed").set_value(True).run()
    assert not app.exception and "agreed no class recorded, subtype not assessed — old" in texts(app.caption)
    reviews.review(store, "bob", slide, comment="agree")
    app.run()
    assert not app.exception and "Reviewed by bob: agreed Malignant, subtype not assessed — agree" in texts(app.caption)
    store.close()


def test_a_correction_without_a_corrected_class_or_subtype_is_refused_in_words(app):
    """'correct' with Class and Subtype both '(unchanged)' was saved as an agreement with the model's labels."""
    from core.store.audit import Store

    store = Store.open()
    row = store.record("diagnosis", "ann", "SOB_M_DC-14-22549-200-001.png",
                       details={"call": "malignant", "subtype": "ductal_carcinoma", "confidence": 0.9, "refer": False,
                                "case": "14-22549"})
    app.switch_page("pages/review.py").run()
    app.radio(key=f"verdict_queue_{row}").set_value("correct")
    app.text_input(key=f"comment_queue_{row}").input("this is NOT ductal carcinoma")
    app.button(key=f"FormSubmitter:review_queue_{row}-Save review").click().run()
    assert not app.exception
    assert "choose the corrected class or subtype" in texts(app.error) and "Review saved" not in texts(app.success)
    assert not store.events(kinds="review", refers_to_any=[row])
    app.selectbox(key=f"subtype_queue_{row}").set_value("lobular_carcinoma")
    app.checkbox(key=f"original_queue_{row}").check()  # images are not kept: the review is of the original
    app.button(key=f"FormSubmitter:review_queue_{row}-Save review").click().run()
    [saved] = store.events(kinds="review", refers_to_any=[row])
    assert saved["details"]["agree"] is False and saved["details"]["subtype"] == "lobular_carcinoma"
    assert saved["details"]["comment"] == "this is NOT ductal carcinoma"  # what the user typed was kept
    store.close()
