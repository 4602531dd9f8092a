"""Class-balance views of an image table (plotly figures), before and after balancing.

The tables come from core.data.breakhis (manifest or scanned folder) and the balanced versions from
core.data.balance.balance_preview (what the tf.data pipeline trains on); the fields pipeline, which
takes "none" or GAN fill only and always samples and weights the losses itself, is shown through
core.training.field_fit.sampling, what it trains with. So the Dataset page shows what training would use.
A folder is scanned only inside the folders the deployment allows (core.paths.dataset_dirs).
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px

from core.app.retrain import PIPELINE_LABELS, accepted_balances
from core.data import balance
from core.data.breakhis import subtype_counts, summarize
from core.data.download import completeness
from core.data.labels import CLASS_OF_SUBTYPE, CLASSES, MAGNIFICATIONS, SUBTYPES, pretty
from core.paths import dataset_dirs
from core.training.field_fit import sampling

CLASS_COLOURS = {"benign": "#4c9a8a", "malignant": "#b5525c"}
SUBTYPE_ORDER = [pretty(s) for s in SUBTYPES]
STRATEGY_TITLES = {
    "none": "As is", "class_weights": "Class weights", "oversample": "Oversampling",
    "undersample": "Undersampling", "synthetic": "GAN fill",
    "fields_none": "Fields: none", "fields_synthetic": "Fields: GAN fill",
}
STRATEGY_HOW = {
    "none": "nothing changed", "class_weights": "loss weights, data unchanged",
    "oversample": "smaller subtypes' images repeated", "undersample": "larger subtypes' images left out",
    "synthetic": "GAN images added",
    "fields_none": "fields pipeline: images drawn with probability 1/sqrt(their subtype's count), "
                   "class- and subtype-weighted losses (bars: expected draws x loss weight)",
    "fields_synthetic": "GAN images added, then drawn and weighted as in 'Fields: none'",
}
FIELDS = "fields_"  # prefix of the fields pipeline's versions (fields_versions)
MANIFEST_SOURCE = "BreakHis v1 (bundled manifest)"
GROUPS = {"label": CLASSES, "subtype": SUBTYPES}
SOURCES = ("real", "synthetic", "missing")  # the strategy figure's bar patterns
_LAYOUT = dict(template="plotly_white", margin=dict(l=10, r=10, t=70, b=10), height=360)


def scan_problem(folder: str, admin: bool = False, allowed: list[Path] | None = None) -> str | None:
    """Why the Dataset page will not scan `folder` (None when it may). Only the allowed folders
    (BREAKHIS_DATASET_DIRS) and what lies below them are scanned: a scan lists file names, so any
    other folder on the server is refused, before anything about it (even whether it exists) is said.
    An administrator is told which folders are allowed and how to change that; others are not."""
    allowed = dataset_dirs() if allowed is None else allowed
    path = Path(folder).expanduser()
    if not any(path.resolve().is_relative_to(root.resolve()) for root in allowed):
        if not admin:
            return ("This app may not scan that folder: only the data folders its administrator has opened for "
                    "scanning (and their sub-folders). Ask an administrator to open this one.")
        opened = ", ".join(str(root) for root in allowed) or "none (scanning is switched off)"
        return (f"This app may not scan that folder. Folders open for scanning, with their sub-folders: {opened}. "
                f"Set BREAKHIS_DATASET_DIRS (folders separated by '{os.pathsep}') on the server and restart the app.")
    if path.is_file():
        return f"{folder} is a file, not a folder: name the folder that holds the images."
    if not path.is_dir():
        return f"Folder not found: {folder}"
    return None


def counted(number: int, noun: str) -> str:
    """'1 case', '2 cases', '7,909 images'."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def source_line(images: pd.DataFrame, folder: str | None = None, what: str = "image") -> str:
    """Where the images come from and how many, under every chart's title: a chart exported or
    screenshotted alone still says what it counts. `folder` None: the bundled manifest."""
    return f"{f'folder {folder}' if folder else MANIFEST_SOURCE}, {counted(len(images), what)}"


