"""Shared pieces of issue 18's probes: the data, the protocol's splits, scaled fields, scoring.

The splits are the project's own (core.data.selection): the patient-wise split seed 0 (train 457 /
val 112 / test 188) and the patient-wise 5-fold CV seed 0, so every probe is scored on the same
patients as `python -m core train` and `make-default`. Scoring goes through
core.evaluation.evaluate.score (the same metrics, case rule and bootstrap intervals over patients).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.data.images import load_image  # noqa: E402
from core.data.selection import SplitSpec, select_images  # noqa: E402
from tiling import scale_of, scaled_field  # noqa: E402

DATA = Path(os.environ.get("I18_DATA", ROOT / "../shared/breakhis/real")).resolve()
CACHE = Path(os.environ.get("I18_CACHE", Path.home() / ".cache" / "breakhis" / "i18"))
RESULTS = ROOT / "experiments" / "i18" / "results"


def split0() -> pd.DataFrame:
    return select_images(DATA, SplitSpec("patient-wise", 0), report_skipped=False).split.reset_index(drop=True)


def folds(k: int = 5) -> list[pd.DataFrame]:
    return [select_images(DATA, SplitSpec("patient-wise", 0, "all", k, i), report_skipped=False).split
            .reset_index(drop=True) for i in range(k)]


def protocols(which: str) -> list[tuple[str, pd.DataFrame]]:
    """[(name, table with split column)]: 'split0', 'cv' (5 folds), 'cv2' (first two folds), 'all'."""
    out = []
    if which in ("split0", "all"):
        out.append(("split0", split0()))
    if which in ("cv", "all", "cv2"):
        tables = folds(5)
        out += [(f"fold{i}", t) for i, t in enumerate(tables[:2] if which == "cv2" else tables)]
    return out


def fields(table: pd.DataFrame, mpp: float) -> dict[str, np.ndarray]:
    """path name -> the field at `mpp` (uint8), cached on disk per mpp."""
    CACHE.mkdir(parents=True, exist_ok=True)
    cache = CACHE / f"fields-{mpp:g}.npz"
    if cache.exists():
        stored = np.load(cache)
        found = {k: stored[k] for k in stored.files}
        if all(os.path.basename(p) in found for p in table["path"]):
            return found
    out = {}
    for path in table["path"]:
        rgb = load_image(path, check_histology=False).rgb
        scale, _ = scale_of(os.path.basename(path), rgb)
        out[os.path.basename(path)] = scaled_field(rgb, scale, mpp)
    np.savez(cache, **out)
    return out


def frame(rows: pd.DataFrame, p_class: np.ndarray, within: np.ndarray) -> pd.DataFrame:
    from core.evaluation.evaluate import predictions_frame
    return predictions_frame(rows, p_class, within)


def joint_to_hier(joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from core.evaluation.baselines import _class_and_within
    return _class_and_within(joint)


def score_tables(test: pd.DataFrame, val: pd.DataFrame | None) -> dict:
    """Headline figures (image and patient level, with intervals) of one protocol's predictions."""
    from core.evaluation.evaluate import score
    full = score(test, val, "test")
    out = {"images": int(len(test)), "cases": int(test["case"].nunique())}
    for level in ("image", "patient"):
        for name, block in full["intervals"][level].items():
            if isinstance(block, dict) and "value" in block:
                out[f"{level}_{name}"] = block
    for name, value in (full.get("validation") or {}).items():  # point figures on the val patients
        if name != "data" and value is not None:
            out[f"val_{name}"] = {"value": value}
    return out


def summarise(per_protocol: dict) -> dict:
    """{protocol: figures} -> split0 figures and CV mean/std of the values."""
    out = {}
    if "split0" in per_protocol:
        out["split0"] = per_protocol["split0"]
    fold_rows = [v for k, v in per_protocol.items() if k.startswith("fold")]
    if fold_rows:
        keys = [k for k in fold_rows[0] if isinstance(fold_rows[0][k], dict) and all(k in f for f in fold_rows)]
        out["cv"] = {k: {"mean": float(np.mean([f[k]["value"] for f in fold_rows if f[k]["value"] is not None])),
                         "std": float(np.std([f[k]["value"] for f in fold_rows if f[k]["value"] is not None], ddof=1))
                         if len(fold_rows) > 1 else 0.0, "folds": len(fold_rows)} for k in keys}
    return out


def headline(summary: dict) -> str:
    parts = []
    if "split0" in summary:
        s = summary["split0"]
        parts.append("split0 stage1 bal {:.3f} [{:.2f}-{:.2f}] subF1 {:.3f} [{:.2f}-{:.2f}] pat acc {:.3f}".format(
            s["image_stage1_balanced_accuracy"]["value"], s["image_stage1_balanced_accuracy"]["low"],
            s["image_stage1_balanced_accuracy"]["high"], s["image_subtype_macro_f1"]["value"],
            s["image_subtype_macro_f1"]["low"], s["image_subtype_macro_f1"]["high"],
            s["patient_stage1_accuracy"]["value"]))
    if "cv" in summary:
        c = summary["cv"]
        parts.append("CV({}) stage1 bal {:.3f}+-{:.3f} subF1 {:.3f}+-{:.3f} auc {:.3f} pat acc {:.3f}".format(
            c["image_stage1_balanced_accuracy"]["folds"], c["image_stage1_balanced_accuracy"]["mean"],
            c["image_stage1_balanced_accuracy"]["std"], c["image_subtype_macro_f1"]["mean"],
            c["image_subtype_macro_f1"]["std"], c["image_stage1_auc"]["mean"], c["patient_stage1_accuracy"]["mean"])
            + (" | val bal {:.3f} subF1 {:.3f}".format(c["val_stage1_balanced_accuracy"]["mean"],
                                                      c["val_subtype_macro_f1"]["mean"]) if "val_subtype_macro_f1" in c else ""))
    return " | ".join(parts)


def record(name: str, summary: dict, seconds: float, settings: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    entry = {"name": name, "settings": settings, "seconds": round(seconds, 1), "summary": summary,
             "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(RESULTS / "results.jsonl", "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    print(f"== {name} ({seconds:.0f} s): {headline(summary)}", flush=True)
