"""Model performance: the active model's card, metrics with their protocol, curves, and the literature."""

import pandas as pd
import plotly.express as px
import streamlit as st

from core.app import glossary, held_out, performance, referral_view, registry, run_files, session
from core.evaluation.figures import confusion_figure, reliability_figure, roc_figure
from core.model.folders import CLASSIFIER, ENSEMBLE, KIND_NAMES, card_kind
from core.paths import REFERENCE_RESULTS

session.require_router()
session.require("performance")

LAYOUT = dict(template="plotly_white", height=380, margin=dict(l=10, r=10, t=50, b=10))
TITLED = dict(margin=dict(l=10, r=10, t=110, b=10), height=460)  # a title and its wrapped subtitle (the data)


def table(frame: pd.DataFrame) -> None:
    """A table whose text columns are wide enough for their longest entry, the first one pinned while scrolling;
    a technical column (macro F1, ECE, Brier...) headed in plain words, its term defined in the tooltip."""
    first, widths = frame.columns[0], performance.text_widths(frame)
    config = {column: st.column_config.Column(glossary.column_label(column), help=glossary.column_help(column))
              for column in frame.columns if column in glossary.COLUMNS}
    config.update({column: st.column_config.TextColumn(glossary.column_label(column), width=width,
                                                       help=glossary.column_help(column), pinned=column == first)
                   for column, width in widths.items()})
    st.dataframe(frame, hide_index=True, column_config=config)


def caption(text: str) -> None:
    """A caption whose technical terms (pooled out-of-fold, ECE, p(subtype | class)...) are defined in its tooltip."""
    st.caption(text, help=glossary.explain(text))


def model_card(card: dict, info: dict) -> None:
    st.subheader("Model card")
    summary = performance.card_summary(card, info)
    left, right = st.columns(2)
    left.markdown(summary["title"])
    if summary["evidence"]:
        left.caption(summary["evidence"], help=glossary.explain(summary["evidence"]))
    left.markdown(summary["model"])
    right.markdown(summary["training"])  # the evidence statement is in summary["evidence"], once
    split = (card.get("training") or {}).get("split")  # a GAN or an older card may hold a name here
    if isinstance(split, dict) and split.get("images"):
        with st.expander(f"The split: {split.get('protocol', info['protocol'])}"):
            table(performance.split_summary(split))
            if split.get("shared_cases"):
                st.error(f"{split['shared_cases']} case(s) are in more than one split: the figures are optimistic.")
    with st.expander("Full card (JSON)"):
        st.json(card, expanded=False)


def evaluation(metrics: dict, files: run_files.RunFiles, card: dict, folder: str) -> None:
    predictions = referral_view.stored_predictions(folder)  # the run's kept predictions, for patient intervals
    if metrics.get("intervals"):
        st.subheader(performance.intervals_title(metrics))
        caption(performance.intervals_caption(metrics))
        table(performance.intervals_table(metrics))
    cv = files.cross_validation
    if cv:
        st.subheader(f"Cross-validation: {cv['protocol']}", help=glossary.explain(cv["protocol"]))
        caption(performance.cross_validation_caption(cv))
        table(performance.cross_validation_table(cv))
    calibration = metrics.get("calibration") or card.get("calibration")
    if calibration and calibration.get("temperatures"):
        st.subheader("Calibration")
        caption(performance.calibration_caption(calibration))  # says so when its effect was not measured
        if calibration.get("measured"):
            table(performance.calibration_table(calibration))
            st.plotly_chart(reliability_figure(calibration), key="reliability")
    else:
        st.caption("This model's probabilities are not calibrated (no temperature scaling in its card).")
    referral = (card.get("thresholds") or {}).get("referral")
    if referral and referral.get("stage1"):
        st.subheader("Per-stage referral")
        caption(referral_view.referral_caption(referral, predictions))
        curves = referral_view.risk_coverage_frame(referral)
        if len(curves):
            figure = px.line(curves, x=referral_view.RISK_X, y="accuracy", color="stage", hover_data=["threshold"],
                             title="Risk-coverage: accuracy of the images not referred")
            colours = {"stage1": "#b03030", "subtype": "#2b6f8e"}
            for point in referral_view.chosen_points(referral):
                figure.add_scatter(x=[point["x"]], y=[point["y"]], mode="markers", name=point["name"],
                                   marker=dict(size=12, color=colours[point["stage"]], symbol="x"))
            figure.update_layout(**LAYOUT)
            st.plotly_chart(figure, key="risk_coverage")
    if metrics.get("uncertainty"):
        st.subheader("Uncertainty flag")
        caption(referral_view.uncertainty_caption(metrics["uncertainty"],
                                                  (card.get("thresholds") or {}).get("uncertainty")))
    if metrics.get("members"):
        st.subheader("The ensemble and its members, on the same test cases")
        table(performance.members_table(metrics))
    st.subheader("Metrics per stage and end to end")
    caption(performance.protocol_line(metrics))
    table(performance.metrics_table(metrics, predictions))

    st.subheader("Confusion matrices")
    for column, (title, path, block) in zip(st.columns(2) * 2, performance.panels(
            metrics, performance.CONFUSION_PANELS, "confusion_matrix")):
        figure = confusion_figure(block, title).update_layout(title=performance.chart_title(title, block), **TITLED)
        column.plotly_chart(figure, key=f"confusion_{'_'.join(path)}")
    st.subheader("ROC curves")
    curves = performance.panels(metrics, performance.ROC_PANELS, "roc_curves")
    for column, (title, path, block) in zip(st.columns(2), curves):
        figure = roc_figure(block, title).update_layout(title=performance.chart_title(title, block), **TITLED)
        column.plotly_chart(figure, key=f"roc_{'_'.join(path)}")
    if not curves:
        st.caption("ROC curve points are kept in the run's metrics.json, which is not next to this model.")
    if metrics.get("per_magnification"):
        st.subheader("Per magnification")
        table(performance.per_magnification_table(metrics, predictions))
    patient_rule = (metrics.get("patient") or {}).get("malignant_threshold", 0.5)
    by_subtype = held_out.stage1_by_subtype(held_out.held_out_rows(predictions, metrics), patient_rule)
    if by_subtype is not None:
        st.subheader("Stage 1 by true subtype: which tumours it sends to the other class")
        caption(held_out.stage1_by_subtype_caption(by_subtype, metrics))
        table(by_subtype)