def folder_caption(images: pd.DataFrame, folder: str, skipped: int) -> str:
    """The sentence next to a scanned folder's figures: what was found there, and how it differs from
    the full BreakHis (core.data.download.completeness, as `python -m core index` prints it)."""
    counts = summarize(images)
    other = f"; {counted(skipped, 'other file')} skipped (see the scan report)" if skipped else ""
    return (f"Scanned folder {folder}: {counted(counts['images'], 'BreakHis image')} of "
            f"{counted(counts['cases'], 'case')} and {counted(counts['slides'], 'slide')}, labelled by their file "
            f"names{other}. {completeness(counts)}")


def scan_warnings(result) -> list[str]:
    """What in a scan (core.data.breakhis.IndexResult) is likely a labelling mistake, said beside the figures:
    the scan report that lists the files sits in a closed expander."""
    warnings = []
    if crossed := len(result.cross_patient_copies):
        warnings.append(f"{counted(crossed, 'image')} byte-identical to an image of another patient: counted once "
                        "(one of the two patient names must be wrong; see the scan report for both files).")
    if misfiled := len(result.misfiled):
        warnings.append(f"{counted(misfiled, 'file')} in a folder that names another class, subtype, magnification "
                        "or slide than the file name (labels come from file names; see the scan report).")
    return warnings


def training_caption(train: pd.DataFrame) -> str:
    """What the balancing views count: the training split of a patient-wise split."""
    return (f"Balancing applies to the training split only: patient-wise split (seed 0), "
            f"{counted(len(train), 'training image')} from {counted(train['case'].nunique(), 'case')}. Class "
            "weights leave the data unchanged and reweight the loss; the bars show the weighted (effective) counts.")


def fields_caption() -> str:
    """What the fields pipeline (the CPU default and the bundled model's recipe) does with its Balancing choice,
    named as the Retrain form names it (the command line's flag is the Dataset page heading's tooltip)."""
    taken = " or ".join(accepted_balances("fields"))
    choice = PIPELINE_LABELS["fields"].split(":")[0]
    return (f"The {choice} pipeline (the Retrain form's Pipeline choice \"{choice}\", its default on a CPU, and the "
            f"bundled model's recipe) takes {taken} only as its Balancing: it always draws images with probability "
            "1/sqrt(their subtype's count) and weights both losses so that every class and subtype counts equally, "
            "so 'none' there is balanced too. The bars show what its subtype loss sees per epoch.")


def _titled(title: str, source: str | None) -> str:
    return f"{title}<br><sup>{source}</sup>" if source else title


def group_counts(images: pd.DataFrame, column: str = "subtype") -> pd.Series:
    """Images per class ("label") or per subtype, every one listed, 0 where it has no image."""
    return images[column].value_counts().reindex(list(GROUPS[column]), fill_value=0)


def imbalance_ratio(images: pd.DataFrame, column: str = "subtype") -> float:
    """Largest over smallest class or subtype, every one counted (1.0 is balanced): infinite when one
    has no image, so a missing group never reads as balance; NaN when there is no image at all."""
    return _ratio(group_counts(images, column))


def _ratio(counts: pd.Series) -> float:
    if not len(counts) or counts.max() <= 0:
        return float("nan")
    return float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")


def absent(counts: pd.Series) -> list[str]:
    """The classes or subtypes (shown names) with no image."""
    return [pretty(group) for group, count in counts.items() if count <= 0]


def imbalance_text(counts: pd.Series, digits: int = 1, reason: bool = True) -> str:
    """'2.2 : 1', or where a group has no image 'n/a' with which (reason=False: 'n/a' alone, for a metric
    whose reason absence_note gives): 'n/a: Malignant absent', 'n/a: 4 of 8 subtypes absent'."""
    ratio = _ratio(counts)
    if math.isfinite(ratio):
        return f"{ratio:.{digits}f} : 1"
    missing = absent(counts)
    if not reason:
        return "n/a"
    if len(missing) == len(counts):
        return "n/a: no images"
    if len(missing) == 1:
        return f"n/a: {missing[0]} absent"
    return f"n/a: {len(missing)} of {len(counts)} {'subtypes' if len(counts) == len(SUBTYPES) else 'classes'} absent"


