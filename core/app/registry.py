"""What the app can show: model folders, bundled samples, GAN images, and how to describe a model.

No Streamlit here (core.app.session wraps these in caches). Environment variables (all optional):
  BREAKHIS_DEFAULT_MODEL  model folder active when a session starts (default models/default)
  BREAKHIS_MODEL_DIRS     os.pathsep-separated folders searched for models (default models:runs)
  BREAKHIS_RUNS_DIR       where Retrain writes runs and the job file (default runs)
  BREAKHIS_SYNTHETIC_DIR  GAN images for the "GAN fill" strategy (default data/synthetic)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from core.data.breakhis import IMAGE_EXTENSIONS, parse_name, parse_synthetic_name
from core.data.labels import MAGNIFICATIONS, pretty
from core.data.scale import name_magnification
from core.data.splits import normalise_protocol
from core.errors import ModelFolderError, UserInputError
from core.evaluation.evidence import NOT_EVALUATED, evidence_statement, is_evaluated
from core.evaluation.metrics import split_name
from core.evaluation.subtype_trust import SUBTYPE_NOT_RELIABLE, subtype_reliability, tested
from core.jsonfile import read_json
from core.model.card_shape import usable_card
from core.model.folders import (
    CARD_FILE,
    CLASSIFIER,
    ENSEMBLE,
    GENERATOR,
    MODEL_FILE,
    card_is_demo,
    card_kind,
    find_model_folders,
    read_card,
)
from core.paths import (
    DEFAULT_GENERATOR_DIR,
    DEFAULT_MODEL_DIR,
    MODELS_DIR,
    PROGRESS_STREAM,
    REPO,
    SAMPLES_DIR,
    folder_setting_problem,
    runs_dir,
)
from core.training.progress import final_status

NOT_STATED = "not stated"


def model_roots() -> list[Path]:
    configured = os.environ.get("BREAKHIS_MODEL_DIRS")
    if configured:
        return [Path(p) for p in configured.split(os.pathsep) if p]
    return [MODELS_DIR, runs_dir()]


def default_model() -> Path:
    configured = os.environ.get("BREAKHIS_DEFAULT_MODEL")
    folder = Path(configured) if configured else Path(DEFAULT_MODEL_DIR)
    return folder if folder.is_absolute() else REPO / folder


def _folders(kind) -> list[str]:
    """Model folders of a kind (or kinds) under the roots, resolved, sorted, no duplicates; the
    members stored inside an ensemble folder are left out (the ensemble stands for them)."""
    found = [Path(f).resolve() for f in find_model_folders(*[root for root in model_roots() if root.is_dir()], kind=kind)]
    ensembles = [f for f in found if _is_ensemble(f)]
    kept = [f for f in found if not any(e != f and f.is_relative_to(e) for e in ensembles)]
    return list(dict.fromkeys(str(f) for f in kept))


def _is_ensemble(folder: Path) -> bool:
    try:
        return card_kind(read_json(folder / CARD_FILE)) == ENSEMBLE
    except (OSError, ValueError, AttributeError):
        return False


def is_fields_fold_model(folder: str | os.PathLike) -> bool:
    """A fields cross-validation's fold model (RUN/fold-k/model, or a seed member under it): kept for
    the run's slide rule and refits, uncalibrated and without figures of its own; the run's final
    model, calibrated on every fold's held-out patients, stands for them. (A tf.data CV's folds are
    whole evaluated runs and stay listed.)"""
    folder = Path(folder)
    fold = next((p for p in (folder.parent, folder.parent.parent) if re.fullmatch(r"fold-\d+", p.name)), None)
    if fold is None or not (fold.parent / "cv.json").is_file():
        return False
    try:
        return (read_json(folder / CARD_FILE).get("training") or {}).get("pipeline") == "fields"
    except (OSError, ValueError, AttributeError):
        return False


def _stated_kind(folder: Path) -> str | None:
    """The kind a folder's card states; None when the card cannot be read."""
    try:
        return card_kind(read_json(folder / CARD_FILE))
    except (OSError, ValueError, AttributeError):
        return None


def _unfinished(folder: str) -> bool:
    """A model whose run has not ended (still calibrating or evaluating, or killed) or was cancelled: saved, but
    not made complete. Its run is the nearest folder above it, within the model roots, with a progress stream
    (RUN/model, RUN/member-k/model, RUN/fold-k/member-k/model); a folder without one (a model copied in) is none."""
    roots = [root.resolve() for root in model_roots()]
    for run in [p for p in Path(folder).parents[:3] if any(p.is_relative_to(root) for root in roots)]:
        stream = run / PROGRESS_STREAM
        if stream.is_file():
            try:
                ended = final_status(stream)
            except OSError:
                return False
            # A failed run's model was moved aside: one put back in model/ is there to be finished by hand.
            return ended not in ("completed", "failed")
    return False


