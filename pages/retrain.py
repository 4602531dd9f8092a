"""Retrain: launch `python -m core train` in the background, follow it live, cancel it, adopt the model."""

import dataclasses
import datetime
import json
import re
import time
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from core.app import jobs, performance, registry, session
from core.data.breakhis import folder_problem
from core.errors import JobError, ModelFolderError
from core.model.folders import read_card
from core.options import choices_of
from core.paths import runs_dir
from core.training.config import TrainConfig
from core.training.recipes import launch_defaults

session.require_router()
session.require("retrain")

SPLITS = {"patient-wise": "Patient-wise (no patient in two splits; honest)",
          "image-level": "Image-level (leaky: the same patient in train and test; for comparison only)"}
MODES = {"finetune": "Fine-tune (whole network)", "fast": "Fast (frozen backbone, heads only)"}


@st.cache_resource(show_spinner=False)
def visible_gpus() -> list[str]:
    import tensorflow as tf

    return [device.name for device in tf.config.list_physical_devices("GPU")]


def show_devices() -> None:
    gpus = visible_gpus()
    if gpus:
        st.success(f"TensorFlow sees {len(gpus)} GPU(s): {', '.join(gpus)}.", icon=":material/memory:")
    else:
        st.info("TensorFlow sees no GPU: training runs on the CPU, so the form starts from the settings "
                "the bundled model was trained with on 2 CPU cores (small CNN from scratch at 128 px). "
                "A DenseNet121 fine-tune at 224 px would take hours per epoch here.", icon=":material/memory:")


def launch_form() -> None:
    """Every default and choice comes from TrainConfig, the one definition of a run's options."""
    synthetic = registry.synthetic_folder()
    defaults = launch_defaults(bool(visible_gpus()))

    def pick(widget, label, name, **kwargs):
        options = list(choices_of(TrainConfig, name))
        return widget(label, options, index=options.index(getattr(defaults, name)), key=f"train_{name}", **kwargs)

    with st.form("retrain"):
        data = st.text_input("Data folder (BreakHis images, any layout)", key="train_data",
                             placeholder="e.g. ../shared/breakhis/real or data/BreaKHis_v1").strip()
        left, right = st.columns(2)
        backbone = pick(left.selectbox, "Backbone", "backbone")
        mode = pick(right.radio, "Mode", "mode", format_func=MODES.get)
        epochs = left.number_input("Epochs", 1, 500, defaults.epochs, key="train_epochs")
        strategies = [s for s in choices_of(TrainConfig, "balance") if s != "synthetic" or synthetic]
        balance = right.selectbox("Balancing", strategies, index=strategies.index(defaults.balance), key="train_balance")
        split = pick(left.radio, "Split protocol", "split", format_func=SPLITS.get)
        with st.expander("Advanced"):
            a, b = st.columns(2)
            input_size = a.number_input("Input size (pixels)", 32, 512, defaults.input_size, key="train_input_size")
            batch_size = b.number_input("Batch size", 1, 256, defaults.batch_size, key="train_batch_size")
            weights = a.selectbox("Initial weights", ["imagenet", "none"], key="train_weights",
                                  index=["imagenet", "none"].index(defaults.weights),
                                  help="ImageNet weights need a local Keras cache; offline, training "
                                       "starts from random weights and says so.")
            magnification = pick(b.selectbox, "Magnification", "magnification")
            seed = a.number_input("Seed", 0, 2**31 - 1, defaults.seed, key="train_seed")
            stain_norm = pick(b.selectbox, "Stain normalisation", "stain_norm",
                              help="Fitted to the training split; the model card keeps it and every prediction "
                                   "applies it (for images from other labs' scanners and stains).")
            name = a.text_input("Run name (optional)", key="train_name").strip()
            reviewed = st.text_input("Reviewed images to add to the training split only (optional)",
                                     key="train_reviewed", help="A folder exported from the reviews "
                                     "(core.store.reviews.export_training_folder); validation and test never change.").strip()
        submitted = st.form_submit_button("Start training", type="primary")
    if not submitted:
        return
    problem = folder_problem(data)
    if problem:
        st.error(problem)
        return
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^\w.-]", "_", name) or f"{stamp}-{backbone}-{mode}"
    run_dir = runs_dir() / name
    config = dataclasses.replace(defaults, data=data, out=str(run_dir), backbone=backbone, mode=mode,
                                 epochs=int(epochs), balance=balance, split=split, batch_size=int(batch_size),
                                 input_size=int(input_size), weights=weights, magnification=magnification,
                                 seed=int(seed), stain_norm=stain_norm,
                                 synthetic_dir=synthetic if balance == "synthetic" else None,
                                 reviewed_dir=reviewed or None)
    settings = {"data": data, "backbone": backbone, "mode": mode, "epochs": int(epochs), "balance": balance,
                "split": split, "input_size": int(input_size), "batch_size": int(batch_size), "stain_norm": stain_norm}
    try:
        jobs.start_job(jobs.build_command(config), run_dir, settings)
    except JobError as problem:
        st.error(str(problem))
        return
    session.audit("retrain_launched", str(run_dir), settings=settings)
    st.rerun()


