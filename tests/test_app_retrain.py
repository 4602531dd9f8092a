"""Retrain page through AppTest: a real `python -m core train` job on the synthetic data set is
launched, followed, cancelled, failed and completed; only a completed job can become the active model."""

import json
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.app import jobs
from tests.app_helpers import (
    APP,
    APP_TIMEOUT,
    PROBING,
    SLEEPER,
    app_like_the_server,
    finished_job,
    make_model_folder,
    open_retrain,
    stop_and_forget,
)

START = "FormSubmitter:retrain-Start training"


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    default = make_model_folder(root / "models" / "default", demo=True)
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, root / "models", default, root / "runs")
        yield {"default": str(default.resolve()), "runs": root / "runs", "root": root}


@pytest.fixture
def app(environment):
    app = open_retrain(AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run())
    yield app
    job = jobs.read_job(environment["runs"])
    if job is not None:  # never leave a training process behind, nor a job for the next test
        jobs.cancel_job(job, environment["runs"], force=True)
        deadline = time.time() + 30
        while jobs.is_alive(job) and time.time() < deadline:
            time.sleep(0.2)
        jobs.clear_job(environment["runs"])


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def launch(app, data: Path, name: str, epochs: int) -> None:
    """A small whole-field run (the job's mechanics are under test, not a recipe)."""
    app.text_input(key="train_data").set_value(str(data))
    app.radio(key="train_pipeline").set_value("tfdata")
    app.selectbox(key="train_backbone").set_value("small_cnn")
    app.number_input(key="train_epochs").set_value(epochs)
    app.number_input(key="train_input_size").set_value(64)
    app.number_input(key="train_batch_size").set_value(16)
    app.selectbox(key="train_weights").set_value("none")
    app.text_input(key="train_name").set_value(name)
    app.button(key=START).click().run()
    assert not app.exception


def poll(app, condition, timeout: float = 240.0) -> None:
    """Rerun the page (as the fragment's timer would) until `condition()` holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            app.run()  # render the state the condition saw
            assert not app.exception
            return
        app.run()
        assert not app.exception
        time.sleep(1.0)
    pytest.fail(f"timed out; log:\n{jobs.log_tail(jobs.read_job()) if jobs.read_job() else ''}")


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


def test_a_failed_job_says_why_and_never_replaces_the_model(app, environment):
    unreadable = environment["root"] / "unreadable-images"  # BreakHis names, but not images
    unreadable.mkdir()
    (unreadable / "SOB_B_A-14-22549AB-40-001.png").write_bytes(b"not a png")
    launch(app, unreadable, "fails", epochs=1)
    poll(app, lambda: not jobs.is_alive(jobs.read_job(environment["runs"])), timeout=240)
    errors = texts(app.error)
    assert "Training failed" in errors and "No BreakHis images found" in errors
    assert not any(button.key == "adopt_model" for button in app.button)
    assert app.session_state["active_model"] == environment["default"]
    app.button(key="clear_job").click().run()


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


def test_a_running_jobs_caption_says_who_started_it_and_when(app, environment):
    """qa-multi #5: a second admin saw the running job and its Cancel button, but not whose training it was."""
    from core.app.session import plain

    job = jobs.start_job(SLEEPER, environment["runs"] / "whose", {"epochs": 1}, root=environment["runs"],
                         launched_by="boss [chief]")
    app.run()
    assert app.button(key="cancel_job").label == "Cancel training"
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime(job.started))
    assert plain(f"Job whose, started by boss [chief] at {started} UTC: epochs 1") in texts(app.caption)


def test_a_completed_run_with_a_damaged_card_and_no_evaluation_can_be_cleared(app, environment):
    """finished() must not raise (UnboundLocalError) and block the page until runs/.job.json is deleted by hand."""
    run = finished_job(environment["runs"], "damaged-card", {"status": "completed"})
    (run / "model").mkdir()
    (run / "model" / "card.json").write_text("{not json")
    app.run()
    assert not app.exception
    assert "The run finished but its model cannot be used" in texts(app.error)
    assert "No evaluation was written" in texts(app.info)
    assert not any(button.key == "adopt_model" for button in app.button)
    app.button(key="clear_job").click().run()
    assert jobs.read_job(environment["runs"]) is None and any(button.key == START for button in app.button)


