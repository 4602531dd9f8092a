"""Retrain page through AppTest: a real `python -m core train` job on the synthetic data set is
launched, followed, cancelled, failed and completed; only a completed job can become the active model."""

import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.app import jobs
from tests.app_helpers import APP, APP_TIMEOUT, PROBING, open_retrain
from tests.retrain_page import START, launch, poll, retrain_app, retrain_environment, texts


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    yield from retrain_environment(tmp_path_factory)


@pytest.fixture
def app(environment):
    yield from retrain_app(environment)


def test_launch_follow_and_cancel(app, environment, synthetic_breakhis):
    launch(app, synthetic_breakhis, "cancel-me", epochs=200)
    job = jobs.read_job(environment["runs"])
    assert job is not None and jobs.is_alive(job)
    assert job.command[1:4] == ["-m", "core", "train"] and "--input-size" in job.command
    assert job.run_dir == str(environment["runs"] / "cancel-me")
    assert app.get("progress"), "a live progress bar"

    second_tab = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
    second_tab.switch_page("pages/retrain.py").run()
    assert second_tab.button(key="cancel_job").label == "Cancel training"  # the job lives on disk
    assert not any(button.key == START for button in second_tab.button)  # one job at a time

    poll(app, lambda: jobs.progress(job)["status"] == "running")
    app.button(key="cancel_job").click().run()
    poll(app, lambda: not jobs.is_alive(job), timeout=180)
    # the process may be gone a moment before the page's next run reads its last event: rerun until it does
    poll(app, lambda: "cancelled" in texts(app.error), timeout=60)
    assert texts(app.error).count("cancelled") == 1, texts(app.error)  # said once
    assert "The active model was not changed" in texts(app.error)
    assert not any(button.key == "adopt_model" for button in app.button)
    assert app.session_state["active_model"] == environment["default"]
    assert not (environment["runs"] / "cancel-me" / "model" / "model.keras").exists()
    app.button(key="clear_job").click().run()
    assert jobs.read_job(environment["runs"]) is None
    assert any(button.key == START for button in app.button)


def test_the_modes_balancing_and_stain_normalisation_offered_follow_the_pipeline(app):
    """The fields pipeline trains the whole network, balances subtypes itself and jitters the stains: the form
    offered a fast mode, strategies and stain normalisations it then refused at submit ("does not take --mode
    fast", "does not take --stain-norm")."""
    app.radio(key="train_pipeline").set_value("fields").run()
    stain = app.selectbox(key="train_stain_norm")
    assert stain.options == ["none"] and "jitters the stains instead" in stain.help
    balance = app.selectbox(key="train_balance")
    assert balance.options == ["none"] and "1/sqrt(their subtype's count)" in balance.help  # no GAN folder here
    assert app.radio(key="train_mode").options == ["Fine-tune (whole network)"]
    app.radio(key="train_pipeline").set_value("tfdata").run()
    assert app.selectbox(key="train_balance").options == ["none", "class_weights", "oversample", "undersample"]
    assert len(app.radio(key="train_mode").options) == 2
    assert app.selectbox(key="train_stain_norm").options == ["none", "macenko", "reinhard"]


def gan_folder(folder: Path, data: Path, seed: int) -> Path:
    """One GAN image and the provenance of a generator that learned from `data`'s patient-wise split `seed`."""
    from PIL import Image

    from core.data.breakhis import index_folder, synthetic_name
    from core.data.selection import SplitSpec, fingerprint
    from core.data.synthetic import record_provenance

    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / synthetic_name("adenosis", "gan", 0, 0))
    record_provenance(folder, {"generator": "gan", "sha256": "s", "data_source": str(data),
                               "fingerprint": fingerprint(index_folder(data).images),
                               "split": SplitSpec(seed=seed).to_dict()})
    return folder


def test_gan_images_the_job_would_refuse_are_refused_at_the_form(app, environment, synthetic_breakhis, monkeypatch):
    """Seed 1 with a seed-0 generator: the job was started, imported TensorFlow and failed with
    "... or pass --allow-gan-leak", an option the form does not have."""
    monkeypatch.setenv("BREAKHIS_SYNTHETIC_DIR", str(gan_folder(environment["root"] / "gan", synthetic_breakhis, 0)))
    app.run()
    app.selectbox(key="train_balance").set_value("synthetic")
    app.number_input(key="train_seed").set_value(1)
    launch(app, synthetic_breakhis, "leaky-gan", epochs=1)
    error = texts(app.error)
    assert "Cannot launch this run with balancing 'synthetic'" in error and "(seed 0, magnification all)" in error
    assert "Set Seed, Magnification and Split protocol to the split their generator learned from" in error
    assert "--allow-gan-leak" not in error and "--split-seed 1 " in error
    assert jobs.read_job(environment["runs"]) is None and not (environment["runs"] / "leaky-gan").exists()


