"""Model folders: `model.keras` + `card.json`, written and read in exactly one way for every kind.

A card says what the model is (its `kind`: a classifier or a GAN generator; labels; for a
classifier its backbone, hierarchy, input size and preprocessing; training data; metrics) and
carries the SHA-256 of `model.keras`, so a model that was swapped, truncated or tampered with is
refused before Keras ever deserialises it. Loading uses Keras' safe mode (no arbitrary code from
the file) and never compiles: prediction and sampling need no optimizer.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np

from core.backends import saving_without_tensorflow
from core.data.fields import ViewSpec
from core.data.labels import CLASSES, SUBTYPES, SUBTYPES_BY_CLASS, classes_of, output_sizes, untaught_classes
from core.data.labels import PREPROCESSING as DESCRIPTION
from core.digests import file_sha256
from core.errors import ModelFolderError, UserInputError
from core.jsonfile import read_json, write_json_atomic
from core.model.backbones import get_backbone  # Importing core.model.backbones registers PixelNormalization.
from core.model.card_shape import card_shape_problems, usable_card  # noqa: F401 - card_shape_problems: also read here by callers
from core.model.classifier import cam_layer

MODEL_FILE, CARD_FILE = "model.keras", "card.json"
CLASSIFIER, GENERATOR, ENSEMBLE = "classifier", "gan_generator", "ensemble"
# What each kind's card must say; cards written before kinds existed are classifiers. An ensemble
# folder holds only its card, which lists its member classifier folders and their checksums.
REQUIRED_CARD_KEYS = {CLASSIFIER: ("backbone", "hierarchy", "input_size", "sha256"),
                      GENERATOR: ("image_size", "latent_dim", "subtypes", "sha256"),
                      ENSEMBLE: ("members", "hierarchy")}
KIND_NAMES = {CLASSIFIER: "classifier", GENERATOR: "GAN generator", ENSEMBLE: "ensemble of classifiers"}


def labels_block() -> dict:
    """The label order a model was trained with; a loaded card must agree with core.data.labels."""
    return {"classes": list(CLASSES), "subtypes": list(SUBTYPES),
            "subtypes_by_class": {c: list(s) for c, s in SUBTYPES_BY_CLASS.items()}}


def _versions() -> dict:
    """Library versions and the Keras backend that wrote the file (a model trained under JAX loads
    under TensorFlow: the .keras file holds weights, not backend code)."""
    versions = {"keras": keras.__version__, "keras_backend": keras.backend.backend(), "numpy": np.__version__,
                "python": platform.python_version()}
    for name in ("tensorflow", "jax"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = module.__version__
    return versions


def card_kind(card: dict) -> str:
    return card.get("kind", CLASSIFIER)


def save_model_folder(model: keras.Model, folder: str | os.PathLike, card: dict, kind: str = CLASSIFIER) -> Path:
    """Save `model` and its card into `folder`; returns the folder.

    The caller gives what only it knows (name, training, metrics; for a classifier backbone and
    hierarchy); this fills what must be true of the saved file: kind, sha256, versions, labels,
    the creation time and, for a classifier, input_size and preprocessing.
    """
    if kind not in REQUIRED_CARD_KEYS:
        raise ValueError(f"Unknown model kind {kind!r}; choose one of {sorted(REQUIRED_CARD_KEYS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    missing = [key for key in REQUIRED_CARD_KEYS[kind] if key not in card and key not in ("sha256", "input_size")]
    if missing:
        raise ValueError(f"The model card needs {', '.join(map(repr, missing))}")
    extra = {}
    if kind == CLASSIFIER:
        input_size = int(model.input_shape[1])
        if card.get("input_size") not in (None, input_size):
            raise ValueError(f"Card input_size {card['input_size']} does not match the model ({input_size})")
        extra = {"input_size": input_size,
                 "preprocessing": {"description": (ViewSpec.from_card(card).describe() if card.get("views")
                                                   else DESCRIPTION.format(size=input_size)),
                                   "normalization": get_backbone(card["backbone"]).normalization},
                 "demo": bool(card.get("demo", False))}
    with tempfile.TemporaryDirectory(dir=folder, prefix=".saving-") as staging:
        staged = Path(staging) / MODEL_FILE
        # An uncompiled view of the same layers: the file holds weights, not optimizer state
        # (Adam's two moment copies would triple a DenseNet121 file to ~100 MB).
        with saving_without_tensorflow():  # under JAX, Keras' serializer would import TensorFlow to ask a question
            keras.Model(model.inputs, model.output, name=model.name).save(staged)
        checksum = file_sha256(staged)
        os.replace(staged, folder / MODEL_FILE)
    full_card = {"kind": kind, "name": card.get("name", folder.name), **card,
                 "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "labels": labels_block(), **extra, "sha256": checksum, "versions": _versions()}
    write_json_atomic(folder / CARD_FILE, full_card)
    return folder


def _check_is_model_folder(folder: str | os.PathLike) -> None:
    """Refuse a path that is not a model folder, naming the likely right one for the common mistakes: an
    empty path (which Path reads as the current folder), a model's file (pass its folder), a run folder
    or a folder of models (did you mean the model folder inside?)."""
    if not str(folder).strip():
        raise ModelFolderError(f"No model folder given (the path is empty): name a folder holding {MODEL_FILE} "
                               f"and {CARD_FILE}")
    folder = Path(folder)
    if folder.is_file():
        parent = folder.parent if folder.parent != Path(".") else folder.absolute().parent
        if folder.name in (MODEL_FILE, CARD_FILE) or (parent / CARD_FILE).is_file():
            raise ModelFolderError(f"{folder} is a file of a model folder: pass its folder, {parent}")
        raise ModelFolderError(f"{folder} is a file, not a model folder ({MODEL_FILE} + {CARD_FILE})")
    if not folder.is_dir():
        raise ModelFolderError(f"Model folder not found: {folder}")
    if (folder / CARD_FILE).is_file():
        return
    inside = sorted((path.parent for path in folder.glob(f"*/{CARD_FILE}")), key=lambda p: (p.name != "model", p))
    hint = ""
    if len(inside) == 1:
        hint = f"; did you mean {inside[0]}?"
    elif inside:
        hint = f"; did you mean one of {', '.join(map(str, inside[:4]))}{', ...' if len(inside) > 4 else ''}?"
    raise ModelFolderError(f"{folder} has no {CARD_FILE}: it is not a model folder{hint}")


def card_is_demo(card: dict) -> bool:
    """Is this card's model a DEMO one (no valid accuracy, figures never shown)? Its flag (set by the one
    rule, core.training.runcard.is_demo), or, for a card written before the class rule (its evidence has no
    by_class), the class rule read from its training.by_subtype: weights that never saw a class. Every
    reader of a card (the sidebar, the predictor's banner, Compare, make-default) asks this."""
    return bool(card.get("demo")) or bool(card_untaught_classes(card))


def card_untaught_classes(card: dict) -> list[str]:
    """The classes of which the card's weights learnt from no real image: its evidence's by_class, or, on a
    card written before it, its training.by_subtype; none where neither is recorded."""
    card = usable_card(card)  # a card edited by hand: its wrongly typed blocks count as not recorded
    by_class = (card.get("evidence") or {}).get("by_class")
    by_subtype = (card.get("training") or {}).get("by_subtype")
    if by_class is None and isinstance(by_subtype, dict) and by_subtype:
        by_class = classes_of(by_subtype)
    return untaught_classes(by_class)


def read_card(folder: str | os.PathLike, kind: str | None = None) -> dict:
    """The card of a model folder (of `kind`, when given), checked for shape without loading the model."""
    _check_is_model_folder(folder)
    folder = Path(folder)
    card_path = folder / CARD_FILE
    try:
        card = read_json(card_path)
    except OSError as error:  # the file is there but the server may not read it (permissions, a bad mount)
        raise ModelFolderError(f"cannot read the model card {card_path} ({_reason(error)})") from None
    except ValueError as error:  # json.JSONDecodeError and UnicodeDecodeError
        raise ModelFolderError(f"The model card {card_path} is not valid JSON ({error})") from None
    if not isinstance(card, dict):
        raise ModelFolderError(f"The model card {card_path} is not a JSON object")
    found = card_kind(card)
    if found not in REQUIRED_CARD_KEYS:
        raise ModelFolderError(f"{folder} holds a model of unknown kind {found!r}")
    if kind is not None and found != kind:
        raise ModelFolderError(f"{folder} holds a {KIND_NAMES[found]}, not a {KIND_NAMES[kind]}")
    missing = [key for key in REQUIRED_CARD_KEYS[found] if key not in card]
    if missing:
        raise ModelFolderError(f"The model card {card_path} lacks {', '.join(missing)}")
    wrong = card_shape_problems(card)
    if wrong:
        raise ModelFolderError(f"The model card {card_path} has a field of the wrong type ({'; '.join(wrong)}): "
                               "it was edited by hand or damaged")
    if card.get("labels", labels_block()) != labels_block():
        raise ModelFolderError(
            f"The model in {folder} was trained with a different label order than this app uses; "
            "its outputs would be misread, so it is refused")
    return card


def _reason(error: OSError) -> str:
    """'Permission denied' rather than '[Errno 13] Permission denied: /the/path/again'."""
    return error.strerror or str(error)


def verify_checksum(folder: str | os.PathLike, card: dict) -> None:
    model_path = Path(folder) / MODEL_FILE
    if not model_path.is_file():
        raise ModelFolderError(f"{Path(folder)} has a card but no {MODEL_FILE}")
    try:
        checksum = file_sha256(model_path)
    except OSError as error:  # e.g. chmod 000: said like a damaged file, not an OSError traceback
        raise ModelFolderError(f"cannot read {model_path} ({_reason(error)})") from None
    if checksum != card["sha256"]:
        raise ModelFolderError(
            f"{model_path}: model file does not match its card - it may be corrupt or tampered")


def check_member(ensemble_folder: str | os.PathLike, member: dict, member_card: dict) -> None:
    """Refuse an ensemble member (its card's entry `member`) whose model is not the one the ensemble was
    built from: a folder swapped or retrained under the same path."""
    if member_card.get("sha256") != member.get("sha256"):
        raise ModelFolderError(f"{Path(ensemble_folder)}: member {member['path']} is not the model this ensemble "
                               "was built from (its checksum differs)")


def verify_files(folder: str | os.PathLike, card: dict) -> None:
    """The model files a card vouches for, checked without loading them (ModelFolderError, in the loader's
    words): a classifier's model.keras against its checksum; an ensemble's every member's, each the member
    it was built from (check_member)."""
    if card_kind(card) != ENSEMBLE:
        verify_checksum(folder, card)
        return
    for member in card["members"]:
        member_folder = Path(folder) / member["path"]
        member_card = read_card(member_folder, CLASSIFIER)
        verify_checksum(member_folder, member_card)
        check_member(folder, member, member_card)


def files_problem(folder: str | os.PathLike, card: dict) -> str | None:
    """Why the loader would refuse the model's files, in its words (verify_files: model.keras missing or not
    matching the card's checksum; an ensemble's member likewise); None when they match. The one check that
    the sidebar (what may be made active), Model performance and Compare make; hashing is quick (0.02 s for
    the bundled default's 12.5 MB), nothing is loaded."""
    try:
        verify_files(folder, card)
    except ModelFolderError as problem:
        return str(problem)
    except (KeyError, TypeError, AttributeError):  # a card edited by hand: the loader would fail on it too
        return "its card does not list its model's checksum (or its members) in the form the loader reads"
    return None


def load_model_folder(folder: str | os.PathLike, kind: str = CLASSIFIER) -> tuple[keras.Model, dict]:
    """(model, card) from a model folder of `kind`, after checking the card and the checksum."""
    card = read_card(folder, kind)  # given as is: an empty path is refused, not read as the current folder
    folder = Path(folder)
    verify_checksum(folder, card)
    try:
        model = keras.saving.load_model(folder / MODEL_FILE, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for unreadable archives.
        raise ModelFolderError(
            f"Keras could not load {folder / MODEL_FILE} ({type(error).__name__}: {error})") from None
    if kind == CLASSIFIER:
        _check_classifier_matches_card(model, card, folder)
    return model, card


def _check_classifier_matches_card(model: keras.Model, card: dict, folder: Path) -> None:
    try:
        expected = output_sizes(card["hierarchy"])
    except ValueError as error:
        raise ModelFolderError(f"{folder}: {error}") from None
    actual = {name: int(tensor.shape[-1]) for name, tensor in zip(model.output_names, model.outputs)}
    if actual != expected:
        raise ModelFolderError(f"{folder}: the model outputs {actual} do not match a "
                               f"{card['hierarchy']} model {expected}")
    if int(model.input_shape[1]) != int(card["input_size"]):
        raise ModelFolderError(f"{folder}: the model input {model.input_shape[1:3]} does not match "
                               f"the card's input_size {card['input_size']}")
    # The app draws Grad-CAM from the backbone's CAM layer: refuse a model that lacks it now,
    # with a message, rather than crash on the first heat map.
    try:
        layer = cam_layer(card["backbone"])
    except ValueError as error:
        raise ModelFolderError(f"{folder}: the card's backbone is not usable ({error})") from None
    try:
        model.get_layer(layer)
    except ValueError:
        raise ModelFolderError(f"{folder}: the model has no layer {layer!r}, which Grad-CAM needs for a "
                               f"{card['backbone']} backbone; the card's backbone may be wrong") from None


def update_card(folder: str | os.PathLike, **fields) -> dict:
    """Add or replace card fields (e.g. metrics) without touching model.keras.

    The checksum covers model.keras only, so the card stays valid; it is verified first so a
    tampered model is never re-blessed.
    """
    card = read_card(folder)
    if card_kind(card) != ENSEMBLE:  # an ensemble's members are verified when it is loaded
        verify_checksum(folder, card)
    card.update(fields)
    write_json_atomic(Path(folder) / CARD_FILE, card)
    return card


def find_model_folders(*roots: str | os.PathLike, kind: str | tuple[str, ...] | None = None) -> list[Path]:
    """Every folder under the roots (or a root itself) that holds a card.json (of `kind`, or one of
    several kinds), sorted.

    With a kind, a folder whose card cannot be read counts as a classifier (card_kind: a card that states no
    kind is one): listed among the classifiers, where the app says why it cannot be used, and never offered
    as a GAN generator too.
    """
    found = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for card_path in root.rglob(CARD_FILE):
            relative = card_path.parent.relative_to(root).parts
            if any(part.startswith(".") for part in relative):
                continue
            if kind is not None:
                try:
                    found_kind = card_kind(read_json(card_path))
                except (OSError, ValueError, AttributeError):
                    found_kind = CLASSIFIER
                if found_kind not in ((kind,) if isinstance(kind, str) else kind):
                    continue
            found.add(card_path.parent)
    return sorted(found)


def subtype_figures(card: dict) -> dict:
    """A classifier's measured subtype macro-F1 next to its colour/texture baseline's (None where not
    measured): an ensemble keeps its members', so that its subtype is not shown as a finding when every
    member's is no better than colour and texture (core.evaluation.subtype_trust.subtype_reliability)."""
    metrics = card.get("metrics") or {}
    baseline = ((metrics.get("baselines") or {}).get("colour_texture") or {}).get("subtype_macro_f1")
    return {"model": metrics.get("subtype_macro_f1"), "colour_texture_baseline": baseline}


def ensemble_evidence(cards: list[dict]) -> dict:
    """What an ensemble rests on: each member's evidence, and LIMITED DATA when any member is (its
    calls average that member's); the badge and banners read `limited` and `statement` as for one model."""
    evidences = [card.get("evidence") or {} for card in cards]
    limited = any(e.get("limited") for e in evidences)
    parts = [f"{card.get('name', 'member')}: {e.get('statement') or 'no evidence recorded'}"
             for card, e in zip(cards, evidences)]
    return {"limited": limited, "members": evidences,
            "statement": f"an ensemble of {len(cards)} models (" + "; ".join(parts) + ")"
                         + ("; limited data, not a diagnosis" if limited and not all(
                             "limited data" in str(e.get("statement")) for e in evidences) else "")}


def save_ensemble(members: list, folder, name: str | None = None, **fields) -> Path:
    """Write an ensemble card for these classifier folders (verified, one hierarchy); returns the folder."""
    folder = Path(folder)
    if len(members) < 2:
        raise UserInputError("An ensemble needs at least two member models")
    cards = [read_card(member, CLASSIFIER) for member in members]
    hierarchies = {card["hierarchy"] for card in cards}
    if len(hierarchies) != 1:
        raise UserInputError(f"Ensemble members must share one hierarchy, not {sorted(hierarchies)}")
    folder.mkdir(parents=True, exist_ok=True)
    backbones = sorted({card["backbone"] for card in cards})
    card = {"kind": ENSEMBLE, "name": name or folder.name, "hierarchy": hierarchies.pop(),
            "backbone": f"ensemble of {len(cards)} ({', '.join(backbones)})",
            "members": [{"path": os.path.relpath(Path(member).resolve(), folder.resolve()), "name": c.get("name"),
                         "backbone": c["backbone"], "input_size": c["input_size"], "sha256": c["sha256"],
                         "subtype_figures": subtype_figures(c)}
                        for member, c in zip(members, cards)],
            "demo": any(card_is_demo(c) for c in cards), "evidence": ensemble_evidence(cards), "labels": labels_block(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "method": "mean of the members' calibrated probabilities; uncertainty = members' disagreement",
            **fields}
    write_json_atomic(folder / CARD_FILE, card)
    return folder
