"""The card of a training run: what the model is, what it was trained on, and how.

Written once by core.training.fit after training; the app (core.app.registry) and the evaluation
read it. Paths in it are relative to the data root (core.paths.portable), so cards move between
machines.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from core.backends import machine
from core.data.breakhis import subtype_counts
from core.data.labels import CLASS_OF_SUBTYPE, CLASSES, classes_of, untaught_classes
from core.data.scale import whole_field_scale
from core.data.splits import IMAGE, case_table, describe_split, is_synthetic
from core.errors import UserInputError
from core.evaluation.evidence import figures_clause
from core.paths import portable

DEMO_BELOW_TRAIN_IMAGES = 200
# The full BreakHis has 70 patients; a model that saw far fewer is labelled "limited data" wherever it predicts.
LIMITED_BELOW_PATIENTS = 60
NOT_RECORDED = "not recorded (not started from the command line)"


def _describe_augmentation(config) -> str:
    from core.data.augment import describe  # TensorFlow: imported only by the tf.data runs that need it

    return describe(config.augment_strength, config.zoom)


def head_options(config) -> dict:
    """The head's shape and regularisation (core.model.classifier.Heads) from the run's settings."""
    return {"branch_units": config.head_units, "head_units": config.head_units, "dropout": config.dropout,
            "l2": config.l2}


def counts_by_subtype(table: pd.DataFrame) -> dict:
    """{subtype: images} of the subtypes the table has (a card's by_subtype)."""
    return {k: int(v) for k, v in subtype_counts(table).items() if v}


def distinct(table: pd.DataFrame) -> pd.DataFrame:
    """One row per image file: --balance oversample repeats training rows, and a copy is no more evidence."""
    return table.drop_duplicates("path") if "path" in table else table


def split_counts(data: dict) -> dict:
    """{train: distinct real images, synthetic: GAN images, val, test} of a run's prepared data (config.json,
    the card, the stream)."""
    train = distinct(data["train"])
    return {"train": int((~is_synthetic(train)).sum()), "synthetic": int(is_synthetic(train).sum()),
            **{name: int(len(distinct(data[name]))) for name in ("val", "test")}}


def training_counts(trained_on: pd.DataFrame, counts: dict) -> dict:
    """The card's training counts, one definition for both pipelines: `counts` (split_counts: real training
    images, GAN images apart), real images only in by_subtype, GAN images in synthetic_by_subtype, and the
    shortfall GAN fill left (trained_on.attrs)."""
    shortfall = dict(trained_on.attrs.get("shortfall", {}))
    trained_on = distinct(trained_on)
    synthetic = is_synthetic(trained_on)
    return {"counts": counts, "by_subtype": counts_by_subtype(trained_on[~synthetic]),
            "synthetic_by_subtype": counts_by_subtype(trained_on[synthetic]), "synthetic_shortfall": shortfall}


def run_record(config) -> dict:
    """How a run was made, the same in both pipelines' cards: the command as typed (core.cli puts it in
    config.command_line; a Retrain job's is the `python -m core train ...` it launched), the machine
    (core.backends.machine, as a GAN session records it) and every setting but the paths."""
    return {"command": config.command_line or NOT_RECORDED, "machine": machine(),
            "settings": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("data", "out", "command_line")}}


def held_out_gaps(split: pd.DataFrame) -> list[str]:
    """Warnings for a run's start: a validation or test split without a class or a subtype of the data
    (core.data.splits.describe_split), where balanced accuracy and macro figures are n/a or average over
    fewer labels (core.evaluation.metrics.not_applicable). A class of few patients may not reach every split."""
    described, warnings = describe_split(split), []
    for part, name in (("val", "validation"), ("test", "test")):
        counts = described["subtypes"][part]
        classes = [c for c in CLASSES if not any(n for s, n in counts.items() if CLASS_OF_SUBTYPE[s] == c)]
        subtypes = [s for s in described["missing_subtypes"][part] if CLASS_OF_SUBTYPE[s] not in classes]
        if classes or subtypes:
            lacks = [f"no {' or '.join(classes)} images"] * bool(classes) + [f"no {', '.join(subtypes)}"] * bool(subtypes)
            warnings.append(f"the {name} split ({described['images'][part]} images, {described['cases'][part]} "
                            f"patients) has {' and '.join(lacks)}: its balanced accuracy and macro-F1 are "
                            + ("n/a" if classes else "averaged over the subtypes it has"))
    return warnings


def refuse_empty_held_out(split: pd.DataFrame, needed=("val", "test")) -> None:
    """Refuse a fields run on one split at its start when a split it needs is empty: it fits its temperatures and
    referral thresholds on the validation patients and scores the test ones, and an empty one failed only after
    the whole training, with NumPy's "need at least one array to concatenate" (QA #3)."""
    described = describe_split(split)
    empty = [part for part in needed if not described["images"][part]]
    if not empty:
        return
    names = {"train": "training", "val": "validation", "test": "test"}
    sizes = ", ".join(f"{names[part]} {described['cases'][part]} patients ({described['images'][part]} images)"
                      for part in ("train", "val", "test"))
    unit = "images" if described["protocol"] == IMAGE else "patients"  # what the split deals out per subtype
    most = (split if unit == "images" else case_table(split))["subtype"].value_counts().max()
    patients = split["case"].nunique()
    raise UserInputError(
        f"Cannot train on one split: its {' and '.join(names[part] for part in empty)} split would be empty "
        f"({sizes}; {patients} patients in all, at most {most} {unit} of a subtype). One split fits its calibration "
        "and referral thresholds on the validation patients and measures the model on the test patients, so it "
        f"needs both; a subtype gets a test {unit[:-1]} only from 2 {unit} and a validation one only from 3. Use "
        "patient-wise cross-validation instead, which tests every patient once and needs no validation split: `--folds K` "
        f"(K from 2 to {patients}; on the Retrain page, Advanced, 'Patient-wise cross-validation folds'), or add "
        "patients.")