def test_a_finished_limited_gan_fill_run_says_so_before_it_can_become_the_active_model(app, environment):
    """The finished view offered "Make this the active model" with no LIMITED DATA statement, and counted
    its 90 GAN images as training-split images ("547 images")."""
    from core.model.folders import update_card

    run = finished_job(environment["runs"], "limited-gan", {"status": "completed"})
    make_model_folder(run / "model", demo=False, name="limited-gan")
    statement = "weights learnt from 457 real images of 29 patients (from scratch); figures measured on the test " \
                "split (188 images, 9 patients); limited data, not a diagnosis"
    update_card(run / "model", evidence={"images": 457, "patients": 29, "limited": True, "statement": statement},
                training={"split_protocol": "patient-wise", "counts": {"train": 547, "val": 112, "test": 188},
                          "synthetic_by_subtype": {"adenosis": 30, "phyllodes_tumor": 30, "lobular_carcinoma": 30}})
    app.run()
    assert not app.exception
    unevaluated = statement.replace("figures measured on the test split (188 images, 9 patients)", "not evaluated")
    assert f"LIMITED DATA model: {unevaluated}. Measured: not evaluated." in texts(app.warning)  # QA retrain #8
    assert ("Training metrics on the training split (457 real + 90 synthetic (GAN) images), 'val_' metrics on the "
            "validation split (112 images); patient-wise protocol.") in texts(app.caption)
    assert any(button.key == "adopt_model" for button in app.button)  # still offered, with the statement above it
    app.button(key="clear_job").click().run()


@pytest.mark.parametrize("demo", [True, False], ids=["demo", "not-demo"])
def test_a_finished_demo_run_withholds_its_figures_and_says_why(app, environment, demo):
    """QA retrain #9: a DEMO run's finished view listed its accuracies with intervals ("1.000 (95% CI
    1.000-1.000)") while the Model performance and Compare pages hide a DEMO model's figures."""
    run = finished_job(environment["runs"], f"demo-{demo}", {"status": "completed"})
    data = {"split": "test", "protocol": "patient-wise", "images": 18, "cases": 4}
    metrics = {**data, "data": data, "stage1": {"accuracy": 1.0, "data": data}, "intervals": {"image": {}, "patient": {}}}
    make_model_folder(run / "model", demo=demo, name=f"demo-{demo}", metrics=metrics)
    (run / "metrics.json").write_text(json.dumps(metrics))
    app.run()
    assert not app.exception
    shown = [frame.value for frame in app.dataframe if "what" in frame.value.columns]
    warned = texts(app.warning)
    if demo:
        assert not shown and "Evaluation on the held-out test split" not in texts(app.markdown)
        assert "This run is marked DEMO" in warned and "its evaluation figures are not shown" in warned
        assert "No evaluation was written" not in texts(app.info)
    else:
        assert shown and shown[0]["what"].iloc[0] == "Stage 1: benign vs malignant"
        assert set(shown[0]["protocol"]) == {"patient-wise"} and "DEMO" not in warned
    assert any(button.key == "adopt_model" for button in app.button)
    app.button(key="clear_job").click().run()


def test_split_sizes_count_gan_images_apart_from_real_ones():
    from core.app import retrain

    card = {"evidence": {"images": 457}, "training": {"counts": {"train": 457, "val": 112, "synthetic": 90},
                                                       "synthetic_by_subtype": {"adenosis": 30}}}
    assert "(457 real + 90 synthetic (GAN) images)" in retrain.split_sizes(None, card)  # a 'synthetic' count first
    assert "(457 real images)" in retrain.split_sizes(None, {"evidence": {"images": 457}})  # no GAN image
    live = {"counts": {"train": 547, "val": 112}, "balance": "synthetic", "split": "patient-wise"}
    assert retrain.split_sizes(live) == ("Training metrics on the training split (547 images, with GAN fill), 'val_' "
                                         "metrics on the validation split (112 images); patient-wise protocol.")
    assert "(457 real + 90 synthetic (GAN) images)" in retrain.split_sizes(
        {"counts": {"train": 457, "synthetic": 90, "val": 112}})
    assert retrain.split_sizes(None) == ("Training metrics on the training split, 'val_' metrics on the validation "
                                         "split.")


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


