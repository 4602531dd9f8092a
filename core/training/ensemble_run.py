"""Ensemble run folders: several trained classifiers as one model (core.model.ensemble).

    python -m core ensemble --members runs/a/model runs/b/model --out runs/a-plus-b

Members trained on the same split (different backbones, or seeds) share their held-out cases, so
the ensemble run gets that split and is evaluated like any run: the ensemble and every member on
the same test images (core.evaluation.evaluate). The fold models of a k-fold cross-validation
(core.training.crossval) each held out different patients, so that ensemble has no common
held-out cases: its card points to the cross-validation, which is the estimate of its accuracy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from core.model.folders import save_ensemble
from core.paths import claim_run


def _run_of(member: Path) -> Path:
    """The run folder of a member model folder (runs/NAME/model -> runs/NAME)."""
    return member.parent if (member.parent / "split.csv").is_file() else member


def shared_split(members: list[Path]) -> pd.DataFrame | None:
    """The first member's split.csv when every member's puts the same images in the same splits, else None.
    Images are matched by file name, as core.data.selection.fingerprint identifies them: a tf.data run
    records paths relative to its data folder, a fields run absolute ones."""
    splits, first = [], None
    for member in members:
        csv = _run_of(member) / "split.csv"
        if not csv.is_file():
            return None
        table = pd.read_csv(csv)
        first = table if first is None else first
        named = table.assign(path=table["path"].map(os.path.basename))[["path", "split"]]
        splits.append(named.sort_values(["path", "split"]).reset_index(drop=True))
    return first if all(s.equals(splits[0]) for s in splits[1:]) else None


def ensemble_run(members: list, out, name: str | None = None, evaluate: bool = True, data=None,
                 allow_missing: bool = False, **card_fields) -> Path:
    """OUT/model (the ensemble card) and, for members of one split, OUT/split.csv and its evaluation
    (core.evaluation.evaluate.evaluate_run: `data` and `allow_missing` as `evaluate --data`'s).

    All or nothing: when any step fails (the evaluation, most often), what this call added to OUT is
    removed again, so a half-made OUT/model does not refuse the retry as "already holds a model"."""
    members, out = [Path(m) for m in members], Path(out)
    before = set(out.iterdir()) if out.is_dir() else None
    with claim_run(out, ("model",), holds="a model"):  # this process's until the ensemble is written
        try:
            return _ensemble_run(members, out, name, evaluate, card_fields, data, allow_missing)
        except BaseException:
            _remove_added(out, before)
            raise


def _remove_added(out: Path, before: set | None) -> None:
    """Remove OUT if this call created it, else only the entries it added."""
    if before is None:
        shutil.rmtree(out, ignore_errors=True)
        return
    for entry in set(out.iterdir()) - before if out.is_dir() else ():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _ensemble_run(members: list[Path], out: Path, name: str | None, evaluate: bool, card_fields: dict, data=None,
                  allow_missing: bool = False) -> Path:
    common = shared_split(members)
    if common is not None:
        source = _run_of(members[0])
        out.mkdir(parents=True, exist_ok=True)
        for name_ in ("split.csv", "config.json"):
            if (source / name_).is_file():
                shutil.copy2(source / name_, out / name_)
        card_fields.setdefault("evaluation", "the ensemble and each member on the members' common held-out split")
    else:
        card_fields.setdefault("evaluation", "members held out different cases (e.g. k-fold): no common test set; "
                                             "see the cross-validation for the accuracy estimate")
    folder = save_ensemble(members, out / "model", name=name or out.name, **card_fields)
    if common is not None and evaluate and (common["split"] == "test").any():
        from core.evaluation.evaluate import evaluate_run

        evaluate_run(out, data, allow_missing=allow_missing)
    return folder
