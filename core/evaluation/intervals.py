"""How sure is a metric computed on a handful of patients? Bootstrap intervals over cases.

Images of one patient are not independent (near-duplicate fields of the same tumour), so the
resampling unit is the case: each resample draws cases with replacement and keeps all their
images. A resample is a vector of case counts, so every metric below is computed for all
resamples at once as weighted sums (an evaluation has tens of these intervals; per-resample
loops over scikit-learn took minutes). Written here rather than with scipy.stats.bootstrap
because that resamples rows, not clusters, and cannot skip resamples where a metric is
undefined (an AUC of a resample without benign cases); here those are skipped and counted.

A share (accuracy, malignant recall, a share of images right) whose bootstrap has no spread (4 of 4 patients
right: every resample is 1.0) would read "95% CI 1.00-1.00"; _interval then gives the Wilson score interval
over the patients resampled instead, and each figure says which method gave its interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.data.labels import CLASS_OF_SUBTYPE, CLASSES, SUBTYPES
from core.evaluation.metrics import headline_not_applicable

N_RESAMPLES = 2000
LEVEL = 0.95
BOOTSTRAP = "percentile bootstrap over cases (whole patients resampled with replacement)"


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _accuracy(w, t):
    return _ratio(w @ (t["label"] == t["pred_label"]), w.sum(1))


def _balanced_accuracy(w, t):  # every resample at once; metrics.balanced_accuracy is the one-table form
    """Mean of the two classes' recalls; undefined (NaN: skipped and counted) in a resample that lacks a class,
    as the point figure is on such a split (metrics.not_applicable), not the one recall it has."""
    recalls = np.stack([_ratio(w @ ((t["label"] == c) & (t["pred_label"] == c)), w @ (t["label"] == c))
                        for c in CLASSES])
    return recalls.mean(axis=0)


def _malignant_recall(w, t):
    malignant = t["label"] == "malignant"
    return _ratio(w @ (malignant & (t["pred_label"] == "malignant")), w @ malignant)


def _auc(w, t):
    """Weighted Mann-Whitney AUC of p(malignant), ties counted half, for every weight row."""
    order = np.argsort(t["p_malignant"], kind="stable")
    scores, positive = t["p_malignant"][order], (t["label"] == "malignant")[order]
    w = w[:, order]
    negative_weight = w * ~positive
    # Per group of tied scores: negatives in lower groups count 1, negatives in the same group 1/2.
    _, first, counts = np.unique(scores, return_index=True, return_counts=True)
    tie_group = np.repeat(np.arange(len(first)), counts)
    group_negative = np.zeros((len(w), len(first)))
    np.add.at(group_negative.T, tie_group, negative_weight.T)
    before_group = np.cumsum(group_negative, axis=1) - group_negative
    wins = before_group[:, tie_group] + 0.5 * group_negative[:, tie_group]
    pairs = (w * positive).sum(1) * negative_weight.sum(1)
    return _ratio((w * positive * wins).sum(1), pairs)


def _subtype_f1(w, truth, called):
    """Per resample: one subtype's F1 against the rest (0 where nothing is true or called) and whether
    the resample has a true image of it."""
    tp, fp, fn = w @ (truth & called), w @ (~truth & called), w @ (truth & ~called)
    return np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-12), 0.0), w @ truth > 0


def _macro_f1(w, t):
    """Macro F1 over the subtypes present (by true label) in each resample, as scikit-learn's; undefined (NaN)
    in a resample without a true subtype of either class, as the point figure is (metrics.not_applicable)."""
    scores, present = zip(*(_subtype_f1(w, t["subtype"] == s, t["pred_subtype"] == s) for s in SUBTYPES))
    scores, present = np.stack(scores), np.stack(present)
    both = np.all([present[[CLASS_OF_SUBTYPE[s] == c for s in SUBTYPES]].any(0) for c in CLASSES], axis=0)
    return np.where(both, _ratio((scores * present).sum(0), present.sum(0)), np.nan)


# name -> metric(weights (R, N), columns of the table as arrays) -> (R,)
HEADLINE_METRICS = {"stage1_accuracy": _accuracy, "stage1_balanced_accuracy": _balanced_accuracy,
                    "malignant_recall": _malignant_recall, "stage1_auc": _auc, "subtype_macro_f1": _macro_f1}
# The headline figures that are a share of right calls, and which rows they are a share of: where their bootstrap
# has no spread, the Wilson interval over those rows' patients stands in (_interval).
SHARES = {"stage1_accuracy": lambda t: np.ones(len(t["label"]), bool), "malignant_recall": lambda t: t["label"] == "malignant"}
# The headline figures, in the order every table of them uses (evaluation, cross-validation,
# comparisons, the app), and the words the app shows for them.
HEADLINE = tuple(HEADLINE_METRICS)
HEADLINE_NAMES = {"stage1_accuracy": "stage-1 accuracy", "stage1_balanced_accuracy": "stage-1 balanced accuracy",
                  "malignant_recall": "malignant recall", "stage1_auc": "stage-1 ROC AUC",
                  "subtype_macro_f1": "subtype macro-F1 (8 classes)"}
COLUMNS = ("label", "pred_label", "p_malignant", "subtype", "pred_subtype")


def _arrays(table: pd.DataFrame) -> dict:
    return {c: table[c].to_numpy() for c in COLUMNS}


def not_applicable_figures(table: pd.DataFrame, names=HEADLINE) -> dict:
    """{figure among `names`: why it is n/a on `table`'s split} (core.evaluation.metrics.headline_not_applicable):
    the one rule every headline figure here follows, so no caller publishes a one-class split's balanced
    accuracy or macro-F1 (an average over the one class present, 1.0 for a model calling everything benign)."""
    return {name: reason for name, reason in headline_not_applicable(table).items() if name in names}


def point_metrics(table: pd.DataFrame, names=HEADLINE) -> dict:
    """The headline metrics (or those `names`) of a table of predictions: None where undefined, and where n/a
    on the split (not_applicable_figures), with the reasons under "not_applicable"."""
    arrays, ones = _arrays(table), np.ones((1, len(table)))
    reasons = not_applicable_figures(table, names)
    values = {name: float(HEADLINE_METRICS[name](ones, arrays)[0]) for name in names if name not in reasons}
    out = {name: None if name in reasons or np.isnan(values[name]) else values[name] for name in names}
    return {**out, "not_applicable": reasons} if reasons else out


def _case_weights(table: pd.DataFrame, n_resamples: int, seed: int) -> np.ndarray:
    """(R, images): how often each image's case was drawn in each resample of whole cases."""
    codes, cases = pd.factorize(table["case"])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(cases), size=(n_resamples, len(cases))) if len(cases) > 1 else np.zeros((0, 1), int)
    case_counts = np.zeros((len(picks), len(cases)))
    np.add.at(case_counts, (np.arange(len(picks))[:, None], picks), 1.0)
    return case_counts[:, codes]