def available_models() -> list[str]:
    """Classifier folders the user can switch between, the default first, without a fields
    cross-validation's fold models, nor the model of a run that is running, was killed or was cancelled
    (_unfinished: uncalibrated or unevaluated). A folder whose card cannot be read stays listed, so the sidebar
    can say why it cannot be used; a default holding a GAN generator is never offered as a
    classifier (model_setup_problems says so)."""
    folder = default_model()
    usable = (folder / CARD_FILE).is_file() and _stated_kind(folder) != GENERATOR
    default = [str(folder.resolve())] if usable else []
    found = [f for f in _folders((CLASSIFIER, ENSEMBLE)) if not is_fields_fold_model(f) and not _unfinished(f)]
    return list(dict.fromkeys(default + found))


def _default_model_problem() -> str | None:
    """Why the default model folder is not offered, in words; None when it is (a damaged card is
    explained when that model is chosen)."""
    folder = default_model()
    setting = (f"BREAKHIS_DEFAULT_MODEL ({folder})" if os.environ.get("BREAKHIS_DEFAULT_MODEL")
               else f"The default model folder ({short_location(str(folder))})")
    if (folder / CARD_FILE).is_file():
        if _stated_kind(folder) == GENERATOR:
            return f"{setting} points to a GAN generator, which cannot classify images"
        return None
    try:
        read_card(folder)
    except ModelFolderError as error:  # not found, a file, no card.json: its words name the fix
        return f"{setting} cannot be used: {error}"
    return None


def model_setup_problems() -> list[str]:
    """What is wrong with the configured model folders, one sentence each, for the sidebar: the app
    then uses another model (or none), and an operator who chose a specific model must be told
    rather than find out from a report. The model folders are checked only when configured, and the
    runs folder only once it exists (it is made by the first training)."""
    problems = [_default_model_problem()]
    if os.environ.get("BREAKHIS_MODEL_DIRS"):
        runs = runs_dir().resolve()
        problems += [folder_setting_problem("BREAKHIS_MODEL_DIRS", root)  # find_model_folders skips them silently
                     for root in model_roots() if root.exists() or root.resolve() != runs]
    return [problem for problem in problems if problem]


def no_model_text() -> str:
    """'No model found in <the folders searched>', naming the configured folders, not models/ or runs/."""
    return "No model found in " + ", ".join(
        str(root.resolve().relative_to(REPO)) if root.resolve().is_relative_to(REPO) else str(root)
        for root in model_roots())


def generator_folders() -> list[str]:
    """GAN generator folders under the same roots, the bundled one (named like it) first."""
    return sorted(_folders(GENERATOR), key=lambda folder: (Path(folder).name != DEFAULT_GENERATOR_DIR.name, folder))


def short_location(folder: str) -> str:
    """models/default, runs/NAME/model, ... (relative to the repo or the runs folder when inside)."""
    path = Path(folder).resolve()
    for base in (REPO, runs_dir().resolve().parent):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)


def stamp(folder: str) -> float:
    """Changes when a model folder is rewritten, so a cache never serves a stale model."""
    files = [Path(folder) / name for name in (MODEL_FILE, CARD_FILE)]
    return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)


def measured_accuracy(card: dict) -> str | None:
    """'patient-level accuracy 0.78 (95% CI 0.56-1.00, 9 test patients)' from the card's evaluation."""
    metrics = card.get("metrics") or {}
    patient = (metrics.get("intervals") or {}).get("patient") or {}
    block = patient.get("stage1_accuracy")
    if not block or block.get("value") is None:
        return None
    interval = f"95% CI {block['low']:.2f}-{block['high']:.2f}, " if block.get("low") is not None else ""
    cases, rows = patient.get("cases", "?"), patient.get("rows", patient.get("cases", "?"))
    split = tested(metrics)
    who = f"{cases} patients, each tested out of fold" if split == "out-of-fold" else f"{cases} {split} patients"
    if rows != cases:  # an older evaluation scored a case with two tumour types twice: say which unit it counted
        who = f"{who}, counted as {rows} patient-and-tumour-type groups"
    return f"patient-level stage-1 accuracy {block['value']:.2f} ({interval}{who})"


