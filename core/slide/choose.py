"""Choosing the slide rule (core.slide.call) on mosaics of the model's validation patients.

    python -m core slide-threshold MODEL --data DIR

The model's validation split is rebuilt from its card (protocol, seed, magnification; the data
fingerprint must match), its fields at the model's scale are laid into mosaics
(core.slide.mosaic: benign-only ones, and ones with a connected focus of 1, 2 and 4 malignant
fields of one patient in benign tissue), and each mosaic runs through the real SlidePredictor.

Candidates: the region rule with min_size 1, 2, 3, 4 tile areas and the top-k rule with k 1, 2, 3, 4.
Regions come from core.slide.call.find_regions, sized by call.region_size (the area their tiles cover)
exactly as the applied rule sizes them, so a chosen min_size means the same on a slide.
For each, B is the highest score (a region's core mean, core.slide.call) benign tissue reached (every region of a benign-only mosaic and
every region of a focus mosaic with no tile holding any focus tissue; for top-k, the benign-only
mosaics), at least the tile threshold 0.5. The threshold on the mean p(malignant) is B + MARGIN,
or, when higher, halfway between B and the weakest focus that B + MARGIN catches (a maximum-margin
choice: every focus caught at B + MARGIN is still caught, and benign tissue on unseen patients
gets as much room as the validation foci allow). So specificity on validation is 1.0 with room.

The chosen candidate has the highest share of focus mosaics called malignant WITH the driving
region on the focus (localised sensitivity) over the TARGET foci (2 and 4 of 16 fields: 12.5-25 %
of the tissue, what a slide call must catch); ties go to the region rule, then to the LARGER
size. Both tie-breaks are for specificity on slides unlike the validation mosaics: a region
rule's false positive needs ADJACENT suspicious benign tiles, and more of them the larger the
size, while the top-k rule's benign maximum (the k highest of many more tiles) grows with the
slide; the region rule also names a region. The cost, 1-field foci, is measured and recorded.
The rule, the figures per focus size and every candidate's figures are written into
card["thresholds"]["slide_rule"]. When every candidate's threshold would exceed MOST (benign tissue
of unseen patients scored near 1), the rule is "none": slides are shown, not called
(core.slide.call), with the lowest benign maximum any candidate met.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.scale import model_scale
from core.slide.call import TILE_THRESHOLD, SlideRule, apply_rule, find_regions

MARGIN = 0.05
SIZES = (1, 2, 3, 4)
FOCI = (0, 1, 2, 4)  # malignant fields per 16-field validation mosaic (0: benign only)
TARGET_FOCI = (2, 4)  # the foci the rule is chosen for
MOST = 0.99  # a threshold above this would call nothing
ON_FOCUS = 0.25  # a tile is on the focus when at least this share of it is malignant tissue


@dataclasses.dataclass
class MosaicRun:
    """One mosaic's analysed tiles and its ground truth."""

    tiles: pd.DataFrame  # tile, row, col, x, y, width, height, p_malignant
    focus: np.ndarray  # bool per tile: at least ON_FOCUS of it on malignant fields
    focus_fields: int  # 0 for a benign-only mosaic
    case: str | None = None  # the focus's patient
    near: np.ndarray | None = None  # bool per tile: holds ANY malignant tissue (default: `focus`)

    def __post_init__(self):
        if self.near is None:
            self.near = self.focus


def benign_scores(runs: list[MosaicRun], kind: str, size: int) -> list[float]:
    """Scores benign tissue reached: regions (size >= `size`) away from any focus; top-k means of benign mosaics."""
    scores = []
    for run in runs:
        if kind == "top_k":
            if run.focus_fields == 0 and len(run.tiles):
                scores.append(float(np.sort(run.tiles["p_malignant"].to_numpy())[::-1][:size].mean()))
            continue
        position = {label: i for i, label in enumerate(run.tiles.index)}
        for region in find_regions(run.tiles, TILE_THRESHOLD):
            touches = any(run.near[position[r]] for r in region.rows)  # a tile partly on the focus is not benign
            if region.size >= size and not touches:
                scores.append(region.core_mean(size))
    return scores