def test_a_folder_without_breakhis_images_gets_a_hint_before_any_job_starts(app, environment):
    app.button(key=START).click().run()  # nothing typed
    assert "Enter the folder that holds the BreakHis images" in texts(app.error)
    assert "(empty)" not in texts(app.error)
    empty = environment["root"] / "no-breakhis-names"
    empty.mkdir()
    (empty / "holiday.png").write_bytes(b"not a slide")
    launch(app, empty, "never-starts", epochs=1)
    assert "holds no BreakHis images (1 other files)" in texts(app.error)
    assert jobs.read_job(environment["runs"]) is None and not (environment["runs"] / "never-starts").exists()


def test_a_run_name_that_would_hide_the_model_is_refused_at_the_form(app, environment, synthetic_breakhis):
    launch(app, synthetic_breakhis, ".best", epochs=1)
    assert "the run name '.best' starts with a dot" in texts(app.error)
    assert jobs.read_job(environment["runs"]) is None and not (environment["runs"] / ".best").exists()


def test_the_page_shows_each_backend_and_refuses_jax_with_tfdata(app, environment, synthetic_breakhis):
    shown = texts(app.info) + texts(app.success)
    assert "tensorflow" in shown and "jax" in shown  # both are installed here: each says what it sees
    assert app.selectbox(key="train_backend").options == ["tensorflow", "jax"]
    app.selectbox(key="train_backend").set_value("jax")
    app.radio(key="train_pipeline").set_value("tfdata")
    launch(app, synthetic_breakhis, "jax-tfdata", epochs=1)
    assert "TensorFlow only" in texts(app.error)
    assert "the tf.data pipeline" in texts(app.error) and "tfdata pipeline" not in texts(app.error)
    assert jobs.read_job(environment["runs"]) is None and not (environment["runs"] / "jax-tfdata").exists()


def test_the_reviewed_images_field_names_the_export_command_not_a_module_path(app):
    """Its tooltip read "(core.store.review_export.export_training_folder)"."""
    field = app.text_input(key="train_reviewed")
    assert "core reviews export" in field.help and "core.store" not in field.help
    assert field.label.startswith("Reviewed images to add to the training split")  # the refusal's words


def test_the_page_is_drawn_while_the_backends_are_probed(environment, monkeypatch):
    """The backends' probe (child processes, about 6 s on a fresh server) held the whole page behind a spinner
    ("Asking each Keras backend what it sees..."): it now runs in a thread of its own while the page says so in
    plain words, and the form follows its answer."""
    import streamlit as st

    from core.app import retrain

    answered = threading.Event()
    seen = {"tensorflow": {"backend": "tensorflow", "version": "9.9", "gpus": [], "devices": ["CPU:0"]}}
    monkeypatch.setattr(retrain, "backends_seen", lambda: answered.wait(120) and seen)
    st.cache_resource.clear()  # a fresh server: nothing probed yet
    try:
        app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()
        app.switch_page("pages/retrain.py").run(timeout=30)  # before: blocked until the probe answered
        assert not app.exception and app.title[0].value == "Retrain"
        assert PROBING in texts(app.info) and not any(button.key == START for button in app.button)
        answered.set()
        open_retrain(app)
        assert "tensorflow 9.9 sees no GPU" in texts(app.info) and PROBING not in texts(app.info)
        assert app.selectbox(key="train_backend").options == ["tensorflow"]
    finally:
        answered.set()
        st.cache_resource.clear()  # the next tests probe the real backends


def test_a_folder_of_breakhis_names_that_are_no_images_is_refused_at_the_form_saying_so(app, environment):
    """QA #8: the form checked names only and launched a job that failed with "No BreakHis images found"; it now
    says the files cannot be read, and starts nothing (a failed job: the empty validation split's test below)."""
    unreadable = environment["root"] / "unreadable-images"  # BreakHis names, but not images
    unreadable.mkdir()
    (unreadable / "SOB_B_A-14-22549AB-40-001.png").write_bytes(b"not a png")
    launch(app, unreadable, "fails", epochs=1)
    assert "1 file named as a BreakHis image could not be read as an image (e.g. SOB_B_A-14-22549AB-40-001.png)" \
        in texts(app.error)
    assert jobs.read_job(environment["runs"]) is None and not (environment["runs"] / "fails").exists()