def stage_calls(prediction, reliable: bool) -> tuple[str, str]:
    """The two calls, each with its own probability: ('Benign (p 0.85)', 'Fibroadenoma (p 0.62 within
    benign)'); an unreliable subtype is demoted. Not the joint p(class) x p(subtype | class): next to a
    confident, correct stage-1 call, a low product reads as doubt about the class."""
    p = prediction
    subtype = (f"{pretty(p.subtype)} (p {p.shown(p.p_subtype, 2, 'subtype')} within {p.label})" if reliable
               else f"subtype {SUBTYPE_NOT_RELIABLE}")
    return f"{pretty(p.label)} (p {p.shown(p.p_label, 2)})", subtype


def uncertainty_rule(card: dict) -> str:
    """How the model's uncertainty threshold was chosen, for the caption next to it."""
    return (((card.get("thresholds") or {}).get("uncertainty") or {}).get("rule")) or "chosen on validation"


def data_text(on) -> str | None:
    """The data a calibration or threshold was fitted on, in words: a card states it as a sentence
    (a cross-validated model's "pooled out-of-fold predictions of 5-fold CV ...") or as a scope
    (core.evaluation.metrics.scope: split, protocol, images, cases)."""
    if not on:
        return None
    if isinstance(on, str):
        return on
    name, cases, images = split_name(on), on.get("cases", "?"), on.get("images", "?")
    protocol = on.get("protocol") or "unknown protocol"
    if name == "out-of-fold":
        return f"pooled out-of-fold predictions of {cases} patients: {images} images, {protocol}"
    return f"{cases} {'validation' if name == 'val' else name} patients: {images} images, {protocol} split"


def probabilities_text(model: dict) -> str:
    """What the probabilities are, as the PDF and predict's header state it: describe_model's dict ->
    'calibrated (temperature scaling, fitted on ...)' or 'raw softmax outputs (not calibrated)'."""
    if not model.get("calibrated"):
        return "raw softmax outputs (not calibrated)"
    on = model.get("calibrated_on") or "temperature scaling; the model card does not say on which data"
    return f"calibrated ({on})"


def calibrated_on(card: dict) -> str | None:
    """How the card's probabilities were calibrated and on which data, from the card itself (a
    cross-validated model is calibrated on pooled out-of-fold predictions, not a validation split)."""
    if card.get("kind") == "ensemble":
        return "the mean of its members' calibrated probabilities, each member's temperatures fitted on its own data"
    on = data_text((card.get("calibration") or {}).get("fitted_on"))
    return f"temperature scaling, fitted on {on}" if on else None


def split_protocol(card: dict | None, run: dict | None = None) -> str | None:
    """The split protocol a model's figures were computed under (each must state it), read one way for the
    sidebar, the report and the Retrain job's caption: its card's (a tf.data card's training.split_protocol,
    else its metrics' protocol, else a fields card's training.settings.split), or while it trains, the run's
    settings' `split` (its config.json, the job's settings); a setting in the protocol's own words
    (core.data.splits.normalise_protocol: "image-level" is "image-level (leaky)"). None if none says."""
    card = card or {}
    training = card.get("training") or {}
    stated = training.get("split_protocol") or (card.get("metrics") or {}).get("protocol")
    setting = (training.get("settings") or {}).get("split") or (run or {}).get("split")
    if stated or not setting:
        return stated or None
    try:
        return normalise_protocol(setting)
    except UserInputError:  # a spelling of an older version: shown as written
        return str(setting)


def describe_model(card: dict) -> dict:
    """The sidebar's and the report's few lines about a model; a block of a wrong type (a card edited by hand
    after it was made active) is read as not recorded, so no page crashes on it (read_card refuses it)."""
    card = usable_card(card)
    training = card.get("training") or {}
    counts = training.get("counts") or {}
    evidence = card.get("evidence") or {}
    metrics = card.get("metrics") or {}
    subtype_reliable, subtype_note = subtype_reliability(card)
    protocol = split_protocol(card) or "unknown protocol"
    # The held-out images the figures were measured on, the same count for both pipelines (a fields run
    # records no split counts); a cross-validation's: every image, each tested out of fold. None before an
    # evaluation (its test split is not what any figure was measured on).
    images = metrics.get("images") or (metrics.get("data") or {}).get("images") or counts.get("test")
    images = int(images) if isinstance(images, (int, float)) and is_evaluated(card) else 0
    return {
        "name": card.get("name", "unnamed model"),
        "backbone": card.get("backbone", "?"),
        "hierarchy": card.get("hierarchy", "?"),
        "demo": card_is_demo(card),  # a card written before the class rule included
        "data": (f"{evidence['images']} real images of {evidence['patients']} patients (folder "
                 f"'{training.get('data_source', '?')}')" if evidence.get("images") else
                 training.get("data_source", "unknown data")),
        # A fields run's card states its protocol and images with its metrics (a cross-validation has no split)
        "protocol": protocol,
        "images": images,
        "split": _split_text(protocol, images, tested(metrics)) if is_evaluated(card) else f"{protocol}, {NOT_EVALUATED}",
        "magnification": training.get("magnification", "all"),
        "sha256": card.get("sha256", ""),
        "created": card.get("created", ""),
        "limited": bool(evidence.get("limited")),
        "calibrated": bool((card.get("calibration") or {}).get("temperatures")),
        "calibrated_on": calibrated_on(card),
        "evidence": evidence_statement(card),  # "not evaluated" until it is
        "measured": measured_accuracy(card),
        "subtype_reliable": subtype_reliable,
        "subtype_note": subtype_note,
    }


