"""Class-balance views of an image table (plotly figures), before and after balancing.

The tables come from core.breakhis (manifest or scanned folder) and the balanced versions from
core.balance.apply_strategy, so what the Dataset page shows is exactly what training would use.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import plotly.express as px

from core import balance
from core.labels import CLASS_OF_SUBTYPE, CLASSES, MAGNIFICATIONS, SUBTYPES, pretty

CLASS_COLOURS = {"benign": "#4c9a8a", "malignant": "#b5525c"}
SUBTYPE_ORDER = [pretty(s) for s in SUBTYPES]
STRATEGY_TITLES = {
    "none": "As is", "class_weights": "Class weights", "oversample": "Oversampling",
    "undersample": "Undersampling", "synthetic": "GAN fill",
}
_LAYOUT = dict(template="plotly_white", margin=dict(l=10, r=10, t=50, b=10), height=360)


def imbalance_ratio(images: pd.DataFrame, column: str = "subtype", weights: dict | None = None) -> float:
    """Largest over smallest group size (1.0 is balanced); weighted when class weights are given."""
    counts = _counts(images, column, weights)
    counts = counts[counts > 0]
    return float(counts.max() / counts.min()) if len(counts) else float("nan")


def _counts(images: pd.DataFrame, column: str, weights: dict | None = None) -> pd.Series:
    """Images per group; with per-subtype loss weights, the effective (weighted) count."""
    if not weights:
        return images[column].value_counts().astype(float)
    per_image = images["subtype"].map(lambda subtype: weights.get(subtype, 1.0)).astype(float)
    return per_image.groupby(images[column]).sum()


def _subtype_table(images: pd.DataFrame, weights: dict | None = None) -> pd.DataFrame:
    real = images[~images["synthetic"].astype(bool)] if "synthetic" in images else images
    table = pd.DataFrame({"subtype": list(SUBTYPES)})
    table["real"] = table["subtype"].map(_counts(real, "subtype", weights)).fillna(0)
    if "synthetic" in images:
        synthetic = images[images["synthetic"].astype(bool)]
        table["synthetic"] = table["subtype"].map(synthetic["subtype"].value_counts()).fillna(0)
    else:
        table["synthetic"] = 0.0
    table["class"] = table["subtype"].map(CLASS_OF_SUBTYPE)
    table["Subtype"] = table["subtype"].map(pretty)
    return table


def class_figure(images: pd.DataFrame, title: str = "Benign vs malignant"):
    counts = images["label"].value_counts().reindex(CLASSES, fill_value=0)
    frame = pd.DataFrame({"Class": [pretty(c) for c in CLASSES], "Images": counts.values,
                          "class": list(CLASSES)})
    figure = px.bar(frame, x="Class", y="Images", color="class", color_discrete_map=CLASS_COLOURS,
                    text="Images", title=title)
    return figure.update_layout(showlegend=False, **_LAYOUT)


def subtype_figure(images: pd.DataFrame, title: str = "Images per subtype"):
    table = _subtype_table(images)
    figure = px.bar(table, x="Subtype", y="real", color="class", color_discrete_map=CLASS_COLOURS,
                    category_orders={"Subtype": SUBTYPE_ORDER}, text="real", title=title,
                    labels={"real": "Images", "class": "Class"})
    return figure.update_layout(**_LAYOUT)


def magnification_figure(images: pd.DataFrame, title: str = "Magnification x subtype"):
    """Heat map of image counts: a gap at one magnification shows up at a glance."""
    table = pd.crosstab(images["subtype"], images["magnification"])
    table = table.reindex(index=list(SUBTYPES), columns=list(MAGNIFICATIONS), fill_value=0)
    table.index = [pretty(s) for s in table.index]
    figure = px.imshow(table, text_auto=True, color_continuous_scale="Teal", aspect="auto",
                       labels=dict(x="Magnification", y="Subtype", color="Images"), title=title)
    return figure.update_layout(**_LAYOUT)


def case_figure(images: pd.DataFrame, title: str = "Images per case (patient)"):
    """One dot per case: a few heavy cases dominate BreakHis, which is why splits are patient-wise."""
    per_case = images.groupby(["case", "subtype"]).size().rename("Images").reset_index()
    per_case["Subtype"] = per_case["subtype"].map(pretty)
    figure = px.strip(per_case, x="Subtype", y="Images", hover_data=["case"],
                      category_orders={"Subtype": SUBTYPE_ORDER}, title=title)
    return figure.update_traces(marker_color="#2b6f8e").update_layout(**_LAYOUT)


def balanced_versions(train: pd.DataFrame, synthetic_dir: str | Path | None = None,
                      seed: int = 0) -> dict[str, tuple[pd.DataFrame, dict | None]]:
    """strategy -> (balanced table, class weights or None), via core.balance only.

    GAN fill is included only when a synthetic folder is given (the GAN comes later).
    """
    versions = {}
    for strategy in balance.STRATEGIES:
        if strategy == "synthetic" and not synthetic_dir:
            continue
        versions[strategy] = balance.apply_strategy(
            train, strategy, synthetic_dir=str(synthetic_dir) if synthetic_dir else None, seed=seed)
    return versions


def strategy_figure(versions: dict[str, tuple[pd.DataFrame, dict | None]]):
    """Subtype counts after each strategy, side by side (weighted counts for class weights)."""
    frames = []
    for strategy, (images, weights) in versions.items():
        table = _subtype_table(images, weights)
        table["Strategy"] = STRATEGY_TITLES.get(strategy, strategy)
        frames.append(table)
    long = pd.concat(frames).melt(id_vars=["Strategy", "Subtype", "class"], value_vars=["real", "synthetic"],
                                  var_name="Source", value_name="Images")
    long = long[long["Images"] > 0]
    figure = px.bar(long, x="Subtype", y="Images", color="class", pattern_shape="Source",
                    facet_col="Strategy", color_discrete_map=CLASS_COLOURS,
                    category_orders={"Subtype": SUBTYPE_ORDER, "Source": ["real", "synthetic"]},
                    title="Training images per subtype after each balancing strategy")
    figure.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return figure.update_layout(**{**_LAYOUT, "height": 420})


def strategy_summary(versions: dict[str, tuple[pd.DataFrame, dict | None]]) -> pd.DataFrame:
    """One row per strategy: how many images, how imbalanced, how many synthetic."""
    rows = []
    for strategy, (images, weights) in versions.items():
        synthetic = int(images["synthetic"].astype(bool).sum()) if "synthetic" in images else 0
        rows.append({
            "strategy": STRATEGY_TITLES.get(strategy, strategy),
            "training images": len(images),
            "synthetic images": synthetic,
            "subtype imbalance (max/min)": round(imbalance_ratio(images, "subtype", weights), 2),
            "class imbalance (max/min)": round(imbalance_ratio(images, "label", weights), 2),
            "how": "loss weights, data unchanged" if weights else "resampled table",
        })
    return pd.DataFrame(rows)


def thumbnails(images: pd.DataFrame, per_subtype: int = 4, seed: int = 0) -> dict[str, list[str]]:
    """Up to `per_subtype` existing image files per subtype (files may be absent for the manifest)."""
    chosen: dict[str, list[str]] = {}
    rng = random.Random(seed)
    for subtype in SUBTYPES:
        paths = images.loc[images["subtype"] == subtype, "path"].tolist()
        rng.shuffle(paths)
        chosen[subtype] = [p for p in paths[: per_subtype * 5] if Path(p).is_file()][:per_subtype]
    return chosen