def test_a_cross_validations_progress_curves_and_evaluation_say_which_training_they_are():
    from core.app import retrain

    state = {"epochs": 30, "epoch": 3, "steps": 10, "step": 4, "total_epochs": 180, "phase": "fold 2"}
    assert retrain.progress_text(state) == "Training: fold 2, epoch 3 of 30, step 4 of 10 (180 epochs in all)"
    assert retrain.progress_text({**state, "total_epochs": 30}) == "Training: epoch 3 of 30, step 4 of 10"
    assert retrain.progress_text({**state, "epochs": None}) == "Training: starting"
    history = [{"epoch": 1, "loss": 2.0, "phase": "fold 1"}, {"epoch": 1, "loss": 1.0, "phase": "final model"}]
    caption, rows = retrain.curve_rows(history)
    assert rows == [{"epoch": 1, "loss": 1.0}] and caption.startswith("Learning curves of final model")
    assert retrain.curve_rows(history[1:]) == (None, [{"epoch": 1, "loss": 1.0}])
    assert retrain.split_sizes({"split": "patient-wise", "folds": 5}) == (
        "Training metrics: each fold model's on its own training patients, then the final model's on every patient; "
        "the evaluation is the pooled out-of-fold predictions; patient-wise 5-fold cross-validation, pooled "
        "out-of-fold protocol.")  # while it trains: "'val_' metrics on the validation split", which a CV has not
    card = {"evidence": {"images": 757},
            "metrics": {"protocol": "patient-wise 5-fold cross-validation, pooled out-of-fold"}}
    assert "then the final model's on every patient (757 real images); " in retrain.split_sizes({}, card)
    pooled = {"data": {"split": "test", "protocol": "patient-wise 5-fold cross-validation, pooled out-of-fold"}}
    assert "pooled out-of-fold" in retrain.evaluation_heading(pooled)
    assert retrain.evaluation_heading({"data": {"split": "test"}}) == "Evaluation on the held-out test split"


def test_a_fields_runs_caption_states_its_protocol_while_it_runs_and_once_done(app, environment):
    """qa-multi #4: a finished fields run read "... the validation split (1 images); ? protocol." (its card
    says the protocol as training.settings.split and metrics.protocol; a fields run writes no config.json),
    and while it ran the caption had neither its sizes nor its protocol."""
    from core.app import retrain

    card = {"evidence": {"images": 10}, "metrics": {"protocol": "patient-wise"},
            "training": {"counts": {"train": 10, "synthetic": 0, "val": 1, "test": 11},
                         "settings": {"split": "patient-wise"}}}
    done = "Training metrics on the training split (10 real images), 'val_' metrics on the validation split " \
           "(1 image); patient-wise protocol."
    assert retrain.split_sizes(None, card) == done
    card["metrics"] = {}
    assert retrain.split_sizes(None, card) == done  # the fields run's settings say it too
    assert retrain.split_sizes({"split": "image-level"}) == ("Training metrics on the training split, 'val_' metrics "
                                                             "on the validation split; image-level (leaky) protocol.")

    run = environment["runs"] / "fields-live"
    job = jobs.start_job(SLEEPER, run, {"pipeline": "fields", "split": "patient-wise"}, root=environment["runs"])
    # start_job made the run folder (its claim); the run writes its start event, which states its sizes
    (run / "progress.jsonl").write_text(json.dumps(
        {"event": "start", "time": job.started, "epochs": 1, "counts": {"train": 10, "val": 1, "test": 11,
                                                                        "synthetic": 0, "reviewed": 0}}) + "\n")
    app.run()
    assert ("Training metrics on the training split (10 real images), 'val_' metrics on the validation split "
            "(1 image); patient-wise protocol.") in texts(app.caption)


def test_start_a_new_job_in_a_tab_whose_job_another_tab_replaced_shows_that_job(app, environment):
    """Tab A still shows a failed job; tab B has cleared it and started another: A's button says so
    (no JobError from the callback) and A then follows the running job."""
    finished_job(environment["runs"], "old", {"status": "failed", "message": "boom"})
    app.run()
    assert "Training failed" in texts(app.error)
    jobs.clear_job(environment["runs"])  # tab B
    job = jobs.start_job(SLEEPER, environment["runs"] / "new", {"epochs": 1}, root=environment["runs"])
    try:
        app.button(key="clear_job").click().run()
        assert not app.exception
        assert "Another training job (new) was started after this page showed old" in texts(app.info)
        assert app.button(key="cancel_job").label == "Cancel training"
        assert jobs.read_job(environment["runs"]).run_dir == str(environment["runs"] / "new")
        app.run()
        assert "Another training job" not in texts(app.info)  # said once
    finally:
        stop_and_forget(job, environment["runs"])


def test_a_failed_job_says_it_failed_once(app, environment):
    finished_job(environment["runs"], "broke", {"status": "failed", "message": "ValueError: boom"})
    app.run()
    assert not app.exception
    assert texts(app.error) == "Training failed. ValueError: boom. The active model was not changed."


def test_a_runs_folder_that_is_a_file_is_a_message_not_a_traceback(app, environment, synthetic_breakhis, monkeypatch):
    blocker = environment["root"] / "runs-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("BREAKHIS_RUNS_DIR", str(blocker))
    launch(app, synthetic_breakhis, "nowhere", epochs=1)
    assert f"The runs folder {blocker} cannot be written" in texts(app.error)
    assert any(button.key == START for button in app.button)  # the form stays, with what was typed
    assert app.text_input(key="train_name").value == "nowhere"


