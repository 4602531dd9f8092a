"""Maintenance: re-derive models/default's patient-level figures from its own oof_predictions.csv with the project's
functions (nothing retrained), after core.evaluation.metrics.patient_table stopped splitting a patient by true
tumour type for stage 1 (QA figs D1: 49 case x tumour-type rows were reported as 46 patients).

- pooled: core.training.field_run._selection_figures on the stored calibrated predictions; only the patient-level
  blocks (patient, patient_stage1_accuracy, case_threshold, intervals.patient) are replaced, every other block is
  compared with the card and left as written (the CSV's float round trip).
- per fold: the folds are rebuilt with core.data.splits.patient_kfold (seed 0) on the run's images, each fold's
  uncalibrated predictions are recovered by undoing the temperatures (apply_temperature with 1 / T) and scored as
  field_run scored them; the old per-fold figures must come back first (image level, and patient level per case x
  tumour type), else nothing per fold is replaced.
- calibration (--calibration: QA figs D2): ECE (15 bins) and Brier before and after each head's temperature, by
  core.training.calibrate_run's own measure, on the uncalibrated predictions recovered by undoing the temperatures;
  in-sample, since the temperatures were fitted on these same pooled predictions (the card says so).
- fold (--fold: QA figs D5): the fold of every stored prediction, from the rebuilt folds (their order and every
  per-fold figure of cv.json checked above), appended to oof_predictions.csv as text (the other values untouched).
- baselines: their predictions are not stored; each is refitted on the same folds (field_run.baseline_oof, a few
  minutes) and replaced, intervals included, only where its image-level point figures come back unchanged, else
  labelled.

    PYTHONPATH=. python experiments/i25/rederive_oof_figures.py [--data ../shared/breakhis/real] [--write]
    PYTHONPATH=. python experiments/i25/rederive_oof_figures.py --calibration [--write]
    PYTHONPATH=. python experiments/i25/rederive_oof_figures.py --fold [--data ...] [--write]
"""
import argparse
import math
import os

import numpy as np
import pandas as pd

from core.data.labels import CLASSES, HIERARCHICAL, STAGE1_OUTPUT, STAGE2_OUTPUTS, SUBTYPES_BY_CLASS
from core.data.splits import patient_kfold
from core.evaluation.evaluate import score
from core.evaluation.intervals import fold_figures, fold_summary, headline_intervals
from core.evaluation.metrics import SUBTYPE_UNIT, patient_table
from core.jsonfile import read_json, write_json_atomic
from core.model.calibration import apply_temperature
from core.model.folders import update_card
from core.training.field_run import _selection_figures, baseline_oof, field_table, frame

FOLDER = "models/default"
PATIENT_KEYS = ("patient", "patient_stage1_accuracy", "case_threshold")


def close(a, b) -> bool:
    if isinstance(a, dict):
        return all(close(a[k], (b or {}).get(k)) for k in a)
    if isinstance(a, list):
        return len(a) == len(b or []) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def rebuilt_folds(pooled: pd.DataFrame, data: str, card: dict) -> list[np.ndarray] | None:
    """Row positions of pooled per fold, from patient_kfold on the run's images, if they match exactly."""
    settings = card["training"]["settings"]
    table = field_table(data, settings.get("magnification", "all"))
    folds = patient_kfold(table, settings["folds"], settings["seed"])
    names = [os.path.basename(p) for p in pooled["path"]]
    order = [os.path.basename(p) for f in folds for p in f.loc[f["split"] == "test", "path"]]
    if order != names:
        return None
    sizes = np.cumsum([0] + [int((f["split"] == "test").sum()) for f in folds])
    return table, folds, [np.arange(sizes[k], sizes[k + 1]) for k in range(len(folds))]


def uncalibrated(rows: pd.DataFrame, temperatures: dict) -> pd.DataFrame:
    """The fold models' own predictions, as field_run scored each fold: the temperatures undone."""
    raw = {STAGE1_OUTPUT: apply_temperature(rows[[f"p_{c}" for c in CLASSES]].to_numpy(), 1 / temperatures[STAGE1_OUTPUT])}
    for c in CLASSES:
        raw[STAGE2_OUTPUTS[c]] = apply_temperature(rows[[f"w_{s}" for s in SUBTYPES_BY_CLASS[c]]].to_numpy(),
                                                   1 / temperatures[STAGE2_OUTPUTS[c]])
    keep = [c for c in rows.columns if not c.startswith(("p_", "w_", "pred_"))]
    return frame(rows[keep].reset_index(drop=True), raw, {name: 1.0 for name in raw})