def _split_text(protocol: str, images: int, tested_on: str) -> str:
    """'patient-wise, 43 test images', '... pooled out-of-fold, 757 images, each tested out of fold'."""
    if not images:
        return protocol
    return f"{protocol}, {images} " + ("images, each tested out of fold" if tested_on == "out-of-fold"
                                       else f"{tested_on} images")


def model_badge(card: dict) -> str:
    """Short label every prediction carries: 'DEMO · name (backbone)' for a demo model, and for a
    model trained on limited data 'LIMITED DATA · name (backbone) · <its measured accuracy>'."""
    info = describe_model(card)
    if info["demo"]:
        return f"DEMO · {info['name']} ({info['backbone']})"
    if info["limited"]:
        return f"LIMITED DATA · {info['name']} ({info['backbone']})" + (f" · {info['measured']}" if info["measured"] else "")
    return f"{info['name']} ({info['backbone']})"


def sample_items() -> dict[str, Path]:
    """Bundled real samples: display name -> path."""
    paths = sorted(p for p in SAMPLES_DIR.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return {f"{pretty(parse_name(p.name).subtype)} · {p.name}" if parse_name(p.name) else p.name: p
            for p in paths}


def learnt_from(model_folder) -> tuple[set[str], str] | None:
    """(the file names of the images a model's weights learnt from, the kept file that lists them), or None
    when its run kept no such list. Read from the run's own files (core.app.run_files.run_file): its split.csv's
    training rows; or, for a fields cross-validation whose final model learnt from every patient (the card's
    settings: folds and final_model), its pooled out-of-fold predictions, one row per image it learnt from."""
    from core.app.run_files import read_csv_file, run_file

    split, _ = read_csv_file(run_file(model_folder, "split.csv"))
    if split is not None and {"path", "split"} <= set(split.columns):
        return {Path(str(p)).name for p in split.loc[split["split"] == "train", "path"]}, "split.csv"
    try:
        settings = (read_card(model_folder).get("training") or {}).get("settings") or {}
    except ModelFolderError:
        return None
    pooled, _ = read_csv_file(run_file(model_folder, "oof_predictions.csv"))
    if settings.get("folds") and settings.get("final_model") and pooled is not None and "path" in pooled:
        return {Path(str(p)).name for p in pooled["path"]}, "oof_predictions.csv"
    return None


def training_samples(samples: dict[str, Path], model_folder) -> tuple[list[str], str | None]:
    """(the bundled samples, by display name, that the model learnt from; the sentence to show where they are
    offered, None when its run kept no list of its training images or none of them is a sample). A training
    image shows how images flow through the app, not how well the model does on new patients."""
    learnt = learnt_from(model_folder)
    if learnt is None:
        return [], None
    names, source = learnt
    seen = [name for name, path in samples.items() if path.name in names]
    if not seen:
        return [], None
    share = f"All {len(samples)}" if len(seen) == len(samples) else f"{len(seen)} of the {len(samples)}"
    return seen, (f"{share} bundled samples are training images of this model (its {source} lists the images "
                  "it learnt from): they show how the app works, not its accuracy.")


def synthetic_folder() -> str | None:
    """The GAN images folder, only when it exists and holds GAN images."""
    folder = Path(os.environ.get("BREAKHIS_SYNTHETIC_DIR") or REPO / "data" / "synthetic")
    if folder.is_dir() and any(parse_synthetic_name(p.name) for p in folder.rglob("SYN_*.png")):
        return str(folder)
    return None


def magnification_options() -> list[str]:
    return [NOT_STATED, *MAGNIFICATIONS]


def magnification_from_name(name: str) -> str | None:
    """40X ... 400X from a BreakHis name or a standalone token ('slide7_100x.tif'): the one rule of
    core.data.scale.name_magnification, which the tiling and scale of the same image use."""
    return name_magnification(name)
