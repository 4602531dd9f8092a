"""The slide-level call: the share of tissue tiles called malignant, against a validated threshold.

Rule: a tile is called malignant when its calibrated p(malignant) >= 0.5 (the image rule); the
slide is malignant when the share of its tissue tiles called malignant reaches the threshold in
card["thresholds"]["slide_malignant_share"]. A share, not a mean of probabilities, so that one
small focus of carcinoma in a large benign slide still moves the call, and a threshold below 0.5
says how small a focus is enough.

The threshold is chosen on the VALIDATION split of the model's own training data
(`choose_slide_threshold`): BreakHis has no whole slides, so each validation patient stands for a
slide and each of its fields for a tile (a whole-field model's tile IS a field,
core.data.scale.model_scale). The threshold is the one with the best balanced accuracy over the
validation patients, ties broken towards 0.5; without validation patients of both classes it is
0.5, and the call says it was not chosen on validation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TILE_RULE = "a tile is malignant when its calibrated p(malignant) >= 0.5"
DEFAULT_SHARE = 0.5


def slide_threshold_of(card: dict) -> tuple[float, str]:
    """(threshold, where it comes from) from a model card."""
    thresholds = card.get("thresholds") or {}
    if "slide_malignant_share" in thresholds:
        selection = thresholds.get("slide_malignant_share_selection") or {}
        on = selection.get("selected_on") or {}
        where = (f"chosen on validation ({on.get('cases', '?')} patients as slides, {on.get('images', '?')} "
                 f"fields as tiles)") if on else "from the model card"
        return float(thresholds["slide_malignant_share"]), where
    return DEFAULT_SHARE, "default 0.5: not chosen on validation for this model"


def slide_call(tiles: pd.DataFrame, card: dict) -> dict:
    """{"label", "malignant_share", "threshold", "rule", ...} for a slide's tissue tiles."""
    threshold, where = slide_threshold_of(card)
    called = tiles["p_malignant"].to_numpy() >= 0.5
    share = float(called.mean()) if len(called) else 0.0
    return {"label": "malignant" if share >= threshold else "benign", "malignant_share": share,
            "threshold": threshold, "threshold_source": where, "tissue_tiles": int(len(called)),
            "malignant_tiles": int(called.sum()), "mean_p_malignant": float(tiles["p_malignant"].mean()),
            "rule": f"malignant when the share of tissue tiles called malignant ({TILE_RULE}) "
                    f"is >= {threshold:.3g}"}


def choose_slide_threshold(val_table: pd.DataFrame) -> dict:
    """The share threshold from a validation table (columns case, label, p_malignant; one row per
    field): best balanced accuracy over the cases, candidates the midpoints of their shares."""
    if val_table is None or not len(val_table):
        return {"threshold": DEFAULT_SHARE, "selected_on": None, "reason": "no validation images"}
    table = val_table.assign(called=(val_table["p_malignant"].to_numpy() >= 0.5).astype(float))
    cases = table.groupby("case").agg(share=("called", "mean"), label=("label", "first"), n=("called", "size"))
    if cases["label"].nunique() < 2:
        return {"threshold": DEFAULT_SHARE, "selected_on": None,
                "reason": "no validation cases of both classes to choose it on: the default 0.5"}
    shares = np.sort(cases["share"].unique())
    candidates = np.unique(np.concatenate([[DEFAULT_SHARE], (shares[1:] + shares[:-1]) / 2.0]))
    malignant = (cases["label"] == "malignant").to_numpy()

    def balanced(threshold):
        called = cases["share"].to_numpy() >= threshold
        return 0.5 * (called[malignant].mean() + (~called[~malignant]).mean())

    best = max(candidates, key=lambda c: (round(balanced(c), 12), -abs(c - DEFAULT_SHARE)))
    return {"threshold": float(best), "balanced_accuracy_on_validation": float(balanced(best)),
            "selected_on": {"split": "val", "level": "patient as slide, field as tile",
                            "cases": int(len(cases)), "images": int(cases["n"].sum())},
            "rule": "best balanced accuracy over the validation patients, ties towards 0.5"}


def validate_slide_threshold(model_dir, data_dir) -> dict:
    """Choose the slide threshold on the model's validation split and write it into its card.

    The split is rebuilt from the card (protocol, seed, magnification) on `data_dir` and must have
    the card's data fingerprint, so the images are the ones the model was validated on."""
    from core.data.images import load_image
    from core.data.selection import SplitSpec, select_images
    from core.errors import UserInputError
    from core.model.folders import update_card
    from core.model.loading import load_predictor

    predictor = load_predictor(model_dir)
    training = predictor.card.get("training") or {}
    spec = SplitSpec(protocol=training.get("split_protocol", "patient-wise"), seed=int(training.get("seed", 0)),
                     magnification=training.get("magnification", "all"))
    selection = select_images(data_dir, spec, report_skipped=False)
    expected = training.get("data_fingerprint")
    if expected and selection.fingerprint != expected:
        raise UserInputError(f"'{data_dir}' is not the data this model was trained on (fingerprint "
                             f"{selection.fingerprint}, the card says {expected}).")
    val = selection.part("val").reset_index(drop=True)
    images = [load_image(path, check_histology=False).rgb for path in val["path"]]
    p = predictor.calibrate(predictor.probabilities(images))["stage1"][:, 1] if len(images) else []
    chosen = choose_slide_threshold(val.assign(p_malignant=p))
    thresholds = dict(predictor.card.get("thresholds") or {})
    thresholds["slide_malignant_share"] = chosen["threshold"]
    thresholds["slide_malignant_share_selection"] = {k: v for k, v in chosen.items() if k != "threshold"}
    update_card(model_dir, thresholds=thresholds)
    return chosen
