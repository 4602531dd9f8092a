"""Retrain page through AppTest, a job's life as the page shows it: the captions of running and finished runs
(damaged, limited, demo, cross-validations), split sizes, and jobs that another tab, a second session, a damaged
job file or an audit trail that cannot record got in the way of (tests/test_app_retrain.py: the form, launch,
follow, cancel and promote)."""

import json
import time

import pytest

from core.app import jobs
from tests.app_helpers import SLEEPER, finished_job, make_model_folder, stop_and_forget, tables
from tests.retrain_page import START, launch, retrain_app, retrain_environment, texts


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    yield from retrain_environment(tmp_path_factory)


@pytest.fixture
def app(environment):
    yield from retrain_app(environment)


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
    shown = tables(app, "what")
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
