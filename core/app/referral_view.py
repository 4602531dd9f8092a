"""What the Model performance page says about the flags that refer an image to a pathologist: the per-stage
referral (its rule, where it was chosen, what it does there and on held-out images, with intervals and the
images and patients they are of) and the uncertainty flag (its rule as the card applies it, and whether it
separates errors on the held-out split).

A figure measured on the predictions its threshold was chosen on is in-sample, so optimistic: said so, next to
the held-out figure where the run kept one.
"""

from __future__ import annotations

import pandas as pd

from core.app.held_out import interval_method
from core.app.run_files import read_csv_file, run_file
from core.evaluation.intervals import COLUMNS, binomial_interval, format_share, share_interval
from core.evaluation.metrics import split_name
from core.evaluation.referral import stage_confidences
from core.model.decisions import threshold_text


def stored_predictions(model_folder) -> pd.DataFrame | None:
    """The calibrated predictions a run kept beside its model (a cross-validation's oof_predictions.csv: every
    image out of fold; a fields split's predictions.csv: its validation and test rows), or None."""
    for name in ("oof_predictions.csv", "predictions.csv"):
        table, _ = read_csv_file(run_file(model_folder, name))  # a damaged file: the counts in the card instead
        if table is not None and {*COLUMNS, "case", "split"} <= set(table.columns):
            return table
    return None


def _selection_rows(predictions: pd.DataFrame | None, referral: dict) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(the rows the thresholds were chosen on, the held-out rows they were then tested on) of the stored
    predictions: a split's validation and test rows, a cross-validation's pooled out-of-fold rows (none held
    out beyond them); None where the file does not match the referral block (another number of images)."""
    if predictions is None:
        return None, None
    val = predictions[predictions["split"] == "val"]
    chosen_on, held_out = (val, predictions[predictions["split"] == "test"]) if len(val) else (predictions, None)
    if len(chosen_on) != referral["stage1"].get("images"):
        return None, None
    return chosen_on.reset_index(drop=True), None if held_out is None else held_out.reset_index(drop=True)


def _unreferred(rows: pd.DataFrame, referral: dict) -> tuple[tuple[str, str], set[str]]:
    """Each stage's accuracy of the images it does not refer, with its interval (a patient bootstrap, or a
    Wilson interval where the bootstrap had no spread: core.evaluation.intervals) and counts; the methods used."""
    conf1, right1, conf2, right2 = stage_confidences(rows)
    keep1 = conf1 >= referral["stage1"]["threshold"]
    keep2 = keep1 & (conf2 >= referral["subtype"]["threshold"])
    blocks = [(share_interval(rows[keep], right[keep]), keep) for keep, right in ((keep1, right1), (keep2, right2))]
    texts = tuple(_share_text(block, int((~keep).sum()), len(rows)) for block, keep in blocks)
    return texts, {interval_method(block) for block, _ in blocks if block.get("low") is not None}  # none named
    # for a stage that refers every image (no images left to give an interval over)


def _counted(figures: dict, stage: str) -> str:
    """The same from the card's shares alone: a Wilson interval over the unreferred images (no patients kept)."""
    images = figures.get("images")
    share, accuracy = figures.get(f"{stage}_referred_share"), figures.get(f"{stage}_accuracy_unreferred")
    if images is None or share is None:
        return "n/a"
    kept = int(round((1 - share) * images))
    return _share_text(binomial_interval(int(round((accuracy or 0) * kept)), kept), images - kept, images)


def _share_text(block: dict, referred: int, images: int) -> str:
    if images and referred == images:  # not "the other 0 images, of 0 patients, n/a right"
        return f"every one of the {images} images referred"
    of = f", of {block['cases']} patients," if block.get("cases") is not None else ""
    return (f"{referred} of {images} images ({referred / images:.0%}) referred, the other {block['images']} "
            f"images{of} {format_share(block)} right" if images else "no images")


