"""Runs of the field recipe: one split, or a patient-wise cross-validation and a final model.

    python -m core train --pipeline fields --data DIR --out runs/NAME [--folds 5]

One split: fit on the training patients, fit the temperatures and the per-stage referral
thresholds (core.evaluation.referral) on the validation patients, score the test patients.
With --folds k: every fold's model is tested on its held-out patients; the pooled out-of-fold
predictions (every patient tested exactly once, by a model that never saw it) give the figures
(per fold and pooled, with patient-bootstrap intervals), the temperatures and the thresholds;
then, unless --no-final-model, ONE model is trained on every patient (OUT/model), and its card
carries those figures and thresholds, saying which images its weights learnt from and which
its figures were measured on. TensorFlow-free like core.training.field_fit: runs under JAX.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from core.data.fields import ViewSpec, band_limit_all, is_pack, load_fields, read_pack
from core.data.labels import CLASS_OF_SUBTYPE, CLASSES, STAGE1_OUTPUT, STAGE2_OUTPUTS, SUBTYPES_BY_CLASS
from core.data.selection import fingerprint, no_real_images, scan, select_magnification
from core.data.splits import PATIENT, is_synthetic, make_split, patient_kfold
from core.evaluation.baselines import BASELINES
from core.evaluation.calibration_effect import measured_block
from core.evaluation.evaluate import REQUIRED_COLUMNS, baseline_scores, compact, predictions_frame, score
from core.evaluation.intervals import fold_figures, fold_summary
from core.evaluation.referral import referral_figures, referral_thresholds
from core.evaluation.thresholds import case_threshold
from core.jsonfile import write_json_atomic
from core.model.calibration import apply_temperature, fit_temperature
from core.model.folders import read_card, save_ensemble, save_model_folder
from core.paths import claim_run, portable
from core.training.additions import ReviewedFields, from_reviews, gan_fill, reviewed_count
from core.training.config import checked
from core.training.field_fit import HEADS, fit_fields, predict_views
from core.training.head_refit import refit_subtype_heads
from core.training.progress import ProgressWriter, final_events
from core.training.runcard import (
    evidence,
    held_out_gaps,
    is_demo,
    refuse_empty_held_out,
    refuse_untaught_classes,
    run_record,
    split_figures_on,
    training_counts,
)

log = logging.getLogger(__name__)
CROP_PX, CROPS = 224, 3  # prediction views: 3 crops of 224 px along the 350x230 field (x 8 symmetries)


def _magnification_rows(table: pd.DataFrame, magnification: str, data) -> np.ndarray:
    keep = select_magnification(table, magnification).index.to_numpy()
    if not len(keep):  # a folder's scan again, on this error only: it says which files are no images
        raise no_real_images(magnification, data, () if is_pack(data) else scan(data, False).skipped)
    return keep


def real_images(data, report_skipped: bool = True) -> tuple[pd.DataFrame, np.ndarray | None]:
    """(every real image a fields run on `data` draws from, whatever its magnification; their fields where
    they come decoded): a field pack's table and fields, or a BreakHis folder's real images (scanned,
    its report logged: core.data.selection.scan) and None."""
    if is_pack(data):
        return read_pack(data)
    images = scan(data, report_skipped).images
    return images[~images["synthetic"].astype(bool)].reset_index(drop=True), None


def data_fingerprint(data) -> str:
    """The identity of a fields run's data, as a GAN's training records it (core.data.selection.select_images:
    every real image of the folder, all magnifications) and the run's card keeps it: the fingerprint of
    real_images, before the run's magnification filter."""
    return fingerprint(real_images(data, report_skipped=False)[0])


def field_table(data, magnification: str = "all") -> pd.DataFrame:
    """The images a fields run on a BreakHis folder learns from, in its order: real images only, of
    the run's magnification. The slide rule rebuilds a run's folds from it. The folder's scan report
    (skipped files, copies under another patient, misfiled files) is logged (core.data.selection.scan)."""
    table = real_images(data)[0]
    return table.loc[_magnification_rows(table, magnification, data)].reset_index(drop=True)


def load_field_data(config) -> tuple[pd.DataFrame, np.ndarray]:
    """(table, fields) of a BreakHis folder (field_table, decoded) or a field pack
    (core.data.fields.pack_fields), of the run's magnification, at the detail the views declare; the
    table's attrs["data_fingerprint"] is data_fingerprint's, of every real image before that filter."""
    images, fields = real_images(config.data)
    keep = _magnification_rows(images, config.magnification, config.data)
    table = images.loc[keep].reset_index(drop=True)
    fields = load_fields(table["path"]) if fields is None else fields[keep]
    table.attrs["data_fingerprint"] = fingerprint(images)
    return table, band_limit_all(fields) if config.band_limit else fields