def focus_scores(runs: list[MosaicRun], kind: str, size: int) -> list[float]:
    """Per focus mosaic, the best score ON the focus (0 when none): the highest core mean of a region
    of >= `size` tiles touching it; for top-k, the top-k mean when those tiles touch it."""
    scores = []
    for run in runs:
        if run.focus_fields == 0:
            continue
        position = {label: i for i, label in enumerate(run.tiles.index)}
        if kind == "top_k":
            top = run.tiles.sort_values(["p_malignant", "tile"], ascending=[False, True]).index[:size]
            touches = any(run.focus[position[r]] for r in top)
            scores.append(float(run.tiles.loc[top, "p_malignant"].mean()) if touches else 0.0)
            continue
        on = [r.core_mean(size) for r in find_regions(run.tiles, TILE_THRESHOLD)
              if r.size >= size and any(run.focus[position[t]] for t in r.rows)]
        scores.append(max(on, default=0.0))
    return scores


def score_rule(rule: SlideRule, runs: list[MosaicRun]) -> dict:
    """Specificity on benign-only mosaics; per focus size, the share called malignant and the share
    called malignant with the driving region on the focus (localised)."""
    called, localised, sizes = [], [], []
    for run in runs:
        positive, regions = apply_rule(rule, run.tiles)
        position = {label: i for i, label in enumerate(run.tiles.index)}
        on_focus = positive and any(run.focus[position[r]] for r in regions[0].rows)
        called.append(positive)
        localised.append(on_focus)
        sizes.append(run.focus_fields)
    called, localised, sizes = np.array(called), np.array(localised), np.array(sizes)
    benign = sizes == 0
    figures = {"specificity": float((~called[benign]).mean()) if benign.any() else None,
               "benign_mosaics": int(benign.sum()), "sensitivity": {}, "localised": {}, "mosaics": {}}
    for n in sorted(set(sizes[~benign].tolist())):
        chosen = sizes == n
        figures["sensitivity"][str(n)] = float(called[chosen].mean())
        figures["localised"][str(n)] = float(localised[chosen].mean())
        figures["mosaics"][str(n)] = int(chosen.sum())
    if (~benign).any():
        figures["sensitivity"]["all"] = float(called[~benign].mean())
        figures["localised"]["all"] = float(localised[~benign].mean())
    target = np.isin(sizes, TARGET_FOCI)
    if target.any():
        figures["localised"]["target"] = float(localised[target].mean())
    return figures


def choose_slide_rule(runs: list[MosaicRun], margin: float = MARGIN) -> dict:
    """{"rule": SlideRule, "figures", "candidates"} from analysed validation mosaics."""
    candidates = []
    for kind in ("region", "top_k"):
        for size in SIZES:
            worst = max(benign_scores(runs, kind, size), default=0.0)
            floor = max(worst, TILE_THRESHOLD)
            caught = [s for s in focus_scores(runs, kind, size) if s >= floor + margin]
            threshold = max(floor + margin, (floor + min(caught)) / 2 if caught else 0.0)
            if threshold > MOST:
                candidates.append({"kind": kind, "min_size": size, "min_mean_p": None, "benign_max": worst,
                                   "usable": False})
                continue
            rule = SlideRule(kind, float(size), round(float(threshold), 4))
            candidates.append({**rule.to_dict(), "benign_max": round(worst, 4), "usable": True,
                               **score_rule(rule, runs)})
    usable = [c for c in candidates if c["usable"]]
    if not usable:  # the model scores benign validation tissue near 1 however the rule looks: no call
        rule = SlideRule("none", 1.0, 1.0)
        figures = {**score_rule(rule, runs), "benign_max": round(min(c["benign_max"] for c in candidates), 4)}
        return {"rule": rule, "figures": figures, "candidates": candidates}
    best = max(usable, key=lambda c: (round(c["localised"].get("target", 0.0), 9), c["kind"] == "region",
                                      c["min_size"]))
    rule = SlideRule(best["kind"], float(best["min_size"]), best["min_mean_p"])
    return {"rule": rule, "figures": best, "candidates": candidates}


