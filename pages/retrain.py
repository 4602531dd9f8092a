"""Retrain: launch `python -m core train` in the background, follow it live, cancel it, adopt the model."""

import functools
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from core.app import dataset_views, job_end, jobs, performance, registry, retrain, run_files, session
from core.backends import job_environment
from core.data.breakhis import folder_problem
from core.errors import JobError, ModelFolderError, UserInputError
from core.model.folders import read_card
from core.paths import claimed_folders, runs_dir
from core.store.db import StoreError
from core.training.recipes import launch_defaults

session.require_router()
session.require("retrain")


CHECKING = "Checking which training engines this machine has, and whether they see a GPU..."


@st.cache_resource(show_spinner=False)
def probe() -> Future:
    """What each Keras backend sees (retrain.backends_seen: child processes, about 6 s on a fresh server), asked
    once per server in a thread of its own, so that the page is drawn and usable meanwhile."""
    workers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend-probe")
    asked = workers.submit(retrain.backends_seen)
    workers.shutdown(wait=False)  # the thread ends with the probe
    return asked


def backends_seen() -> dict[str, dict] | None:
    """The probe's answer, None while it runs; a probe that failed is asked again on the next visit."""
    asked = probe()
    if not asked.done():
        return None
    if asked.exception() is not None:
        probe.clear()
    return asked.result()  # a failure is the page's exception, as before


@st.fragment(run_every=1)
def wait_for_the_probe() -> None:
    """Until the probe answers: say so, then draw the whole page (the form's defaults depend on the answer)."""
    still_permitted(polled=True)
    if probe().done():
        st.rerun(scope="app")
    st.info(CHECKING + " The training form appears here in a few seconds (asked once after the server starts).",
            icon=":material/hourglass_top:")


def any_gpu() -> bool:
    return retrain.device_lines(backends_seen())[0]


def show_devices() -> None:
    gpu, lines = retrain.device_lines(backends_seen())
    text = "  \n".join(lines)
    if gpu:
        st.success(text, icon=":material/memory:")
    else:
        st.info(text + "  \nTraining runs on the CPU, so the form starts from the settings the bundled model was "
                "made with on 2 CPU cores (the field recipe: a half-width ResNet-18 from scratch on 128-px views). "
                "A DenseNet121 fine-tune at 224 px "
                "would take hours per epoch here.", icon=":material/memory:")