def refuse_untaught_classes(trained_on: pd.DataFrame) -> None:
    """Refuse a run at its start (both pipelines) whose training split has no real image of a class: a
    classifier that never saw it calls everything the other class, and a test split of that class alone
    then reads as a perfect score (held_out_gaps covers validation and test)."""
    trained_on = distinct(trained_on)
    real = trained_on[~is_synthetic(trained_on)]
    by_class = classes_of(counts_by_subtype(real))
    missing = untaught_classes(by_class)
    if missing:
        has = ", ".join(f"{n} {c}" for c, n in by_class.items() if n) or "no"
        raise UserInputError(
            f"The training split has no {' or '.join(missing)} images ({has} real images of "
            f"{real['case'].nunique()} patients): a classifier that never saw a {' or '.join(missing)} image cannot "
            f"recognise one, and its figures would look perfect on a test split without it. Add "
            f"{' and '.join(missing)} images (of other patients) to the data folder.")


def is_demo(config, learnt: dict) -> bool:
    """A DEMO model (no valid accuracy, figures never shown): --demo, weights that learnt from fewer than
    DEMO_BELOW_TRAIN_IMAGES real images, or from no real image of a class (`learnt`: evidence(); a run
    refuses that at its start, refuse_untaught_classes). The one rule of both pipelines' cards."""
    return bool(config.demo or learnt["images"] < DEMO_BELOW_TRAIN_IMAGES or untaught_classes(learnt.get("by_class")))


def evidence(trained_on: pd.DataFrame, weights_used: str, figures_on: str) -> dict:
    """What a model rests on, in the card and wherever it predicts: the distinct real images and patients
    its weights learnt from (not its validation or test patients) and what its figures were measured on
    (worded "not evaluated" until an evaluation has written them: core.evaluation.evidence)."""
    trained_on = distinct(trained_on)
    real = trained_on[~is_synthetic(trained_on)]
    patients = int(real["case"].nunique())
    start = "from scratch" if weights_used.startswith("random") else "from " + weights_used
    return {"images": int(len(real)), "patients": patients, "weights_init": weights_used,
            "by_magnification": {m: int(n) for m, n in real["magnification"].value_counts().sort_index().items()},
            "by_class": classes_of(counts_by_subtype(real)),
            "limited": patients < LIMITED_BELOW_PATIENTS, "figures_measured_on": figures_on,
            "statement": (f"weights learnt from {len(real)} real images of {patients} patients ({start}); "
                          f"{figures_clause(figures_on)}"
                          + ("; limited data, not a diagnosis" if patients < LIMITED_BELOW_PATIENTS else ""))}


def cross_validation_folds(card: dict) -> int:
    """k for the final model of a fields k-fold cross-validation (its weights learnt from every
    patient; its figures are the folds' out-of-fold predictions), else 0: such a model has no
    held-out split of its own to rebuild."""
    training = card.get("training") or {}
    folds = int((training.get("settings") or {}).get("folds") or 0)
    return folds if training.get("pipeline") == "fields" and folds >= 2 else 0


def split_figures_on(split: pd.DataFrame, part: str = "test") -> str:
    """'the test split (N images, M patients)' of a run's split table."""
    rows = split[split["split"] == part]
    leaky = "protocol" in rows and (rows["protocol"] == IMAGE).any()  # the statement travels without the metrics
    return (f"the {part} split ({len(rows)} images, {rows['case'].nunique()} patients)"
            + (" of an image-level (leaky) split: its patients are in training too, so they are optimistic"
               if leaky else ""))


def training_scale(config, train: pd.DataFrame) -> dict:
    """card["scale"]: every model trained here sees whole fields (core.data.scale.model_scale)."""
    if str(config.magnification).lower() != "all":
        return whole_field_scale(config.magnification, "trained on whole fields")
    real = train[~is_synthetic(train)]
    return whole_field_scale(real["magnification"].value_counts().to_dict() or "200X", "trained on whole fields")


def model_card(config, data, weights_used, history_summary, distribution, validation) -> dict:
    rows = data["train"]  # oversampled copies included: what an epoch iterates over
    train = distinct(rows)
    learnt = evidence(train, weights_used, split_figures_on(data["split"]))
    augmentation = ("none: fast mode trains the heads on features computed once, without augmentation"
                    if config.mode == "fast" else _describe_augmentation(config))
    return {
        "name": Path(config.out).name, "backbone": config.backbone, "hierarchy": config.hierarchy,
        "input_size": config.input_size, "weights_init": weights_used,
        "demo": is_demo(config, learnt),
        "evidence": learnt,
        "scale": training_scale(config, train),
        "stain_normalization": data["normalizer"].to_dict(),
        "training": {
            "data_source": portable(config.data), "data_fingerprint": data["fingerprint"],
            "split_protocol": str(data["split"]["protocol"].iloc[0]),
            **training_counts(rows, split_counts(data)), "train_rows_per_epoch": int(len(rows)),
            "split": describe_split(data["split"]), "pipeline": "tfdata",
            "mode": config.mode, **history_summary, "epochs_requested": config.epochs,
            "balance": config.balance, "magnification": config.magnification, "augmentation": augmentation,
            "learning_rate": config.learning_rate, "batch_size": config.batch_size, "seed": config.seed,
            "head": head_options(config), "feature_cache": data.get("feature_cache"),
            "distribution": distribution, "validation": validation, **run_record(config),
        },
    }