def run_mosaics(predictor, mosaics, settings=None) -> list[MosaicRun]:
    """Each mosaic through the real SlidePredictor (no Grad-CAM, small maps)."""
    from core.slide.predictor import SlidePredictor, TileSettings
    from core.slide.reader import open_slide

    slide_predictor = SlidePredictor(predictor, settings or TileSettings(top_k=0, map_side=256, batch_size=64))
    runs = []
    for mosaic in mosaics:
        with open_slide(mosaic.path) as reader:
            result = slide_predictor.predict(reader)
        tiles = result.tiles[["tile", "row", "col", "x", "y", "width", "height", "p_malignant"]]
        focus = mosaic.focus
        runs.append(MosaicRun(tiles, mosaic.focus_tiles(tiles, least=ON_FOCUS), len(focus),
                              None if not len(focus) else str(focus["case"].iloc[0]),
                              mosaic.focus_tiles(tiles, least=1e-6)))
    return runs


def validation_fields(predictor, data_dir) -> pd.DataFrame:
    """The model's validation images (path, label, case, ...), rebuilt from its card on `data_dir`."""
    from core.data.selection import SplitSpec, select_images
    from core.errors import UserInputError

    training = predictor.card.get("training") or {}
    if not training.get("data_fingerprint"):  # an ensemble, or a card from elsewhere: its val patients are unknown
        raise UserInputError(f"{predictor.name}'s card does not say which data and patients it learnt from "
                             "(an ensemble's members may have learnt from any patient), so no validation patients "
                             "can be rebuilt for its slide rule; choose the rule for a single trained model")
    spec = SplitSpec(protocol=training.get("split_protocol", "patient-wise"), seed=int(training.get("seed", 0)),
                     magnification=training.get("magnification", "all"))
    selection = select_images(data_dir, spec, report_skipped=False)
    _check_same_data(training, selection.fingerprint, data_dir)
    return selection.part("val").reset_index(drop=True)


def _check_same_data(training: dict, found: str, data_dir) -> None:
    """Mosaics are only of the data the card says the model was trained on (its fingerprint)."""
    from core.errors import UserInputError

    expected = training.get("data_fingerprint")
    if expected and found != expected:
        raise UserInputError(f"'{data_dir}' is not the data this model was trained on (fingerprint "
                             f"{found}, the card says {expected}).")


def fold_parts(model_dir, card: dict, data_dir) -> list[tuple] | None:
    """For the final model of a field-recipe cross-validation (run/model beside run/fold-k/model):
    [(fold k's Predictor with the final model's pooled temperatures, fold k's held-out fields)],
    rebuilt as the run built them (core.training.field_run); None for any other model."""
    from core.data.selection import fingerprint
    from core.data.splits import patient_kfold
    from core.errors import UserInputError
    from core.model.loading import load_predictor
    from core.training.field_run import data_fingerprint, field_table
    from core.training.runcard import cross_validation_folds

    training = card.get("training") or {}
    settings = training.get("settings") or {}
    folds = sorted((p for p in Path(model_dir).resolve().parent.glob("fold-*/model") if p.parent.name[5:].isdigit()),
                   key=lambda p: int(p.parent.name[5:]))  # fold-k only: a stray fold-old/ is not a fold
    if not cross_validation_folds(card):
        return None
    if len(folds) != settings["folds"]:  # its "validation" patients are patients it learnt from
        raise UserInputError(f"{model_dir} learnt from every patient of a {settings['folds']}-fold cross-validation: "
                             "its slide rule is chosen with the fold models beside it (RUN/fold-k/model); run "
                             "slide-threshold on RUN/model before installing it elsewhere")
    table = field_table(data_dir, settings.get("magnification", "all"))
    found = fingerprint(table)  # what cards recorded before fields runs named every magnification's images
    _check_same_data(training, found if training.get("data_fingerprint") == found else data_fingerprint(data_dir),
                     data_dir)
    temperatures = (card.get("calibration") or {}).get("temperatures") or {}
    parts = []
    for path, assigned in zip(folds, patient_kfold(table, settings["folds"], int(settings.get("seed", 0)))):
        predictor = load_predictor(path)
        predictor.temperatures = dict(temperatures)  # the calibration the final model was given, fitted on these
        parts.append((predictor, table[assigned["split"].to_numpy() == "test"].reset_index(drop=True)))
    return parts