def launch_form() -> None:
    """Every default and choice comes from TrainConfig through core.app.retrain; this only lays out widgets."""
    synthetic = registry.synthetic_folder()
    defaults = launch_defaults(any_gpu())
    backends = retrain.backend_choices(backends_seen())

    def pick(widget, label, name, pipeline=None, **kwargs):
        return widget(label, retrain.choices(name, synthetic, pipeline),
                      index=retrain.default_index(name, synthetic, defaults, pipeline), key=f"train_{name}", **kwargs)

    def number(column, label, name, low, high):
        return column.number_input(label, low, high, getattr(defaults, name), key=f"train_{name}")

    # Outside the form, so that choosing it reruns the page: the modes, balancing and stain normalisation offered
    # depend on it (core.app.retrain.PIPELINE_DEPENDENT).
    pipeline = pick(st.radio, "Pipeline", "pipeline", format_func=retrain.PIPELINE_LABELS.get)
    with st.form("retrain"):
        values = {"pipeline": pipeline,
                  "data": st.text_input("Data folder (BreakHis images, any layout)", key="train_data",
                                        placeholder="e.g. ../shared/breakhis/real or data/BreaKHis_v1")}
        left, right = st.columns(2)
        values["backbone"] = pick(left.selectbox, "Backbone", "backbone")
        values["mode"] = pick(right.radio, "Mode", "mode", pipeline, format_func=retrain.MODE_LABELS.get)
        values["epochs"] = number(left, "Epochs", "epochs", 1, 500)
        values["balance"] = pick(right.selectbox, "Balancing", "balance", pipeline,
                                 help=dataset_views.fields_caption() if pipeline == "fields" else
                                 "Applied to the training split only (the Dataset page shows each strategy).")
        values["split"] = pick(left.radio, "Split protocol", "split", format_func=retrain.SPLIT_LABELS.get)
        backend = left.selectbox("Keras backend", backends, key="train_backend",
                                 help="The fields pipeline trains under TensorFlow or JAX; tf.data under TensorFlow "
                                      "only. The model trained either way loads in the app.")
        with st.expander("Advanced"):
            a, b = st.columns(2)
            values["input_size"] = number(a, "Input size (pixels)", "input_size", 32, 512)
            values["batch_size"] = number(b, "Batch size", "batch_size", 1, 256)
            values["weights"] = pick(a.selectbox, "Initial weights", "weights",
                                     help="ImageNet weights need a local Keras cache; offline, training "
                                          "starts from random weights and says so.")
            values["magnification"] = pick(b.selectbox, "Magnification", "magnification")
            values["seed"] = number(a, "Seed", "seed", 0, 2**31 - 1)
            if pipeline == "fields":  # the tf.data pipeline's cross-validation is the command line's (no final model)
                values["folds"] = b.number_input("Patient-wise cross-validation folds", 0, 10, defaults.folds,
                                                 key="train_folds", help=retrain.FOLDS_HELP)
            values["stain_norm"] = pick(b.selectbox, "Stain normalisation", "stain_norm", pipeline,
                                        help="The fields pipeline jitters the stains instead, so it offers none."
                                        if pipeline == "fields" else
                                        "Fitted to the training split; the model card keeps it and every prediction "
                                        "applies it (for images from other labs' scanners and stains).")
            name = a.text_input("Run name (optional)", key="train_name")
            values["reviewed_dir"] = st.text_input(
                "Reviewed images to add to the training split only (optional)", key="train_reviewed",
                help="A folder exported from the reviews (`python -m core reviews export OUT`); validation "
                     "and test patients never learn from them (in a cross-validation: each fold's held-out "
                     "patients).").strip() or None
        submitted = st.form_submit_button("Start training", type="primary", on_click=mark_submitted)
    st.session_state.pop(SUBMITTED, None)  # seen here: the form's own run starts it, or says why not
    if not submitted:
        return
    problem = folder_problem(values["data"])
    if problem:
        st.error(problem)
        return
    user = still_permitted(fresh=True)  # re-read the session before starting a process
    launched = {}  # the launch's audit row, once written

    def record_launch(job_id: str) -> None:  # retrain_finished repeats the job id: one end row per launch
        launched[job_id] = session.store().record("retrain_launched", user["name"], config.out,
                                                  details={"settings": settings, "job_id": job_id})

    try:
        config = retrain.training_config(values, runs_dir(), synthetic, name, defaults=defaults, backend=backend)
        settings = {**retrain.shown_settings(config), "backend": backend}
        job = jobs.start_job(jobs.build_command(config), config.out, settings, environment=job_environment(backend),
                             launched_by=user["name"], record_launch=record_launch)
    except StoreError as problem:  # as a model choice: a training the audit trail does not have is not started
        st.error(f"{problem} The training was not started: its launch could not be recorded in the audit trail. "
                 "Press Start training again in a moment.", icon=":material/database:")
        return
    except (UserInputError, JobError) as problem:
        for job_id in launched:  # recorded, then the process could not start: its end says so
            session.audit("retrain_finished", config.out, status="not started", explanation=str(problem),
                          job_id=job_id)
        st.error(str(problem))
        return
    # Its end is recorded when the process exits, as the launcher's, whether or not a page is open then.
    job_end.watch(job, functools.partial(job_end.record_end, session.store(), root=runs_dir()))
    st.rerun()


def split_sizes(job: jobs.Job, card: dict | None = None) -> str:
    """What the numbers are computed on, and under which protocol: the job's settings, the sizes its start
    event states, the run's config.json (a tf.data run's, once training starts), its card once done."""
    config, _ = run_files.read_json_file(Path(job.run_dir) / "config.json")  # none (fields), not yet, or damaged
    return retrain.split_sizes({**job.settings, "counts": jobs.start_counts(job), **(config or {})}, card)


def curves(history: list[dict]) -> None:
    caption, history = retrain.curve_rows(history)
    if not history:
        return
    if caption:
        st.caption(caption)
    left, right = st.columns(2)
    for column, (title, part) in zip((left, right), performance.training_curves(pd.DataFrame(history)).items()):
        if len(part):
            figure = px.line(part, x="epoch", y="value", color="metric", markers=True, title=title)
            column.plotly_chart(figure.update_layout(template="plotly_white", height=320), key=f"curve_{title}")


def still_permitted(fresh: bool = False, polled: bool = False) -> dict:
    """The user, inside the live view: a session signed out, revoked, idle or no longer an admin's leaves
    the page (the fragment's reruns skip app.py's and this page's checks); fresh=True before acting,
    polled=True on a timed rerun (not the user's activity)."""
    user = session.permitted("retrain", fresh=fresh, polled=polled)
    if user is None:
        st.rerun(scope="app")
    return user


