"""Model performance: the active model's card, metrics with their protocol, curves, and the literature."""

import json
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from core.app import performance, registry, session
from core.evaluation.figures import confusion_figure, reliability_figure, roc_figure
from core.paths import REFERENCE_RESULTS

session.require_router()
session.require("performance")

LAYOUT = dict(template="plotly_white", height=380, margin=dict(l=10, r=10, t=50, b=10))

st.title("Model performance")
folder = session.active_model()
if not folder:
    st.error("No model is available. Put a model folder in models/ or train one on the Retrain page.")
    st.stop()
try:
    card = session.model_card(folder)
except Exception as problem:
    st.error(f"The active model cannot be read: {problem}")
    st.stop()
info = registry.describe_model(card)
training = card.get("training") or {}


def beside_model(name: str) -> Path | None:
    """A run file kept in the model folder (bundled models) or its run folder (runs/NAME/model)."""
    return next((d / name for d in (Path(folder), Path(folder).parent) if (d / name).is_file()), None)


metrics_file, history_file = beside_model("metrics.json"), beside_model("history.csv")
metrics = None
if metrics_file:
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError) as problem:
        st.warning(f"{metrics_file} could not be read ({type(problem).__name__}: {problem}); showing the "
                   "metrics stored in the model card instead.")
if not isinstance(metrics, dict):
    metrics = card.get("metrics") or {}

st.subheader("Model card")
left, right = st.columns(2)
left.markdown(f"**{info['name']}**" + (" · :red-badge[DEMO]" if info["demo"] else "")
              + (" · :orange-badge[LIMITED DATA]" if info["limited"] and not info["demo"] else ""))
if info["evidence"]:
    left.caption(f"{info['evidence'].capitalize()}; by magnification: "
                 + ", ".join(f"{m} {n}" for m, n in (card.get("evidence") or {}).get("by_magnification", {}).items()))
left.markdown(f"Backbone {info['backbone']} ({info['hierarchy']}), input {card.get('input_size')} px, "
              f"initial weights: {card.get('weights_init', 'unknown')}")
counts = training.get("counts") or {}
sizes = " · ".join(f"{split} {counts[split]}" for split in ("train", "val", "test") if split in counts) or "unknown"
right.markdown(f"Trained on {info['data']}  \nSplit protocol: {info['protocol']}; images {sizes}  \n"
               f"Mode {training.get('mode', '?')}, {training.get('epochs', '?')} epochs, "
               f"balancing {training.get('balance', 'none')}, magnification {training.get('magnification', 'all')}")
split = training.get("split") or {}
if split.get("images"):
    with st.expander(f"The split: {split.get('protocol', info['protocol'])}"):
        st.dataframe(performance.split_summary(split), hide_index=True)
        if split.get("shared_cases"):
            st.error(f"{split['shared_cases']} case(s) are in more than one split: the figures are optimistic.")
with st.expander("Full card (JSON)"):
    st.json(card, expanded=False)

if info["demo"]:
    st.error("This is the DEMO model. It exists to show how the app works and has NO valid accuracy: "
             "it was not trained and evaluated on enough real data. No performance numbers are shown "
             "for it; compare against the published results below only after training a real model.",
             icon=":material/warning:")
elif not performance.metric_block(metrics, ("stage1",)):
    st.warning("This model has no evaluation yet. Run `python -m core evaluate RUN` on its run folder.")