def test_a_data_folder_of_one_class_is_refused_naming_the_class_and_never_offered(app, environment,
                                                                                 synthetic_breakhis):
    """QA retrain #4: 480 benign images trained to completion and offered "Make this the active model" with
    "stage-1 accuracy 1.00". The job now fails at its start, and the page says which class is missing."""
    import shutil

    benign = environment["root"] / "benign-only"
    shutil.copytree(synthetic_breakhis, benign)
    shutil.rmtree(next(benign.rglob("breast/malignant")))
    launch(app, benign, "one-class", epochs=1)
    poll(app, lambda: not jobs.is_alive(jobs.read_job(environment["runs"])), timeout=240)
    errors = texts(app.error)
    assert "Training failed" in errors and "The training split has no malignant images" in errors
    assert not any(button.key == "adopt_model" for button in app.button)
    assert not (environment["runs"] / "one-class" / "model").exists()
    app.button(key="clear_job").click().run()


def test_a_fields_job_whose_validation_split_would_be_empty_fails_at_its_start_saying_so(app, environment):
    """QA #3: the form's defaults (fields pipeline) on 16 patients, 2 per subtype, trained all the way and then
    failed with "ValueError: need at least one array to concatenate". The job now ends before any epoch, with the
    empty split, its counts and what to do."""
    from core.testing.synthetic import write_synthetic_breakhis

    small = write_synthetic_breakhis(environment["root"] / "two-per-subtype", images_per_case=2, cases_per_subtype=2)
    app.radio(key="train_pipeline").set_value("fields").run()
    app.text_input(key="train_data").set_value(str(small))
    app.number_input(key="train_epochs").set_value(1)
    app.text_input(key="train_name").set_value("no-validation")
    app.button(key=START).click().run()
    poll(app, lambda: not jobs.is_alive(jobs.read_job(environment["runs"])), timeout=240)
    errors = texts(app.error)
    assert "Training failed" in errors and "validation split would be empty" in errors, errors
    assert "Patient-wise cross-validation folds" in errors and "concatenate" not in errors
    assert not jobs.start_counts(jobs.read_job(environment["runs"]))  # refused before its start: nothing trained
    assert not (environment["runs"] / "no-validation" / "model").exists()
    assert not any(button.key == "adopt_model" for button in app.button)
    assert app.session_state["active_model"] == environment["default"]
    app.button(key="clear_job").click().run()


def test_a_completed_job_shows_its_evaluation_and_can_become_the_active_model(app, environment,
                                                                             synthetic_breakhis):
    launch(app, synthetic_breakhis, "completes", epochs=1)
    poll(app, lambda: not jobs.is_alive(jobs.read_job(environment["runs"])))
    assert texts(app.success).count("Training completed") == 1, jobs.log_tail(jobs.read_job(environment["runs"]))
    assert (environment["runs"] / "completes" / "metrics.json").is_file()  # evaluated; 96 images: DEMO, withheld
    assert "its evaluation figures are not shown" in texts(app.warning)  # (the table: the test below)
    app.button(key="adopt_model").click().run()
    model_dir = str((environment["runs"] / "completes" / "model").resolve())
    assert app.session_state["active_model"] == model_dir
    assert "This model is the active model." in texts(app.success)
    assert "completes" in texts(app.sidebar.markdown)


def test_the_fields_pipeline_offers_a_cross_validation_and_launches_it(app, environment, synthetic_breakhis):
    """The bundled model's procedure (k fold models whose pooled predictions give the figures and thresholds,
    then one model on every patient) could be started from the command line only."""
    app.radio(key="train_pipeline").set_value("tfdata").run()
    assert "train_folds" not in [number.key for number in app.number_input]  # its CV has no final model
    app.radio(key="train_pipeline").set_value("fields").run()
    folds = app.number_input(key="train_folds")
    assert folds.value == 0 and "every patient is tested once" in folds.help
    app.text_input(key="train_data").set_value(str(synthetic_breakhis))
    folds.set_value(1)
    app.button(key=START).click().run()
    assert "k-fold needs >= 2 folds" in texts(app.error) and jobs.read_job(environment["runs"]) is None
    app.number_input(key="train_folds").set_value(2)
    app.number_input(key="train_epochs").set_value(1)
    app.text_input(key="train_name").set_value("two-folds")
    app.button(key=START).click().run()
    job = jobs.read_job(environment["runs"])
    assert job is not None and job.command[job.command.index("--folds") + 1] == "2", job and job.command
    assert job.settings["folds"] == 2 and "folds 2" in texts(app.caption)