def referral_caption(referral: dict, predictions: pd.DataFrame | None = None) -> str:
    """The per-stage referral rule, where it was chosen, and what it does there (in-sample: optimistic) and,
    where the run kept them, on held-out images; `predictions`: stored_predictions, for the patients and a
    patient-bootstrap interval (else a Wilson interval over the images the card counts)."""
    stage1, subtype = referral["stage1"], referral["subtype"]
    figures = referral.get("figures") or {}
    one, two = threshold_text(stage1["threshold"]), threshold_text(subtype["threshold"])
    text = (f"Stage 1 is referred when the probability of its benign/malignant call is below {one} (calibrated "
            f"p(class) < {one}); the subtype when its probability within the chosen class is below {two} "
            f"(p(subtype | class) < {two}), or when stage 1 is referred. Chosen on {referral['selected_on']}: "
            f"{referral['rule']}.")
    chosen_on, held_out = _selection_rows(predictions, referral)
    if chosen_on is not None:  # what gave each interval, as the interval functions say (not assumed)
        (first, second), methods = _unreferred(chosen_on, referral)
    elif figures.get("stage1_referred_share") is not None:
        first, second = _counted(figures, "stage1"), _counted(figures, "subtype")
        methods = {"Wilson score over images (the predictions, and so the patients, are not kept beside this model)"}
    else:
        return text
    text += (" Measured on the same predictions the thresholds were chosen on (in-sample, so optimistic): "
             f"stage 1: {first}; subtype: {second}.")
    if held_out is not None and len(held_out):
        (first, second), more = _unreferred(held_out, referral)
        methods |= more
        text += f" On the held-out test images: stage 1: {first}; subtype: {second}."
    return text + (f" 95% intervals: {'; '.join(sorted(methods))}." if methods else "")


def uncertainty_caption(uncertainty: dict, in_card: dict | None = None) -> str:
    """The uncertainty flag's rule as the model applies it (the card's thresholds.uncertainty, `in_card`, else
    the evaluation's), how its flagged images fared on the split it was measured on, with Wilson intervals,
    and, when the flagged images are wrong no more often than the rest there, that it does not separate errors."""
    rule, on_split = in_card or uncertainty, uncertainty["on_split"]
    images, flagged = on_split["data"]["images"], on_split["flagged"]
    rates = [on_split["stage1_error_rate_flagged"], on_split["stage1_error_rate_not_flagged"]]
    shown = [format_share(binomial_interval(int(round(r * n)), n)) if r is not None else "n/a"
             for r, n in zip(rates, (flagged, images - flagged))]
    where = split_name(on_split["data"])
    text = (f"Refer when the p(malignant) spread across {rule['source']} exceeds {threshold_text(rule['p_malignant_spread'])} "
            f"({rule['rule']}; {'needs test-time augmentation' if rule.get('needs_tta') else 'always on'}). On the "
            f"{where} images ({images} images of {on_split['data'].get('cases', '?')} patients): {flagged} flagged; "
            f"stage-1 error rate {shown[0]} flagged vs {shown[1]} not flagged (Wilson intervals over images).")
    if abs(on_split.get("threshold", rule["p_malignant_spread"]) - rule["p_malignant_spread"]) > 1e-9:
        text += f" These figures were measured at the evaluation's threshold {threshold_text(on_split['threshold'])}."
    if None not in rates and rates[0] <= rates[1]:
        text += (f" The flag does not separate errors on the {where} images: flagged images are wrong no more often "
                 "than the rest, so a flag there says little about whether a call is right.")
    return text


RISK_X = "share of all images not referred"


def _of_all(referral: dict, stage: str) -> tuple[float | None, str]:
    """(factor turning a stage's coverage into a share of ALL images, its legend words). The subtype's curve is
    chosen among the images stage 1 does not refer: its coverage is scaled by their share of all images; a card
    without both counts keeps its own basis (None), and the legend says which."""
    if stage == "stage1":
        return 1.0, "stage 1"
    kept, every = referral["subtype"].get("images"), referral["stage1"].get("images")
    if kept is not None and every:
        return kept / every, "subtype (stage 1 and subtype not referred)"
    return None, "subtype (share of the stage-1 unreferred images, not of all)"


def risk_coverage_frame(referral: dict) -> pd.DataFrame:
    """Both stages' risk-coverage curves (share of all images not referred vs accuracy of those) for one plot."""
    frames = []
    for stage in ("stage1", "subtype"):
        curve = referral[stage].get("curve") or {}
        if curve.get("coverage"):
            factor, name = _of_all(referral, stage)
            frames.append(pd.DataFrame({RISK_X: [c * (factor or 1.0) for c in curve["coverage"]],
                                        "accuracy": curve["accuracy"],
                                        "threshold": curve["threshold"], "stage": name}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def chosen_points(referral: dict) -> list[dict]:
    """Each stage's chosen threshold as a marker on risk_coverage_frame's axis, named with its share of all images."""
    points = []
    for stage in ("stage1", "subtype"):
        chosen = referral[stage]
        if chosen.get("accuracy") is not None:
            factor, name = _of_all(referral, stage)
            x = chosen["coverage"] * (factor or 1.0)
            share = f"{x:.1%} of all images" if factor is not None else f"{x:.1%} of the stage-1 unreferred"
            points.append({"stage": stage, "x": x, "y": chosen["accuracy"],
                           "name": f"chosen {name.split(' (')[0]} threshold {threshold_text(chosen['threshold'])} ({share} kept)"})
    return points
