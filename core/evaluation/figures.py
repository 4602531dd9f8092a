"""Plotly figures of evaluation results, shared by the run's report.html and the Model performance page.

Every figure's title carries the data it was computed on (split, protocol, images, cases), so a
screenshot never loses its context. They accept metric blocks from metrics.json or from a model
card, where ROC curve points are left out: a missing part is drawn as far as it goes.
"""

from __future__ import annotations

import plotly.graph_objects as go

from core.data.labels import pretty
from core.evaluation.metrics import split_name

LAYOUT = dict(template="plotly_white", height=420, margin=dict(l=10, r=10, t=60, b=10))


def scope_text(data: dict | None) -> str:
    data = data or {}
    name = split_name(data)
    where = name if name == "out-of-fold" else f"{name} split"
    return (f"{where}, {data.get('protocol', 'unknown protocol')}, "
            f"{data.get('images', '?')} images, {data.get('cases', '?')} cases")


def confusion_figure(block: dict, title: str) -> go.Figure:
    """Counts of true (rows) x predicted (columns) labels."""
    names = [pretty(label) for label in block["confusion_matrix"]["labels"]]
    matrix = block["confusion_matrix"]["matrix"]
    figure = go.Figure(go.Heatmap(z=matrix, x=names, y=names, text=matrix, texttemplate="%{text}",
                                  colorscale="Teal", showscale=False))
    return figure.update_layout(title=f"{title} ({scope_text(block.get('data'))})", xaxis_title="predicted",
                                yaxis_title="true", yaxis_autorange="reversed", **LAYOUT)


def roc_figure(block: dict, title: str) -> go.Figure:
    """One-vs-rest ROC curve per class with its AUC, against the chance line."""
    figure = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                                  line=dict(dash="dot", color="#9aa7ad")))
    aucs = (block.get("roc_auc") or {}).get("per_class") or {}
    for label, curve in (block.get("roc_curves") or {}).items():
        auc = aucs.get(label)
        figure.add_scatter(x=curve["fpr"], y=curve["tpr"], mode="lines",
                           name=f"{pretty(label)} (AUC {auc:.3f})" if auc is not None else pretty(label))
    return figure.update_layout(title=f"{title} ({scope_text(block.get('data'))})", xaxis_title="false positive rate",
                                yaxis_title="true positive rate", **LAYOUT)


def reliability_figure(calibration: dict, split: str = "test") -> go.Figure:
    """Reliability diagram of each head on `split`: accuracy against confidence per bin, before and
    after temperature scaling, against the diagonal of perfect calibration (core.training.calibrate_run)."""
    measured = (calibration.get("measured") or {}).get(split) or {}
    figure = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                                  line=dict(dash="dot", color="#9aa7ad")))
    for head, m in (measured.get("heads") or {}).items():
        for when, dash in (("before", "dot"), ("after", "solid")):
            bins = m[f"reliability_{when}"]
            points = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"]) if c is not None]
            figure.add_scatter(x=[c for c, _ in points], y=[a for _, a in points], mode="lines+markers",
                               line=dict(dash=dash), name=f"{head} {when} (ECE {m[f'ece_{when}']:.3f})")
    return figure.update_layout(title=f"Reliability ({scope_text(measured.get('data'))})",
                                xaxis_title="confidence (top-label probability)", yaxis_title="accuracy",
                                xaxis_range=[0, 1], yaxis_range=[0, 1], **LAYOUT)