@st.fragment(run_every=2)
def follow(job: jobs.Job) -> None:
    """Live view of the running job, polled every 2 s without rerunning the whole page."""
    still_permitted(polled=True)
    state = jobs.progress(job)
    status, explanation = jobs.job_status(job, state)
    if status != jobs.RUNNING:
        st.rerun(scope="app")
    st.progress(state["fraction"], text=retrain.progress_text(state))
    if state["metrics"]:
        st.caption(" · ".join(f"{k} {v:.4f}" for k, v in state["metrics"].items() if isinstance(v, (int, float))))
    st.caption(split_sizes(job))
    curves(state["history"])
    with st.expander("Log", expanded=False):
        st.code(jobs.log_tail(job) or "(no output yet)", language=None)
    if job.cancel_requested:
        st.info("Cancel requested; waiting for the training process to stop.")
        if time.time() - job.cancel_requested > 30 and st.button("Force stop (SIGKILL)", key="force_stop"):
            still_permitted(fresh=True)
            jobs.cancel_job(job, force=True)
            session.audit("retrain_cancelled", job.run_dir, force=True, job_id=job.job_id)
    elif st.button("Cancel training", key="cancel_job"):
        still_permitted(fresh=True)
        jobs.cancel_job(job)
        session.audit("retrain_cancelled", job.run_dir, force=False, job_id=job.job_id)
        st.rerun(scope="fragment")


ADOPTED = ("This model is the active model. Your session's only: other users and new sessions keep the server's "
           "default model (README: \"Promoting a trained model\" says how to change it).")


def finished(job: jobs.Job, status: str, explanation: str) -> None:
    state = jobs.progress(job)
    model_dir = Path(job.run_dir) / "model"
    try:  # as its launcher's, once (the server that launched it records it when the process exits)
        job_end.record_end(session.store(), job)
    except (StoreError, JobError) as problem:  # a busy database, an unwritable runs folder: tried again next run
        st.error(f"{problem} (retrain finished: {session.plain(job.run_dir)})", icon=":material/database:")
    if status == jobs.COMPLETED:
        st.success(f"Training completed: {job.run_dir}.")  # the explanation only repeats it
        try:
            card = read_card(model_dir)
        except ModelFolderError as unusable:  # not `problem`: Python unbinds an except name after its block
            st.error(f"The run finished but its model cannot be used: {unusable}")
            card = None
        st.caption(split_sizes(job, card))
        curves(state["history"])
        metrics, problem = run_files.read_json_file(Path(job.run_dir) / "metrics.json")
        info = registry.describe_model(card) if card is not None else {}
        if info.get("demo"):  # the runcard's one DEMO rule; the Model performance and Compare pages hide them too
            st.warning("This run is marked DEMO (too little real training data, a class it never saw, or --demo): "
                       "it has no valid accuracy, so its evaluation figures are not shown.", icon=":material/warning:")
        elif info.get("limited"):  # as Diagnose and Slide say it of the active model
            st.warning(f"LIMITED DATA model: {info['evidence']}. Measured: {info['measured'] or 'not evaluated'}. "
                       "Every call needs a pathologist's review.", icon=":material/warning:")
        if info.get("demo"):
            pass  # its figures withheld, as said above
        elif metrics is not None:
            st.markdown(f"**{retrain.evaluation_heading(metrics)}**")
            st.dataframe(performance.metrics_table(metrics), hide_index=True)
            st.caption(performance.protocol_line(metrics))
        elif problem:
            st.warning(f"The evaluation cannot be shown: {problem}")
        else:
            st.info("No evaluation was written (no test images, or evaluation failed: see the log).")
        if card is not None:
            if session.active_model() == str(model_dir.resolve()):
                st.success(ADOPTED)
            else:
                st.button("Make this the active model for my session", type="primary", key="adopt_model",
                          help=retrain.session_only(job.run_dir),
                          on_click=session.set_active_model, args=(str(model_dir),))
    else:
        st.error(f"{explanation} The active model was not changed.")  # the explanation names the status
    with st.expander("Log", expanded=status != jobs.COMPLETED):
        st.code(jobs.log_tail(job, 80) or "(empty log)", language=None)
    st.button("Start a new training job", key="clear_job", on_click=start_new_job, args=(job,))