def absence_note(images: pd.DataFrame) -> str | None:
    """Which classes and subtypes have no image (None when all have some): why an imbalance reads n/a."""
    parts = []
    if missing := absent(group_counts(images, "label")):
        parts.append(f"no {' or '.join(missing).lower()} image")
    if missing := absent(group_counts(images, "subtype")):
        parts.append(f"no image of {len(missing)} of {len(SUBTYPES)} subtypes ({', '.join(missing)})")
    if not parts:
        return None
    return "No imbalance ratio where a group is absent: " + "; ".join(parts) + "."


def class_figure(images: pd.DataFrame, title: str = "Benign vs malignant", source: str | None = None):
    counts = group_counts(images, "label")
    frame = pd.DataFrame({"Class": [pretty(c) for c in CLASSES], "Images": counts.values,
                          "class": list(CLASSES)})
    figure = px.bar(frame, x="Class", y="Images", color="class", color_discrete_map=CLASS_COLOURS,
                    text="Images", title=_titled(title, source))
    return figure.update_layout(showlegend=False, **_LAYOUT)


def subtype_figure(images: pd.DataFrame, title: str = "Images per subtype", source: str | None = None):
    real = images[~images["synthetic"].astype(bool)] if "synthetic" in images else images
    table = pd.DataFrame({"subtype": list(SUBTYPES), "real": subtype_counts(real).to_numpy()})
    table["class"], table["Subtype"] = table["subtype"].map(CLASS_OF_SUBTYPE), table["subtype"].map(pretty)
    figure = px.bar(table, x="Subtype", y="real", color="class", color_discrete_map=CLASS_COLOURS,
                    category_orders={"Subtype": SUBTYPE_ORDER}, text="real", title=_titled(title, source),
                    labels={"real": "Images", "class": "Class"})
    return figure.update_layout(**_LAYOUT)


def magnification_figure(images: pd.DataFrame, title: str = "Magnification x subtype", source: str | None = None):
    """Heat map of image counts: a gap at one magnification shows up at a glance."""
    table = pd.crosstab(images["subtype"], images["magnification"])
    table = table.reindex(index=list(SUBTYPES), columns=list(MAGNIFICATIONS), fill_value=0)
    table.index = [pretty(s) for s in table.index]
    figure = px.imshow(table, text_auto=True, color_continuous_scale="Teal", aspect="auto",
                       labels=dict(x="Magnification", y="Subtype", color="Images"),
                       title=_titled(title, source))
    return figure.update_layout(**_LAYOUT)


def case_figure(images: pd.DataFrame, title: str = "Images per case (patient)", source: str | None = None):
    """One dot per case: a few heavy cases dominate BreakHis, which is why splits are patient-wise."""
    per_case = images.groupby(["case", "subtype"]).size().rename("Images").reset_index()
    per_case["Subtype"] = per_case["subtype"].map(pretty)
    figure = px.strip(per_case, x="Subtype", y="Images", hover_data=["case"],
                      category_orders={"Subtype": SUBTYPE_ORDER}, title=_titled(title, source))
    return figure.update_traces(marker_color="#2b6f8e").update_layout(**_LAYOUT)


def balanced_versions(train: pd.DataFrame, synthetic_dir: str | Path | None = None,
                      seed: int = 0) -> dict[str, pd.DataFrame]:
    """strategy -> core.data.balance.balance_preview of the training table (what training would use).

    GAN fill is included only when a folder of synthetic images is given.
    """
    folder = str(synthetic_dir) if synthetic_dir else None
    return {strategy: balance.balance_preview(train, strategy, synthetic_dir=folder, seed=seed)
            for strategy in balance.STRATEGIES if strategy != "synthetic" or folder}


def shortfall(preview: pd.DataFrame) -> pd.Series:
    """GAN images each subtype still lacked to reach the GAN fill's target (balance_preview's
    attrs["shortfall"]; 0 for every other strategy): a fill short of images is not a balanced set."""
    missing = preview.attrs.get("shortfall") or {}
    return pd.Series([int(missing.get(s, 0)) for s in preview.index], index=preview.index, dtype=int)


def shortfall_text(preview: pd.DataFrame) -> str:
    """'612 images still missing (Adenosis 212, ...)', or '' when the strategy reached its target."""
    missing = shortfall(preview)
    if not missing.sum():
        return ""
    return (f"{counted(int(missing.sum()), 'image')} still missing ("
            + ", ".join(f"{pretty(s)} {n}" for s, n in missing.items() if n) + ")")