def view_spec(config) -> ViewSpec:
    return ViewSpec(config.input_size, CROP_PX, CROPS, True, physical=config.physical_crops,
                    band_limit=config.band_limit)


def fit_classifier(fields: np.ndarray, rows: pd.DataFrame, config, writer, phase: str = "fields"):
    """fit_fields, then (config.refit_subtypes) the subtype heads refitted on the same fields' views;
    -> (classifier, history), the refit's record in history["subtype_refit"]."""
    classifier, history = fit_fields(fields, rows["subtype"], config, writer, phase, rows["magnification"])
    if config.refit_subtypes:
        started = time.perf_counter()
        history["subtype_refit"] = refit_subtype_heads(classifier, fields, rows["subtype"], view_spec(config),
                                                       rows["magnification"])
        history["subtype_refit"]["seconds"] = round(time.perf_counter() - started, 1)
    return classifier, history


def calibrate(raw: dict, table: pd.DataFrame) -> dict:
    """Temperature per head, fitted by NLL on these rows' true classes and subtypes."""
    label = table["label"].map(CLASSES.index).to_numpy()
    temperatures = {STAGE1_OUTPUT: fit_temperature(raw[STAGE1_OUTPUT], label)}
    for c in CLASSES:
        mine = (table["label"] == c).to_numpy()
        within = table.loc[mine, "subtype"].map(SUBTYPES_BY_CLASS[c].index).to_numpy()
        temperatures[STAGE2_OUTPUTS[c]] = fit_temperature(raw[STAGE2_OUTPUTS[c]][mine], within) if mine.any() else 1.0
    return temperatures


def frame(rows: pd.DataFrame, raw: dict, temperatures: dict) -> pd.DataFrame:
    """Calibrated predictions table (core.evaluation.evaluate.predictions_frame) of raw head outputs."""
    p = {name: apply_temperature(value, temperatures[name]) for name, value in raw.items()}
    within = np.concatenate([p[STAGE2_OUTPUTS[c]] for c in CLASSES], axis=1)  # SUBTYPES order
    return predictions_frame(rows, p[STAGE1_OUTPUT], within)


def scored_rows(table: pd.DataFrame, split: str, protocol: str) -> pd.DataFrame:
    """Rows as core.evaluation.evaluate scores them: each with its split and the protocol it states."""
    return table.assign(split=split, protocol=protocol)


def _card(config, table, trained_on, history, temperatures, referral, case_rule, metrics, figures_on,
          measured=None, held_out: dict | None = None, fitted_on: str | None = None) -> dict:
    """held_out: {val, test: images} of one split; a cross-validation's models have {test} (their fold's)
    or none (the final model, whose figures are out-of-fold). fitted_on: what the temperatures were fitted
    on, the validation split of one split (default figures_on: a cross-validation's pooled out-of-fold
    predictions are both)."""
    spec = view_spec(config)
    synthetic = is_synthetic(trained_on)
    counts = {"train": int((~synthetic).sum()), "synthetic": int(synthetic.sum()), **(held_out or {})}
    learnt = evidence(trained_on, history["weights_init"], figures_on)
    return {
        "name": Path(config.out).name, "backbone": config.backbone, "hierarchy": "hierarchical",
        "input_size": config.input_size, "weights_init": history["weights_init"],
        "demo": is_demo(config, learnt),
        "views": spec.to_dict(),
        "scale": {"mpp": 1.0, "tile_px": [CROP_PX, CROP_PX],
                  "source": "field recipe: fields restored to 350x230 px (~1 um/px at 200X), 224-px views"},
        "stain_normalization": {"method": "none", "reference": {}, "fitted_on": "", "implementation": None},
        "evidence": learnt,
        "training": {"pipeline": "fields", "backend": keras.backend.backend(), "data_source": portable(config.data),
                     "data_fingerprint": table.attrs["data_fingerprint"],
                     **training_counts(trained_on, counts), "reviewed_images": reviewed_count(trained_on),
                     "epochs": history["epochs"], "steps": history["steps"], "seconds": history["seconds"],
                     "images_per_s": history["images_per_s"], "precision": history.get("precision", "float32"),
                     "batch_size": config.batch_size, "subtype_refit": history.get("subtype_refit"),
                     "learning_rate": config.learning_rate, "seed": config.seed, **run_record(config),
                     "augmentation": "field crops of {:.0%}-100% of the short side{}, 8 symmetries, H&E jitter in "
                                     "optical density, brightness/contrast, blur/noise (core.data.keras_augment)"
                                     .format(config.crop_min, " at 200X, of the same tissue at every magnification"
                                             if config.physical_crops else "")},
        "calibration": {"method": "temperature scaling per head (Guo et al. 2017)", "temperatures": temperatures,
                        "fitted_on": fitted_on or figures_on, **(measured or {})},
        "thresholds": {"case_malignant": case_rule["threshold"], "case_malignant_selection": case_rule,
                       "referral": referral},
        "metrics": metrics,
    }