else:
    if metrics.get("intervals"):
        st.subheader("Headline figures with 95% intervals, next to the baselines")
        st.caption(performance.protocol_line(metrics) + " Intervals: percentile bootstrap over whole patients "
                   "(2,000 resamples); the baselines are fitted on the same training images and scored on the "
                   "same test cases. A model that does not beat the colour/texture baseline has learnt little "
                   "beyond colour and texture.")
        st.dataframe(performance.intervals_table(metrics), hide_index=True)
    cv_file = beside_model("cv.json")
    if cv_file:
        cv = json.loads(cv_file.read_text())
        st.subheader(f"Cross-validation: {cv['protocol']}")
        st.caption("Every patient is a test patient in exactly one fold, so the figure does not hang on one split. "
                   "Mean +- sample standard deviation over the folds.")
        st.dataframe(performance.cross_validation_table(cv), hide_index=True)
    calibration = metrics.get("calibration") or card.get("calibration")
    if calibration and calibration.get("measured"):
        st.subheader("Calibration")
        st.caption(f"{calibration['method']}; temperatures "
                   + ", ".join(f"{head} {t:.2f}" for head, t in calibration["temperatures"].items())
                   + f". ECE over {calibration.get('ece_bins', 15)} confidence bins; each stage-2 head is judged on "
                   "the images of its own class.")
        st.dataframe(performance.calibration_table(calibration), hide_index=True)
        st.plotly_chart(reliability_figure(calibration), key="reliability")
    uncertainty = metrics.get("uncertainty")
    if uncertainty:
        st.subheader("Uncertainty flag")
        split_block = uncertainty["on_split"]
        st.caption(f"Refer when the p(malignant) spread across {uncertainty['source']} exceeds "
                   f"{uncertainty['p_malignant_spread']:.3f} ({uncertainty['rule']}; "
                   f"{'needs test-time augmentation' if uncertainty.get('needs_tta') else 'always on'}). On the "
                   f"{split_block['data']['split']} split: {split_block['flagged']} of {split_block['data']['images']} "
                   f"images flagged; stage-1 error rate {performance.rate(split_block['stage1_error_rate_flagged'])} "
                   f"flagged vs {performance.rate(split_block['stage1_error_rate_not_flagged'])} not flagged.")
    if metrics.get("members"):
        st.subheader("The ensemble and its members, on the same test cases")
        st.dataframe(performance.members_table(metrics), hide_index=True)
    st.subheader("Metrics per stage and end to end")
    st.caption(performance.protocol_line(metrics))
    st.dataframe(performance.metrics_table(metrics), hide_index=True)

    st.subheader("Confusion matrices")
    columns = st.columns(2)
    for column, (title, path) in zip(columns * 2, [("Stage 1", ("stage1",)), ("End to end: 8 subtypes", ("subtype8",)),
                                                   ("Patient level: stage 1", ("patient", "stage1"))]):
        block = performance.metric_block(metrics, path)
        if block and "confusion_matrix" in block:
            column.plotly_chart(confusion_figure(block, title), key=f"confusion_{'_'.join(path)}")

    st.subheader("ROC curves")
    curves_found = False
    columns = st.columns(2)
    for column, (title, path) in zip(columns, [("Stage 1", ("stage1",)), ("8 subtypes, one vs rest", ("subtype8",))]):
        block = performance.metric_block(metrics, path) or {}
        if block.get("roc_curves"):
            curves_found = True
            column.plotly_chart(roc_figure(block, title), key=f"roc_{'_'.join(path)}")
    if not curves_found:
        st.caption("ROC curve points are kept in the run's metrics.json, which is not next to this model.")

    per_magnification = metrics.get("per_magnification") or {}
    if per_magnification:
        st.subheader("Per magnification")
        st.dataframe(pd.DataFrame([{"magnification": m, "stage 1 accuracy": b["stage1"]["accuracy"],
                                    "malignant recall": b["stage1"].get("malignant_recall"),
                                    "8-subtype accuracy": b["subtype8"]["accuracy"],
                                    "images": b["stage1"]["data"]["images"], "protocol": b["stage1"]["data"]["protocol"]}
                                   for m, b in per_magnification.items()]).round(4), hide_index=True)

if history_file:
    st.subheader("Training curves")
    st.caption(f"Loss and metrics per epoch on the training split ({counts.get('train', '?')} images) and, "
               f"for 'val_' curves, the validation split ({counts.get('val', '?')} images); "
               f"{info['protocol']} protocol.")
    left, right = st.columns(2)
    for column, (title, part) in zip((left, right), performance.training_curves(pd.read_csv(history_file)).items()):
        if len(part):
            figure = px.line(part, x="epoch", y="value", color="metric", title=title)
            column.plotly_chart(figure.update_layout(**LAYOUT), key=f"history_{title.lower()}")

st.subheader("Published BreakHis results")
st.caption("Image-level splits let images of one patient fall in both training and test, which inflates "
           "accuracy; patient-wise results are the honest comparison. Numbers across protocols are not "
           "comparable.")
reference = pd.read_csv(REFERENCE_RESULTS)
ours = None if info["demo"] else metrics
st.dataframe(performance.comparison_table(reference, ours, info["name"]), hide_index=True)