def old_patient_figures(rows: pd.DataFrame) -> dict:
    """The per-fold patient figures as they were computed before: per case x tumour type."""
    block = headline_intervals(patient_table(rows, 0.5, SUBTYPE_UNIT), "patient", n_resamples=1)
    return {f"patient_{k}": v["value"] for k, v in block.items() if isinstance(v, dict)}


def measured_calibration(pooled: pd.DataFrame, calibration: dict) -> dict:
    """The card's calibration block with `measured` (the shape core.training.calibrate_run writes) on the pooled
    out-of-fold predictions, the raw head outputs recovered by undoing the temperatures."""
    from core.evaluation.metrics import scope
    from core.model.calibration import ECE_BINS
    from core.evaluation.calibration_effect import head_targets, measure_heads

    raw = uncalibrated(pooled, calibration["temperatures"])
    outputs = {STAGE1_OUTPUT: raw[[f"p_{c}" for c in CLASSES]].to_numpy()}
    for c, head in STAGE2_OUTPUTS.items():
        outputs[head] = raw[[f"w_{s}" for s in SUBTYPES_BY_CLASS[c]]].to_numpy()
    heads = measure_heads(outputs, head_targets(pooled, HIERARCHICAL), calibration["temperatures"])
    return {**calibration, "ece_bins": ECE_BINS,
            "measured": {"test": {"data": scope(pooled, "test"), "heads": heads, "in_sample": True}},
            "measured_note": "in-sample: measured on the same pooled out-of-fold predictions the temperatures were "
                             "fitted on, so the ECE after is optimistic (a temperature moves no argmax: accuracy, "
                             "F1 and AUC are unaffected)"}


def calibration_main(write: bool):
    card = read_json(f"{FOLDER}/card.json")
    block = measured_calibration(pd.read_csv(f"{FOLDER}/oof_predictions.csv"), card["calibration"])
    for head, m in block["measured"]["test"]["heads"].items():
        print(head, f"T {block['temperatures'][head]:.4f}", m["images"], {k: round(m[k], 4) for k in (
            "ece_before", "ece_after", "brier_before", "brier_after", "accuracy")})
    if write:
        update_card(FOLDER, calibration=block)
        print("written")