def baseline_oof(table: pd.DataFrame, folds: list[pd.DataFrame], protocol: str) -> dict:
    """Each baseline (core.evaluation.baselines) fitted on each fold's training patients and scored
    on its held-out ones, pooled like the model's: the same folds, images and figures."""
    scored = {}
    for name, kind in BASELINES.items():
        frames = []
        for assigned in folds:
            held = assigned["split"].to_numpy() == "test"
            baseline = kind().fit(table[~held])
            rows = scored_rows(table[held], "test", protocol)
            p_class, within, kept = baseline.predict(rows)
            if len(kept):
                frames.append(predictions_frame(rows.iloc[kept], p_class, within))
        if frames:
            scored[name] = {"name": kind.name, **compact(score(pd.concat(frames, ignore_index=True), None, "test"))}
    return scored


def _selection_figures(predictions: pd.DataFrame, name: str) -> tuple[dict, dict, dict]:
    referral = referral_thresholds(predictions, name)
    referral["figures"] = referral_figures(predictions, referral)
    # Pooled out-of-fold predictions are the only held-out ones: the case and recall-favouring thresholds are
    # chosen on them, as the referral's are (their blocks say so); no separate validation figures.
    case_rule = case_threshold(predictions)
    metrics = score(predictions, predictions, "test", cases_rule=case_rule)
    metrics.pop("validation", None)
    return referral, case_rule, metrics


def train_fields(config) -> dict:
    """One split: fit on train, calibrate and choose thresholds on val, score test (see module)."""
    config = checked(config)
    out = Path(config.out)
    with claim_run(out, ("progress.jsonl", "model")):  # this process's until the run ends
        writer = ProgressWriter(out / "progress.jsonl", echo_stdout=config.echo_stdout)
        with final_events(writer, out):  # a model saved by a run that then stopped is moved aside
            return _train_fields(config, out, writer)


def _train_fields(config, out: Path, writer: ProgressWriter) -> dict:
    table, fields = load_field_data(config)
    assigned = make_split(table, config.split, seed=config.seed)
    refuse_empty_held_out(assigned)  # before any training: calibration needs validation, the figures test
    split, protocol = assigned["split"].to_numpy(), assigned["protocol"].iloc[0]
    train, val, test = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    trained_on, train_fields = table.iloc[train], fields[train]
    if config.balance == "synthetic":
        trained_on, added = gan_fill(config, table, train, table.attrs["data_fingerprint"])
        train_fields = np.concatenate([train_fields, added])
    synthetic = len(trained_on) - len(train)
    trained_on, train_fields = ReviewedFields(config).added_to(trained_on, train_fields, table["case"].iloc[
        np.concatenate([val, test])])
    refuse_untaught_classes(trained_on)
    reviewed, gaps = reviewed_count(trained_on), held_out_gaps(assigned)
    for gap in gaps:
        log.warning(gap)
    writer.emit("start", epochs=config.epochs, counts={"train": len(train), "val": len(val), "test": len(test),
                                                        "synthetic": synthetic, "reviewed": reviewed}, warnings=gaps,
                message=f"fields {config.backbone} on {keras.backend.backend()}: {len(train)} training fields"
                        + (f" and {synthetic} GAN fields" if synthetic else "")
                        + (f" and {reviewed} reviewed images" if reviewed else "")
                        + "".join(f"; WARNING: {gap}" for gap in gaps))
    classifier, history = fit_classifier(train_fields, trained_on, config, writer)
    spec = view_spec(config)
    raw_val, raw_test = (predict_views(classifier, fields[i], spec, magnifications=table["magnification"].iloc[i])
                         for i in (val, test))
    temperatures = calibrate(raw_val, table.iloc[val])  # on the validation patients, never the test split
    val_frame = frame(scored_rows(table.iloc[val], "val", protocol), raw_val, temperatures)
    test_frame = frame(scored_rows(table.iloc[test], "test", protocol), raw_test, temperatures)
    validation = f"the validation split ({len(val)} images, {table['case'].iloc[val].nunique()} patients)"
    referral = referral_thresholds(val_frame, validation)
    referral["figures_on_test"] = referral_figures(test_frame, referral)
    metrics = score(test_frame, val_frame, "test")
    # The baselines fitted on the same training images and scored on the same test patients, as `evaluate`
    # scores a tf.data run's (at score's default threshold and target recall): the subtype check needs them.
    metrics["baselines"] = baseline_scores(assigned, "test", 0.5, 0.95)
    write_json_atomic(out / "metrics.json", metrics)
    pd.concat([val_frame, test_frame], ignore_index=True).to_csv(out / "predictions.csv", index=False)
    added = trained_on["synthetic"].astype(bool) | from_reviews(trained_on)
    used = pd.concat([assigned, trained_on[added].assign(split="train", protocol=protocol)], ignore_index=True)
    # The columns the tf.data pipeline's split.csv has and evaluate, calibrate and ensemble read.
    used.assign(label=used["subtype"].map(CLASS_OF_SUBTYPE))[[*REQUIRED_COLUMNS, "synthetic", "protocol"]].to_csv(
        out / "split.csv", index=False)
    figures_on = split_figures_on(table.assign(split=split, protocol=protocol))  # an image-level split says so
    card = _card(config, table, trained_on, history, temperatures, referral, case_threshold(val_frame),
                 metrics, figures_on, measured_block({"val": (val_frame, raw_val), "test": (test_frame, raw_test)},
                                                     temperatures), {"val": len(val), "test": len(test)},
                 fitted_on=validation)
    model_dir = save_model_folder(classifier, out / "model", card)
    writer.emit("end", status="completed", model_dir=str(model_dir), epoch=history["epochs"], epochs=config.epochs,
                message=f"trained in {history['seconds']:.0f} s")
    return {"status": "completed", "model_dir": str(model_dir), "metrics": metrics, "epochs_run": history["epochs"]}