@pytest.mark.parametrize("damage", [{"settings": ["a"]}, {"command": "python"}, {"pid": 0}])
def test_a_job_file_with_fields_of_the_wrong_type_is_called_damaged_and_a_job_can_still_start(app, environment,
                                                                                           damage):
    run = finished_job(environment["runs"], f"hand-edited-{next(iter(damage))}", {"status": "failed", "message": "boom"})
    job_file = environment["runs"] / jobs.JOB_FILE_NAME
    job_file.write_text(json.dumps({**json.loads(job_file.read_text()), **damage}))
    try:
        app.run()
        assert not app.exception
        warning = texts(app.warning)
        assert f"{job_file} is damaged ({next(iter(damage))}" in warning and "replaces the file" in warning
        assert any(button.key == START for button in app.button)  # the page keeps serving: a new job can start
        assert jobs.read_job(environment["runs"]) is None and run.is_dir()
    finally:
        job_file.unlink()


def test_a_second_session_starting_while_a_job_runs_is_told_its_job_was_not_started(app, environment,
                                                                                        synthetic_breakhis):
    """Session B's form was open when session A started a job; B's "Start training" was dropped without
    a word (one job at a time is by design): B's page showed A's live view only."""
    job = jobs.start_job(SLEEPER, environment["runs"] / "job-a", {"epochs": 1}, root=environment["runs"])  # session A
    try:
        launch(app, synthetic_breakhis, "job-b", epochs=1)
        assert "Your training job (job-b) was not started: another training job (job-a) is running" in texts(app.info)
        assert app.button(key="cancel_job").label == "Cancel training"  # A's job, followed
        assert jobs.read_job(environment["runs"]).run_dir == str(environment["runs"] / "job-a")
        assert not (environment["runs"] / "job-b").exists()
        app.run()
        assert "was not started" not in texts(app.info)  # said once
    finally:
        stop_and_forget(job, environment["runs"])


def test_a_training_the_audit_trail_cannot_record_is_not_started(app, environment, synthetic_breakhis, monkeypatch):
    """qa-retrain #3: Start pressed while another process held the database's write lock started the job with no
    retrain_launched row, and the page's st.rerun() wiped the error. As a model choice: recorded first, or not done."""
    from core.paths import data_dir
    from core.store import db
    from core.store.audit import Store
    from tests.app_helpers import write_locked

    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr(jobs, "build_command", lambda config: SLEEPER)  # the launch is under test, not a training
    Store.open().close()  # the database exists, as on any server that has signed someone in
    with write_locked(data_dir() / db.SQLITE_FILE):
        launch(app, synthetic_breakhis, "busy-db", epochs=1)
    assert jobs.read_job(environment["runs"]) is None  # nothing runs
    said = texts(app.error)
    assert "busy" in said and "The training was not started" in said, said
    assert any(button.key == START for button in app.button)  # the form, to start it again

    app.button(key=START).click().run()  # the database is free again
    job = jobs.read_job(environment["runs"])
    assert job is not None and jobs.is_alive(job) and job.run_dir.endswith("busy-db")
    store = Store.open()
    try:
        launched = [e for e in store.events(kinds="retrain_launched") if e["subject"] == job.run_dir]
        assert [e["details"]["job_id"] for e in launched] == [job.job_id]
    finally:
        store.close()


def test_a_launch_recorded_but_not_started_gets_its_end_row(app, environment, synthetic_breakhis, monkeypatch):
    """The launch row is written first; a process that then cannot start (here: the job file cannot be written)
    is recorded as not started, so every retrain_launched row has its retrain_finished."""
    from core.store.audit import Store

    monkeypatch.setattr(jobs, "build_command", lambda config: SLEEPER)
    blocker = environment["runs"] / jobs.JOB_FILE_NAME
    blocker.mkdir(parents=True)  # as a full disk would: the job file's write fails
    try:
        launch(app, synthetic_breakhis, "unwritable-job-file", epochs=1)
    finally:
        blocker.rmdir()
    assert "so the training was stopped at once" in texts(app.error)
    store = Store.open()
    try:
        rows = [e for e in store.events(kinds=("retrain_launched", "retrain_finished"), newest_first=False)
                if e["subject"].endswith("unwritable-job-file")]
        assert [(e["kind"], e["details"].get("status")) for e in rows] == [("retrain_launched", None),
                                                                          ("retrain_finished", "not started")]
        assert rows[0]["details"]["job_id"] == rows[1]["details"]["job_id"]
    finally:
        store.close()