def fold_main(data: str, write: bool):
    """Append the fold column, only where the rebuilt folds reproduce cv.json's per-fold sizes and figures."""
    card, cv = read_json(f"{FOLDER}/card.json"), read_json(f"{FOLDER}/cv.json")
    pooled = pd.read_csv(f"{FOLDER}/oof_predictions.csv")
    rebuilt = rebuilt_folds(pooled, data, card)
    assert rebuilt is not None and "fold" not in pooled, "folds not rebuilt exactly, or a fold column already there"
    _, _, positions = rebuilt
    for old, rows in zip(cv["per_fold"]["model"], positions):
        figures = fold_figures(score(uncalibrated(pooled.iloc[rows], card["calibration"]["temperatures"]), None, "test"))
        assert close({k: old[k] for k in figures}, figures), f"fold {old['fold']} figures differ"
    fold = np.concatenate([np.full(len(rows), k) for k, rows in enumerate(positions)])
    print("fold sizes", np.bincount(fold).tolist(), "cv.json", [f["test_images"] for f in cv["per_fold"]["model"]])
    if write:
        path = f"{FOLDER}/oof_predictions.csv"
        lines = open(path, encoding="utf-8").read().splitlines()
        assert len(lines) == len(fold) + 1
        with open(path, "w", encoding="utf-8") as out:
            out.write("\n".join([lines[0] + ",fold"] + [f"{line},{k}" for line, k in zip(lines[1:], fold)]) + "\n")
        print("written")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/breakhis/real")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--calibration", action="store_true")
    parser.add_argument("--fold", action="store_true")
    args = parser.parse_args()
    if args.fold:
        return fold_main(args.data, args.write)
    if args.calibration:
        return calibration_main(args.write)
    card, metrics_file, cv = (read_json(f"{FOLDER}/{name}") for name in ("card.json", "metrics.json", "cv.json"))
    pooled = pd.read_csv(f"{FOLDER}/oof_predictions.csv")

    referral, case_rule, metrics = _selection_figures(pooled, card["evidence"]["figures_measured_on"])
    for key, value in metrics.items():
        if key not in PATIENT_KEYS + ("intervals", "baselines") and key in card["metrics"]:
            print("same as card:", key, close(value, card["metrics"][key]))
    print("image intervals same:", close(metrics["intervals"]["image"], card["metrics"]["intervals"]["image"]))
    patient = metrics["intervals"]["patient"]
    print("patient stage-1 accuracy", patient["stage1_accuracy"], "rows", patient["rows"], "cases", patient["cases"],
          "subtype rows", patient["subtype_rows"])
    print("case rule", {k: v for k, v in case_rule.items() if k != "selected_on"})
    new = {**card["metrics"], **{k: metrics[k] for k in PATIENT_KEYS},
           "intervals": {**card["metrics"]["intervals"], "patient": patient}}

    rebuilt = rebuilt_folds(pooled, args.data, card)
    print("folds rebuilt exactly:", rebuilt is not None)
    per_fold = None
    if rebuilt is not None:
        table, folds, positions = rebuilt
        per_fold, same = [], True
        for k, (old, rows) in enumerate(zip(cv["per_fold"]["model"], positions)):
            fold_frame = uncalibrated(pooled.iloc[rows], card["calibration"]["temperatures"])
            figures = fold_figures(score(fold_frame, None, "test"))
            then = {**{k2: v for k2, v in figures.items() if not k2.startswith("patient_")},
                    **old_patient_figures(fold_frame)}
            mine = {k2: v for k2, v in old.items() if k2 in then}
            same &= close(mine, then)
            print(f"fold {k}: old figures recomputed:", close(mine, then), figures["patient_stage1_accuracy"])
            per_fold.append({**old, **figures})
        if not same:
            per_fold = None
        new_baselines = baseline_oof(table, folds, card["metrics"]["protocol"])
        baselines = {}
        for name, old in card["metrics"]["baselines"].items():
            fresh = new_baselines.get(name) or {}
            keys = ("stage1_accuracy", "stage1_balanced_accuracy", "stage1_auc", "subtype_macro_f1", "stage1_ece")
            # Same point figures: the refit is the same baseline, and its intervals are those of today's code (QA
            # stats #3: the card's predated the Wilson interval for a share whose bootstrap has no spread).
            ok = close({k: old[k] for k in keys}, {k: fresh.get(k) for k in keys})
            print("baseline", name, "image figures come back:", ok, "intervals as written:",
                  close(old["intervals"]["image"], fresh["intervals"]["image"]),
                  "patient", fresh.get("patient_stage1_accuracy"))
            baselines[name] = fresh if ok else {**old, "patient_note": "patient figures per case x tumour type "
                                                 f"({old['intervals']['patient']['rows']} rows), not recomputed"}
        new["baselines"] = baselines
    if args.write:
        thresholds = {**card["thresholds"], "case_malignant": case_rule["threshold"],
                      "case_malignant_selection": case_rule}
        update_card(FOLDER, metrics=new, thresholds=thresholds)
        write_json_atomic(f"{FOLDER}/metrics.json", {**metrics_file, **{k: new[k] for k in (*PATIENT_KEYS, "baselines")},
                                                     "intervals": {**metrics_file["intervals"], "patient": patient}})
        cv["pooled"] = {**cv["pooled"], **{k: new[k] for k in (*PATIENT_KEYS, "baselines")},
                        "intervals": {**cv["pooled"]["intervals"], "patient": patient}}
        if per_fold is not None:
            cv["per_fold"]["model"] = per_fold
            cv["mean_std"]["model"] = fold_summary(per_fold)
        write_json_atomic(f"{FOLDER}/cv.json", cv)
        print("written")


if __name__ == "__main__":
    main()