def cross_validate_fields(config, final_model: bool = True) -> dict:
    """Patient-wise k-fold CV with pooled out-of-fold figures and thresholds, then (final_model) one
    model on every patient carrying them (see module)."""
    config = checked(config)
    out = Path(config.out)
    with claim_run(out, ("cv.json", "model"), holds="a cross-validation"):  # this process's until the run ends
        writer = ProgressWriter(out / "progress.jsonl", echo_stdout=config.echo_stdout)
        with final_events(writer, out):  # a model saved by a run that then stopped is moved aside
            return _cross_validate_fields(config, out, writer, final_model)


def member_seed(seed: int, member: int) -> int:
    """Member m of a seed ensemble trains with seed + 1000 m: member 0 is the single model's run."""
    return seed + 1000 * member


def _fit_members(fields, rows: pd.DataFrame, config, writer, phase: str) -> list[tuple[keras.Model, dict]]:
    return [fit_classifier(fields, rows, dataclasses.replace(config, seed=member_seed(config.seed, m)), writer,
                           phase + (f", member {m}" if config.members > 1 else ""))
            for m in range(config.members)]


def _member_folder(out: Path, m: int) -> Path:
    return out if m == 0 else out / f"member-{m}"


def _pooled(raws: list[tuple[np.ndarray, dict]]) -> dict:
    return {name: np.concatenate([r[name] for _, r in raws]) for name in raws[0][1]}