def training_curves(history: pd.DataFrame, card: dict, protocol: str) -> None:
    st.subheader("Training curves")
    caption(performance.history_caption(card, protocol))
    for column, (title, part) in zip(st.columns(2), performance.training_curves(history).items()):
        if len(part):
            figure = px.line(part, x="epoch", y="value", color="metric", title=title)
            column.plotly_chart(figure.update_layout(**LAYOUT), key=f"history_{title.lower()}")


st.title("Model performance")
folder = session.active_model()
if not folder:
    st.error(f"{registry.no_model_text()}. Put a model folder there or train one on the Retrain page.")
    st.stop()
try:
    card = session.model_card(folder)
except Exception as problem:
    st.error(f"The active model cannot be read: {problem}")
    st.stop()
if card_kind(card) not in (CLASSIFIER, ENSEMBLE):
    st.error(f"The active model folder holds a {KIND_NAMES.get(card_kind(card), card_kind(card))}, not a classifier: "
             "it has no classification performance. Choose another model in the sidebar.")
    st.stop()
info = registry.describe_model(card)
if unusable := session.model_problem(folder):  # the same words and check as Compare's
    st.error(f"{info['name']} cannot be made active: {unusable}. Diagnose's loader refuses such a model; the figures "
             "below are those of the model its card describes.", icon=":material/gpp_bad:")
files = run_files.read_run_files(folder, card)
for problem in files.problems:
    st.warning(problem)
metrics = files.metrics

model_card(card, info)
if info["demo"]:
    st.error("This is the DEMO model. It exists to show how the app works and has NO valid accuracy: "
             "it was not trained and evaluated on enough real data. No performance numbers are shown "
             "for it; compare against the published results below only after training a real model.",
             icon=":material/warning:")
elif not performance.metric_block(metrics, ("stage1",)):
    st.warning(performance.no_evaluation_text(card, folder))
else:
    try:
        evaluation(metrics, files, card, folder)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as problem:  # a block edited by hand
        st.warning(f"{files.metrics_source} holds a block of an unexpected shape ({type(problem).__name__}: "
                   f"{problem}): the rest of this model's figures are left out.")
        metrics = {}
if files.history is not None:
    training_curves(files.history, card, info["protocol"])

st.subheader("Published BreakHis results")
st.caption("Image-level splits let images of one patient fall in both training and test, which inflates "
           "accuracy; patient-wise results are the honest comparison. Numbers across protocols are not "
           "comparable.")
reference, problem = performance.reference_results(REFERENCE_RESULTS)
if problem:
    st.warning(problem)
else:
    table(performance.comparison_table(reference, None if info["demo"] else metrics, card))
