"""Which backbone (and input size) learns best? The same split, the same options, one table.

    python -m core compare --data DIR --out runs/compare --backbones small_cnn densenet121 \\
        [--input-sizes 128 224] [--candidates densenet121@160 ...] [other train options]

Every candidate is an ordinary run folder OUT/<backbone>-<size> trained on the same patient-wise
split (the split depends only on the data, protocol and seed). The choice is made on the
VALIDATION split; test figures, with their bootstrap intervals over cases, are shown next to it
for the record, with the majority and colour/texture baselines on the same test cases.
Writes OUT/comparison.csv, OUT/comparison.md and OUT/comparison.html (plotly).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from core.errors import UserInputError
from core.evaluation.intervals import HEADLINE, format_interval
from core.jsonfile import read_json
from core.paths import claim_run


def _row(name: str, metrics: dict, seconds: float | None, epochs: int | None) -> dict:
    validation = metrics.get("validation") or {}
    row = {"candidate": name, **{f"val {k}": validation.get(k) for k in HEADLINE}}
    for level in ("image", "patient"):
        for key in HEADLINE:
            row[f"test {level} {key}"] = (metrics["intervals"][level].get(key) or {}).get("value")
            row[f"test {level} {key} (95% CI)"] = format_interval(metrics["intervals"][level].get(key))
    data = metrics["data"]
    return {**row, "test images": data["images"], "test cases": data["cases"], "protocol": data["protocol"],
            "training seconds": None if seconds is None else round(seconds, 1), "epochs": epochs}


def candidates(backbones: list[str] | None, input_sizes: list[int] | None, named: list[str] | None,
               default_size: int) -> list[tuple[str, int]]:
    """(backbone, input size) pairs: every backbone at every size, plus 'backbone@size' names."""
    pairs = [(b, s) for b in backbones or [] for s in input_sizes or [default_size]]
    for name in named or []:
        backbone, _, size = name.partition("@")
        try:
            pairs.append((backbone, int(size) if size else default_size))
        except ValueError:
            raise UserInputError(f"--candidates {name}: the size after @ must be a whole number of pixels, "
                                 "e.g. densenet121@128") from None
    if not pairs:
        raise UserInputError("Name the candidates: --backbones (and --input-sizes) or --candidates BACKBONE@SIZE ...")
    return pairs


def compare(config, pairs: list[tuple[str, int]]) -> pd.DataFrame:
    """Train every (backbone, input size) on config's split; returns and writes the comparison."""
    from core.training.config import checked, refuse_unmeasured

    refuse_unmeasured(config, "compare", "candidate")
    out = Path(config.out)
    runs = {f"{backbone}-{size}": dataclasses.replace(config, backbone=backbone, input_size=size,
                                                      out=str(out / f"{backbone}-{size}")) for backbone, size in pairs}
    if len(runs) < len(pairs):
        raise UserInputError("a candidate is named twice: " + ", ".join(sorted({f"{b}@{s}" for b, s in pairs
                                                                                 if pairs.count((b, s)) > 1})))
    for name, run in runs.items():  # every candidate's settings before the first one trains
        try:
            checked(run)
        except UserInputError as error:
            raise UserInputError(f"candidate {name}: {error}") from None
    with claim_run(out, ("comparison.csv",), holds="a comparison"):  # this process's until the table is written
        return _compare(out, runs)


def _compare(out: Path, runs: dict) -> pd.DataFrame:
    from core.training.fit import train

    rows, metrics = [], None
    for name, run in runs.items():
        started = time.perf_counter()
        result = train(run)
        metrics = read_json(out / name / "metrics.json")
        rows.append(_row(name, metrics, time.perf_counter() - started, result["epochs_run"]))
    for name, baseline in (metrics.get("baselines") or {}).items():  # the same test cases for every run
        rows.append(_row(f"baseline: {baseline['name']}", baseline, None, None))
    table = pd.DataFrame(rows)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(format_comparison(table) + "\n", encoding="utf-8")
    comparison_figure(table).write_html(out / "comparison.html", include_plotlyjs=True)
    return table


def format_comparison(table: pd.DataFrame) -> str:
    columns = ["candidate", "val stage1_balanced_accuracy", "val subtype_macro_f1",
               "test patient stage1_accuracy (95% CI)", "test image stage1_balanced_accuracy (95% CI)",
               "test image stage1_auc (95% CI)", "test image subtype_macro_f1 (95% CI)", "training seconds"]
    shown = table[columns].copy()
    for column in ("val stage1_balanced_accuracy", "val subtype_macro_f1"):
        shown[column] = shown[column].map(lambda v: "n/a" if pd.isna(v) else f"{v:.3f}")
    shown["training seconds"] = shown["training seconds"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    first = table.iloc[0]
    header = (f"Same split for every candidate ({first['protocol']}); chosen on validation, test shown for the "
              f"record: {first['test images']} test images of {first['test cases']} cases.")
    lines = [header, "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in values) + " |" for values in shown.itertuples(index=False)]
    return "\n".join(lines)


def comparison_figure(table: pd.DataFrame):
    """Validation balanced accuracy and macro-F1 per candidate, and the test values with intervals."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for key, title in (("val stage1_balanced_accuracy", "validation: stage-1 balanced accuracy"),
                       ("val subtype_macro_f1", "validation: subtype macro-F1"),
                       ("test patient stage1_accuracy", "test: patient-level stage-1 accuracy")):
        figure.add_bar(name=title, x=table["candidate"], y=table[key])
    return figure.update_layout(barmode="group", template="plotly_white", yaxis_range=[0, 1],
                                title="Candidates on the same patient-wise split")