def _cross_validate_fields(config, out: Path, writer: ProgressWriter, final_model: bool) -> dict:
    table, fields = load_field_data(config)  # (GAN fill with --folds is refused by core.training.config.validate)
    reviewed = ReviewedFields(config)
    protocol = f"{PATIENT} {config.folds}-fold cross-validation, pooled out-of-fold"
    folds = patient_kfold(table, config.folds, config.seed)
    spec, raws, per_fold, seconds = view_spec(config), [[] for _ in range(config.members)], [], []
    ones = {name: 1.0 for name in HEADS}
    writer.emit("start", epochs=config.epochs * (config.folds + int(final_model)) * config.members,
                message=f"fields {config.backbone} on {keras.backend.backend()}: {config.folds}-fold CV of "
                        f"{len(table)} fields, {table['case'].nunique()} patients"
                        + (f", {config.members} seeds per fold" if config.members > 1 else ""))
    for k, assigned in enumerate(folds):
        held = np.flatnonzero(assigned["split"].to_numpy() == "test")
        seen = np.flatnonzero(assigned["split"].to_numpy() != "test")
        fold_config = dataclasses.replace(config, seed=config.seed + k)
        fold_rows, fold_fields = reviewed.added_to(table.iloc[seen], fields[seen], table["case"].iloc[held])
        refuse_untaught_classes(fold_rows)
        fold_raw = []
        for m, (classifier, history) in enumerate(_fit_members(fold_fields, fold_rows, fold_config, writer, f"fold {k}")):
            seconds.append(history["seconds"])
            raw = predict_views(classifier, fields[held], spec, magnifications=table["magnification"].iloc[held])
            raws[m].append((held, raw))
            fold_raw.append(raw)
            save_model_folder(classifier, _member_folder(out / f"fold-{k}", m) / "model", _card(
                dataclasses.replace(config, out=str(out / f"fold-{k}")), table, fold_rows, history,
                ones, {}, {"threshold": 0.5}, {}, f"fold {k}'s held-out patients", held_out={"test": len(held)}))
        raw = {name: np.mean([r[name] for r in fold_raw], axis=0) for name in fold_raw[0]}
        fold_frame = frame(scored_rows(table.iloc[held], "test", protocol), raw, ones)
        fold_frame.assign(fold=k).to_csv(out / f"fold-{k}" / "predictions_uncalibrated.csv", index=False)
        per_fold.append({"fold": k, **fold_figures(score(fold_frame, None, "test")),
                         "train_seconds": sum(seconds[-config.members:])})
    order = np.concatenate([held for held, _ in raws[0]])
    rows = scored_rows(table.iloc[order], "test", protocol).assign(  # each prediction's fold, to recompute per fold
        fold=np.repeat(range(config.folds), [len(held) for held, _ in raws[0]]))
    member_raw = [_pooled(r) for r in raws]
    temperatures = [calibrate(raw, rows) for raw in member_raw]
    # A seed ensemble predicts like core.model.ensemble: the mean of its members' calibrated outputs.
    calibrated = [{name: apply_temperature(raw[name], t[name]) for name in raw} for raw, t in zip(member_raw, temperatures)]
    pooled = frame(rows, {name: np.mean([c[name] for c in calibrated], axis=0) for name in HEADS}, ones)
    pooled.to_csv(out / "oof_predictions.csv", index=False)
    name = f"pooled out-of-fold predictions of {config.folds}-fold CV ({len(pooled)} images, {pooled['case'].nunique()} patients)"
    if config.members > 1:
        name += f", mean of {config.members} seed models per fold"
    referral, case_rule, metrics = _selection_figures(pooled, name)
    metrics["baselines"] = baseline_oof(table, folds, protocol)
    summary = {"folds": config.folds, "protocol": protocol, "backbone": config.backbone,
               "input_size": config.input_size, "backend": keras.backend.backend(), "per_fold": {"model": per_fold},
               "mean_std": {"model": fold_summary(per_fold)}, "pooled": metrics, "referral": referral,
               "temperatures": temperatures[0], "train_seconds": seconds, "members": config.members}
    if config.members > 1:  # each seed alone, on the same folds: what the ensemble adds
        summary["member_temperatures"] = temperatures
        summary["pooled_by_member"] = [compact(score(frame(rows, raw, t), None, "test"))
                                       for raw, t in zip(member_raw, temperatures)]
    write_json_atomic(out / "cv.json", summary)
    write_json_atomic(out / "metrics.json", metrics)
    result = {"status": "completed", "cv": summary, "epochs_run": config.epochs * config.folds * config.members}
    if final_model:
        started = time.perf_counter()
        final_rows, final_fields = reviewed.added_to(table, fields)
        members = _fit_members(final_fields, final_rows, config, writer, "final model")
        folders = [save_model_folder(classifier, _member_folder(out, m) / "model", _card(
            config, table, final_rows, history, temperatures[m], referral, case_rule, metrics, name,
            measured_block({"test": (rows, member_raw[m])}, temperatures[m], fitted_on="test")))
            for m, (classifier, history) in enumerate(members)]
        if config.members > 1:
            folders = [save_ensemble(folders, out / "ensemble", name=f"{out.name} ({config.members} seeds)",
                                     views=view_spec(config).to_dict(), evidence=read_card(folders[0])["evidence"],
                                     thresholds={"case_malignant": case_rule["threshold"],
                                                 "case_malignant_selection": case_rule, "referral": referral},
                                     metrics=metrics, evaluation=name)]
        result["model_dir"] = str(folders[0])
        result["final_seconds"] = round(time.perf_counter() - started, 1)
    writer.emit("end", status="completed", model_dir=result.get("model_dir"), epochs=config.epochs,
                message=f"{config.folds}-fold CV in {sum(seconds):.0f} s of training")
    return result