NOTICE = "_retrain_notice"  # a message from a button's callback, shown by the next run
SUBMITTED = "_retrain_submitted"  # this session pressed "Start training" (set by the button's callback)


def mark_submitted() -> None:
    """Runs even when the next run shows no form: another session's job started meanwhile."""
    st.session_state[SUBMITTED] = st.session_state.get("train_name") or "yours"


def not_started(job: jobs.Job, status: str) -> None:
    """This session's "Start training" met another session's job (one job at a time): say so, once."""
    if SUBMITTED not in st.session_state:
        return
    name = st.session_state.pop(SUBMITTED)
    mine = "Your training job" + ("" if name == "yours" else f" ({name})")
    other = (f"another training job ({Path(job.run_dir).name}) is running; start yours again when it has ended"
             if status == jobs.RUNNING else
             f"another training job ({Path(job.run_dir).name}) has ended and is shown below; start yours again "
             "with \"Start a new training job\"")
    st.info(f"{mine} was not started: {other}.", icon=":material/info:")


def start_new_job(shown: jobs.Job) -> None:
    """Forget the job this tab showed; another tab may have started a new one since (a message, not an error).
    A callback runs before app.py's session check: a session no longer an admin's changes nothing."""
    if session.permitted("retrain", fresh=True) is None:
        return  # the next run (app.py) shows the sign-in page, or leaves out the page the role lost
    try:
        jobs.clear_job(shown=shown)
    except JobError as problem:
        st.session_state[NOTICE] = str(problem)


@st.fragment(run_every=5)
def outside_runs() -> None:
    """Trainings started from the command line, each with how far its own progress stream says it is; polled
    without rerunning the form, so one started after the page was opened appears within seconds."""
    still_permitted(polled=True)
    for folder in claimed_folders(runs_dir()):
        st.info(f"A training started outside this page (from the command line) is writing {folder}: this page "
                "starts no other until it ends.", icon=":material/info:")
        state = retrain.outside_run_progress(folder)
        if state is not None:
            st.progress(state["fraction"], text=retrain.progress_text(state))
        stop_outside(folder)


def stop_outside(folder) -> None:
    """The stop button of a command-line training, asked twice: someone else's hours of training may end on it.
    The buttons only change the page's state (callbacks, before the rerun); the stop itself is made here, after
    the session is checked again."""
    key = f"stop_outside_{folder}"
    asked, confirmed = f"{key}_asked", f"{key}_confirmed"
    if st.session_state.pop(confirmed, False):
        still_permitted(fresh=True)
        try:
            pid = jobs.stop_outside_run(folder)
        except JobError as problem:
            st.error(str(problem), icon=":material/error:")
            return
        session.audit("retrain_cancelled", str(folder), force=False, outside=True, pid=pid)
        st.info(f"Stop requested (SIGTERM to process {pid}); the training ends after its current step.")
        return
    if not st.session_state.get(asked):
        st.button("Stop this training", key=key, help=retrain.STOP_OUTSIDE_HELP,
                  on_click=lambda: st.session_state.update({asked: True}))
        return
    st.warning(f"Stop the training writing {folder}? It was started outside this page, maybe by someone else; it "
               "ends after its current step.", icon=":material/warning:")
    left, right = st.columns(2)
    left.button("Yes, stop it", key=f"{key}_yes", type="primary",
                on_click=lambda: st.session_state.update({asked: False, confirmed: True}))
    right.button("Keep it running", key=f"{key}_keep", on_click=lambda: st.session_state.update({asked: False}))


st.title("Retrain")
if NOTICE in st.session_state:
    st.info(st.session_state.pop(NOTICE), icon=":material/info:")
job, damaged = jobs.load_job()
if damaged:  # a hand edit or a half-restored backup: say so, and keep the page usable
    st.warning(f"The last training job cannot be shown: {damaged}. Its run folder, if any, is "
               "kept. If a training started from this page may still be running, stop that process first (this page "
               "can no longer follow or cancel it); then start a new job below, which replaces the file, or delete "
               "the file.", icon=":material/warning:")
if job is None and backends_seen() is None:  # the form's defaults and backends wait for the probe; the page does not
    wait_for_the_probe()
elif job is None:
    outside_runs()  # said before the form, not only when Start is refused; empty while none runs
    show_devices()
    launch_form()
else:
    status, explanation = jobs.job_status(job, jobs.progress(job))
    not_started(job, status)
    st.caption(session.plain(retrain.job_caption(job)))
    if status == jobs.RUNNING:
        follow(job)
    else:
        finished(job, status, explanation)