def split_sizes(job: jobs.Job) -> str:
    """What the live numbers are computed on (from the run's config.json once training starts)."""
    try:
        config = json.loads((Path(job.run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "Training metrics on the training split; 'val_' metrics on the validation split."
    counts = config.get("counts", {})
    return (f"Training metrics on the training split ({counts.get('train', '?')} images), 'val_' metrics on the "
            f"validation split ({counts.get('val', '?')} images); {config.get('split', '?')} protocol.")


def curves(history: list[dict]) -> None:
    if not history:
        return
    left, right = st.columns(2)
    for column, (title, part) in zip((left, right), performance.training_curves(pd.DataFrame(history)).items()):
        if len(part):
            figure = px.line(part, x="epoch", y="value", color="metric", markers=True, title=title)
            column.plotly_chart(figure.update_layout(template="plotly_white", height=320), key=f"curve_{title}")


@st.fragment(run_every=2)
def follow(job: jobs.Job) -> None:
    """Live view of the running job, polled every 2 s without rerunning the whole page."""
    state = jobs.progress(job)
    status, explanation = jobs.job_status(job, state)
    if status != jobs.RUNNING:
        st.rerun(scope="app")
    epoch_text = f"epoch {state['epoch']} of {state['epochs']}" if state["epochs"] else "starting"
    step_text = f", step {state['step']} of {state['steps']}" if state["steps"] else ""
    st.progress(state["fraction"], text=f"Training: {epoch_text}{step_text}")
    if state["metrics"]:
        st.caption(" · ".join(f"{k} {v:.4f}" for k, v in state["metrics"].items() if isinstance(v, (int, float))))
    st.caption(split_sizes(job))
    curves(state["history"])
    with st.expander("Log", expanded=False):
        st.code(jobs.log_tail(job) or "(no output yet)", language=None)
    if job.cancel_requested:
        st.info("Cancel requested; waiting for the training process to stop.")
        if time.time() - job.cancel_requested > 30 and st.button("Force stop (SIGKILL)", key="force_stop"):
            jobs.cancel_job(job, force=True)
            session.audit("retrain_cancelled", job.run_dir, force=True)
    elif st.button("Cancel training", key="cancel_job"):
        jobs.cancel_job(job)
        session.audit("retrain_cancelled", job.run_dir, force=False)
        st.rerun(scope="fragment")


def finished(job: jobs.Job, status: str, explanation: str) -> None:
    state = jobs.progress(job)
    model_dir = Path(job.run_dir) / "model"
    session.audit("retrain_finished", job.run_dir, once=True, status=status, explanation=explanation)
    if status == jobs.COMPLETED:
        st.success(f"Training completed: {job.run_dir}.")  # the explanation only repeats it
        st.caption(split_sizes(job))
        curves(state["history"])
        metrics_path = Path(job.run_dir) / "metrics.json"
        try:
            card = read_card(model_dir)
        except ModelFolderError as problem:
            st.error(f"The run finished but its model cannot be used: {problem}")
            card = None
        if card is not None and card.get("demo"):
            st.warning("This run is marked DEMO (too little training data, or --demo): its numbers are "
                       "not a valid accuracy.", icon=":material/warning:")
        if metrics_path.is_file():
            st.markdown("**Evaluation on the held-out test split**")
            metrics = json.loads(metrics_path.read_text())
            st.dataframe(performance.metrics_table(metrics), hide_index=True)
            st.caption(performance.protocol_line(metrics))
        else:
            st.info("No evaluation was written (no test images, or evaluation failed: see the log).")
        if card is not None:
            if session.active_model() == str(model_dir.resolve()):
                st.success("This model is the active model.")
            else:
                st.button("Make this the active model", type="primary", key="adopt_model",
                          on_click=session.set_active_model, args=(str(model_dir),))
    else:
        st.error(f"Training {status}: {explanation} The active model was not changed.")
    with st.expander("Log", expanded=status != jobs.COMPLETED):
        st.code(jobs.log_tail(job, 80) or "(empty log)", language=None)
    st.button("Start a new training job", key="clear_job", on_click=jobs.clear_job)


st.title("Retrain")
show_devices()
job = jobs.read_job()
if job is None:
    launch_form()
else:
    status, explanation = jobs.job_status(job, jobs.progress(job))
    st.caption(f"Job {Path(job.run_dir).name}: " + ", ".join(f"{k} {v}" for k, v in job.settings.items()))
    if status == jobs.RUNNING:
        follow(job)
    else:
        finished(job, status, explanation)