def validate_slide_rule(model_dir, data_dir, work_dir=None, repeats: int = 2, benign_mosaics: int = 12,
                        grid: tuple[int, int] = (4, 4), seed: int = 0, write: bool = True) -> dict:
    """Choose the slide rule on mosaics of patients the model never learnt from, and write it into
    the card: the model's validation patients, or for a cross-validated final model (which learnt
    from every patient) each fold's held-out patients seen by that fold's model, pooled (as its
    temperatures and referral thresholds were chosen on the pooled out-of-fold predictions)."""
    from core.errors import UserInputError
    from core.model.folders import update_card
    from core.model.loading import load_predictor
    from core.slide.export import check_out_folder
    from core.slide.mosaic import fields_at_scale, mosaic_set

    predictor = load_predictor(model_dir)
    if write:  # before the mosaics, not when their rule is written
        check_out_folder(model_dir, "the model folder", " Use --dry-run to print the rule without writing it.")
    parts = fold_parts(model_dir, predictor.card, data_dir)
    split = "val" if parts is None else f"held-out patients of {len(parts)} folds, each by its fold's model (pooled)"
    if parts is None:
        parts = [(predictor, validation_fields(predictor, data_dir))]
    per_part = benign_mosaics if len(parts) == 1 else -(-benign_mosaics // len(parts))
    mpp, runs, used = model_scale(predictor.card)["mpp"], [], []
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="slide-rule-") as folder:
        for k, (part_predictor, fields) in enumerate(parts):
            try:
                mosaics = mosaic_set(fields, Path(folder) / f"part-{k}", part_predictor.card, FOCI, repeats, per_part,
                                     grid, seed + k)
            except ValueError as problem:
                if len(parts) == 1:
                    raise UserInputError(f"The slide rule cannot be chosen on this model's validation split: {problem}.")
                continue  # a fold without benign or malignant fields at the scale adds no mosaics
            runs += run_mosaics(part_predictor, mosaics)
            used.append(fields_at_scale(fields, mpp))
    if not runs:
        raise UserInputError("The slide rule cannot be chosen: no fold has benign and malignant fields at the scale.")
    chosen = choose_slide_rule(runs)
    used = pd.concat(used)
    figures = chosen["figures"]
    validation = {
        "selected_on": {"split": split, "patients": int(used["case"].nunique()),
                        "benign_patients": int(used.loc[used["label"] == "benign", "case"].nunique()),
                        "malignant_patients": int(used.loc[used["label"] == "malignant", "case"].nunique()),
                        "fields": int(len(used)), "mosaics": len(runs), "grid": list(grid),
                        "focus_fields": list(FOCI[1:]), "repeats": repeats, "seed": seed},
        "specificity": figures["specificity"], "sensitivity": figures["sensitivity"],
        "localised": figures["localised"], "mosaics_per_focus": figures["mosaics"],
        "benign_max": figures["benign_max"], "margin": MARGIN,
        "how": "threshold = the highest mean p(malignant) benign validation tissue reached (>= 0.5) + the margin, "
               "or halfway from it to the weakest focus that catches, if higher (specificity 1.0 on validation); "
               "rule = the highest localised sensitivity on foci of 2 and 4 of 16 fields, ties to the region rule, "
               f"then to the larger size; none (no slide call) when every threshold would exceed {MOST}",
        "candidates": [{k: v for k, v in c.items() if k not in ("tile_threshold", "mosaics", "benign_mosaics")}
                       for c in chosen["candidates"]]}
    entry = {**chosen["rule"].to_dict(), "validation": validation}
    if write:
        thresholds = dict(predictor.card.get("thresholds") or {})
        thresholds["slide_rule"] = entry
        update_card(model_dir, thresholds=thresholds)
    return entry