def fields_versions(previews: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """"fields_<strategy>" -> what the fields pipeline makes of balance_preview's version, for each
    strategy it takes (core.app.retrain.accepted_balances): "none" there is not "as is"."""
    return {FIELDS + strategy: fields_preview(previews[strategy])
            for strategy in accepted_balances("fields") if strategy in previews}


def fields_preview(preview: pd.DataFrame) -> pd.DataFrame:
    """A balance_preview as the fields pipeline's losses see it (core.training.field_fit.sampling):
    every epoch draws as many images as there are, a subtype's share growing as the square root of
    its count, and the loss weights make each subtype count equally. "weight" becomes an image's
    expected draws times its subtype loss weight, so "effective" is what the subtype loss sees."""
    subtypes = np.repeat(preview.index.to_numpy(), preview["after"].to_numpy())
    fields = preview.copy()
    fields.attrs = dict(preview.attrs)
    if not len(subtypes):
        return fields.assign(weight=0.0, effective=0.0)
    draw, _, subtype_weights = sampling(subtypes)
    drawn = pd.Series(draw * len(subtypes)).groupby(subtypes).sum().reindex(preview.index, fill_value=0.0)
    per_image = drawn / preview["after"].where(preview["after"] > 0)
    fields["weight"] = (per_image * pd.Series(subtype_weights, index=list(SUBTYPES))).fillna(0.0)
    fields["effective"] = fields["after"] * fields["weight"]
    return fields


def strategy_figure(previews: dict[str, pd.DataFrame], source: str | None = None,
                    title: str = "Training images per subtype after each balancing strategy"):
    """Subtype counts after each strategy, side by side (effective, weighted counts for class weights);
    the images a GAN fill still lacked stand as faint "missing" bars on top of its own."""
    frames = []
    for strategy, preview in previews.items():
        frame = pd.DataFrame({"subtype": preview.index,
                              "real": (preview["after"] - preview["synthetic_added"]) * preview["weight"],
                              "synthetic": preview["synthetic_added"] * preview["weight"],
                              "missing": shortfall(preview)})
        frame["class"], frame["Subtype"] = frame["subtype"].map(CLASS_OF_SUBTYPE), frame["subtype"].map(pretty)
        frame["Strategy"] = STRATEGY_TITLES.get(strategy, strategy)
        frames.append(frame)
    long = pd.concat(frames).melt(id_vars=["Strategy", "Subtype", "class"], value_vars=list(SOURCES),
                                  var_name="Source", value_name="Images")
    long = long[long["Images"] > 0]
    figure = px.bar(long, x="Subtype", y="Images", color="class", pattern_shape="Source",
                    facet_col="Strategy", color_discrete_map=CLASS_COLOURS,
                    category_orders={"Subtype": SUBTYPE_ORDER, "Source": list(SOURCES)},
                    title=_titled(title, source))
    figure.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    figure.for_each_trace(lambda t: t.update(opacity=0.3) if t.name.endswith("missing") else None)
    return figure.update_layout(**{**_LAYOUT, "height": 420})


def strategy_summary(previews: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per strategy: how many images, how imbalanced (as the loss sees it; n/a with the groups
    that have no training image), how many synthetic, and how many a GAN fill still lacked."""
    rows = []
    for strategy, preview in previews.items():
        by_class = preview["effective"].groupby(preview.index.map(CLASS_OF_SUBTYPE)).sum()
        rows.append({
            "strategy": STRATEGY_TITLES.get(strategy, strategy),
            "training images": int(preview["after"].sum()),
            "synthetic images": int(preview["synthetic_added"].sum()),
            "images still missing": int(shortfall(preview).sum()),
            "subtype imbalance (max/min)": imbalance_text(preview["effective"], digits=2),
            "class imbalance (max/min)": imbalance_text(by_class.reindex(list(CLASSES), fill_value=0), digits=2),
            "how": "; ".join(filter(None, (STRATEGY_HOW.get(strategy, strategy), shortfall_text(preview)))),
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