def wilson_bounds(successes: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of successes of n. scipy's (a dependency already; statsmodels, whose
    proportion_confint gives the same, is not installed here)."""
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=LEVEL, method="wilson")
    return float(ci.low), float(ci.high)


def _interval(values: np.ndarray, point: float | None, resamples: int, units: int | None = None) -> dict:
    """The percentile interval of a figure's resampled `values`. `units`: for a share, the patients resampled
    that it is a share over; where its bootstrap is degenerate (every resample the same, or the point at 0 or 1)
    the percentile interval has no width, so the Wilson score interval over those patients is given instead; any
    other figure without spread (an AUC of 1.0 on four patients) gets no interval, and its "method" says why.
    The one place that decides; "method" says which gave the interval."""
    values = values[np.isfinite(values)]
    tail = (1.0 - LEVEL) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail]) if len(values) else (None, None)
    method = BOOTSTRAP
    degenerate = low is not None and (point in (0.0, 1.0) or float(values.max() - values.min()) < 1e-12)
    if units and degenerate and point is not None:
        low, high = wilson_bounds(round(point * units), units)
        method = (f"Wilson score interval over {units} patients (the bootstrap had no spread: every resample "
                  "gave the same value)")
    elif low is not None and float(values.max() - values.min()) < 1e-12:  # not a share: no interval to give
        low = high = None  # "1.000 (95% CI 1.000-1.000)" reads as certainty; the value alone, and why
        method = (f"no interval: all {len(values)} resamples gave the same value (too few patients to say how "
                  "sure it is)")
    return {"value": point, "low": None if low is None else float(low), "high": None if high is None else float(high),
            "resamples": int(len(values)), "undefined": int(resamples - len(values)), "method": method}


def headline_intervals(table: pd.DataFrame, level_name: str, n_resamples: int = N_RESAMPLES, seed: int = 0,
                       names=HEADLINE) -> dict:
    """Every headline metric (or those `names`) with its percentile interval over resamples of whole cases;
    a figure n/a on the split (not_applicable_figures) has no value nor interval, its reason under
    "not_applicable"."""
    weights = _case_weights(table, n_resamples, seed)
    arrays, point = _arrays(table), point_metrics(table, names)
    reasons = point.get("not_applicable", {})
    out = {"level": level_name, "cases": int(table["case"].nunique()), "rows": int(len(table)), "confidence": LEVEL,
           "resamples_requested": n_resamples, "method": BOOTSTRAP}
    for name in names:
        if name in reasons:
            out[name] = {**_interval(np.array([]), None, len(weights)), "not_applicable": reasons[name]}
            continue
        values = HEADLINE_METRICS[name](weights, arrays) if len(weights) else np.array([])
        of = SHARES[name](arrays) if name in SHARES else None
        out[name] = _interval(values, point[name], len(weights), None if of is None else table.loc[of, "case"].nunique())
    return out


def patient_intervals(patients: pd.DataFrame, typed: pd.DataFrame, n_resamples: int = N_RESAMPLES,
                      seed: int = 0) -> dict:
    """The patient-level headline intervals: the stage-1 figures over one row per patient (`rows` = `cases`),
    the subtype macro-F1 over one row per case and true tumour type (`subtype_rows`); both resample the
    same whole cases (core.evaluation.metrics.patient_table's PATIENT_UNIT and SUBTYPE_UNIT tables)."""
    stage1 = tuple(name for name in HEADLINE if name != "subtype_macro_f1")
    out = headline_intervals(patients, "patient", n_resamples, seed, stage1)
    subtype = headline_intervals(typed, "patient", n_resamples, seed, ("subtype_macro_f1",))
    return {**out, "subtype_macro_f1": subtype["subtype_macro_f1"], "subtype_rows": subtype["rows"],
            "unit": "stage 1 per patient (case); subtype macro-F1 per case x tumour type"}


def subtype_f1_intervals(table: pd.DataFrame, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """{subtype: F1 (one subtype against the rest, as scikit-learn's per class) with its interval over
    resamples of whole cases, and its true images and patients}; undefined (None) in a resample, or
    at all, where the subtype has no true image: a subtype absent from the table gets no figure."""
    weights, out = _case_weights(table, n_resamples, seed), {}
    for s in SUBTYPES:
        truth = (table["subtype"] == s).to_numpy()
        called = (table["pred_subtype"] == s).to_numpy()
        if not truth.any():
            out[s] = {"value": None, "images": 0, "patients": 0}
            continue

        def f1(w):
            value, present = _subtype_f1(w, truth, called)
            return np.where(present, value, np.nan)

        values = f1(weights) if len(weights) else np.array([])
        out[s] = {**_interval(values, float(f1(np.ones((1, len(table))))[0]), len(weights)),
                  "images": int(truth.sum()), "patients": int(table.loc[truth, "case"].nunique())}
    return out


def share_interval(table: pd.DataFrame, hits, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """The share of `table`'s images that are hits (one boolean per image: right calls, errors, ...) with its
    percentile interval over resamples of whole cases, and the images and cases it is of."""
    hits = np.asarray(hits, float)
    weights = _case_weights(table, n_resamples, seed)
    values = _ratio(weights @ hits, weights.sum(1)) if len(weights) else np.array([])
    cases = int(table["case"].nunique())
    return {**_interval(values, float(hits.mean()) if len(hits) else None, len(weights), cases),
            "images": int(len(table)), "cases": cases}


def binomial_interval(successes: int, n: int) -> dict:
    """A share of n images with its Wilson score interval, for where only the counts are kept: the images
    are taken as independent (no patients to resample), so it is narrower than a patient bootstrap."""
    if n <= 0:
        return {"value": None, "low": None, "high": None, "images": 0, "method": "no images"}
    low, high = wilson_bounds(successes, n)
    return {"value": successes / n, "low": low, "high": high, "images": int(n),
            "method": "Wilson score interval over images (patients not recorded)"}


def format_share(block: dict | None) -> str:
    """'98.4% (95% CI 91.4%-99.7%)' of share_interval or binomial_interval, or 'n/a'."""
    return _formatted(block, ".1%")


def fold_figures(metrics: dict) -> dict:
    """One fold's image- and patient-level headline numbers (a model's or a baseline's)."""
    figures = {"test_images": metrics["data"]["images"], "test_cases": metrics["data"]["cases"]}
    for level in ("image", "patient"):
        for name in HEADLINE:
            figures[f"{level}_{name}"] = metrics["intervals"][level][name]["value"]
    return figures


def fold_summary(per_fold: list[dict]) -> dict:
    """Mean and standard deviation across folds of every number all folds report."""
    def number(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    keys = [k for k in per_fold[0] if all(number(f.get(k)) for f in per_fold)]
    return {k: {"mean": float(np.mean([f[k] for f in per_fold])),
                "std": float(np.std([f[k] for f in per_fold], ddof=1)) if len(per_fold) > 1 else 0.0,
                "folds": len(per_fold)} for k in keys}


def format_interval(block: dict | None, digits: int = 3) -> str:
    """'0.812 (95% CI 0.640-0.930)', or 'n/a' when undefined."""
    return _formatted(block, f".{digits}f")


def _formatted(block: dict | None, spec: str) -> str:
    """A value with its 95% interval, each as format `spec` writes it; the value alone without one; 'n/a'."""
    if not block or block.get("value") is None:
        return "n/a"
    if block.get("low") is None:
        no_spread = str(block.get("method") or "").startswith("no interval")  # said, so it is not read as exact
        return format(block["value"], spec) + (" (no spread over the patient resamples)" if no_spread else "")
    return f"{format(block['value'], spec)} (95% CI {format(block['low'], spec)}-{format(block['high'], spec)})"
