"""What the Streamlit pages share: the model registry, the cached predictor and the diagnosis.

Pages stay thin: they lay out widgets and call these functions. The diagnosis of a list of
(name, bytes) items lives here so it is tested directly, and the same code serves uploads and
bundled samples. Uploaded bytes stay in memory; nothing here writes them to disk.

Environment variables (all optional):
  BREAKHIS_DEFAULT_MODEL  model folder active when a session starts (default models/default)
  BREAKHIS_MODEL_DIRS     os.pathsep-separated folders searched for models (default models:runs)
  BREAKHIS_RUNS_DIR       where Retrain writes runs and the job file (default runs)
  BREAKHIS_SYNTHETIC_DIR  GAN images for the "GAN fill" strategy (default data/synthetic)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import streamlit as st

from core.breakhis import IMAGE_EXTENSIONS, parse_name, parse_synthetic_name
from core.images import ImageError, LoadedImage, load_image
from core.jobs import REPO, runs_dir
from core.labels import MAGNIFICATIONS, pretty
from core.model_io import DEFAULT_MODEL_DIR, find_model_folders
from core.predict import Predictor

SAMPLES_DIR = REPO / "assets" / "samples"
MANIFEST = REPO / "assets" / "breakhis_manifest.csv"
REFERENCE_RESULTS = REPO / "assets" / "reference_results.csv"
NOT_STATED = "not stated"
_MAGNIFICATION_IN_NAME = re.compile(r"(?<![0-9])(40|100|200|400)\s*[xX](?![a-zA-Z])")


# ---------------------------------------------------------------- models

def model_roots() -> list[Path]:
    configured = os.environ.get("BREAKHIS_MODEL_DIRS")
    if configured:
        return [Path(p) for p in configured.split(os.pathsep) if p]
    return [REPO / "models", runs_dir()]


def default_model() -> Path:
    configured = os.environ.get("BREAKHIS_DEFAULT_MODEL")
    folder = Path(configured) if configured else Path(DEFAULT_MODEL_DIR)
    return folder if folder.is_absolute() else REPO / folder


def available_models() -> list[str]:
    """Classifier folders the user can switch between, the default first, no duplicates.

    Other model folders under the same roots (e.g. GAN generators, card kind "gan_generator")
    are not classifiers and are left out.
    """
    found = [default_model()] if (default_model() / "model.keras").is_file() else []
    found += find_model_folders(*[root for root in model_roots() if root.is_dir()])
    unique: dict[str, None] = {}
    for folder in found:
        if _kind(folder) in (None, "classifier"):
            unique.setdefault(str(Path(folder).resolve()), None)
    return list(unique)


def short_location(folder: str) -> str:
    """models/default, runs/NAME/model, ... (relative to the repo or the runs folder when inside)."""
    path = Path(folder).resolve()
    for base in (REPO, runs_dir().resolve().parent):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)


def _kind(folder: Path) -> str | None:
    try:
        return json.loads((Path(folder) / "card.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None  # A broken card stays listed; the sidebar says why it cannot be used.


def _stamp(folder: str) -> float:
    """Changes when a model folder is rewritten, so the cache never serves a stale model."""
    try:
        return max((Path(folder) / name).stat().st_mtime for name in ("model.keras", "card.json"))
    except OSError:
        return 0.0


@st.cache_resource(show_spinner="Loading model...", max_entries=4)
def _load_predictor(folder: str, stamp: float) -> Predictor:
    # One instance per model folder for the whole server: Predictor is thread-safe.
    predictor = Predictor.load(folder)
    _warm_up(predictor)
    return predictor


def _warm_up(predictor: Predictor) -> None:
    """Trace the prediction and Grad-CAM graphs now, behind the loading spinner, so the first
    upload is as fast as the next ones (DenseNet121 on CPU: ~10 s of tracing otherwise).

    The Grad-CAM part is best effort: a model that predicts but cannot be explained must still
    give predictions (the page then says why the heat maps are missing).
    """
    from core.explain import explain_stages

    blank = np.full((predictor.input_size, predictor.input_size, 3), 200, np.uint8)
    prediction = predictor.predict([blank])[0]
    try:
        explain_stages(predictor, blank, "gradcam", prediction.label, prediction.subtype)
    except Exception as problem:  # noqa: BLE001 - explained again (with a message) on first use
        logging.getLogger(__name__).warning("Grad-CAM warm-up failed for %s: %s: %s", predictor.name,
                                            type(problem).__name__, problem)


def get_predictor(folder: str) -> Predictor:
    """Cached, shared predictor; raises the loader's clear error for a bad folder."""
    return _load_predictor(str(Path(folder).resolve()), _stamp(folder))


def describe_model(card: dict) -> dict:
    """The sidebar's and the report's few lines about a model."""
    training = card.get("training") or {}
    counts = training.get("counts") or {}
    return {
        "name": card.get("name", "unnamed model"),
        "backbone": card.get("backbone", "?"),
        "hierarchy": card.get("hierarchy", "?"),
        "demo": bool(card.get("demo")),
        "data": training.get("data_source", "unknown data"),
        "protocol": training.get("split_protocol", "unknown protocol"),
        "images": sum(int(v) for v in counts.values() if isinstance(v, (int, float))),
        "magnification": training.get("magnification", "all"),
    }


def model_badge(card: dict) -> str:
    """Short label every prediction carries: 'DEMO · name' for the bundled demo model."""
    info = describe_model(card)
    return ("DEMO · " if info["demo"] else "") + f"{info['name']} ({info['backbone']})"


# ---------------------------------------------------------------- diagnosis

@dataclasses.dataclass
class ImageResult:
    """One uploaded image: either an error message, or the image and its prediction."""

    name: str
    digest: str
    image: LoadedImage | None = None
    prediction: object | None = None  # core.predict.Prediction
    error: str | None = None
    magnification: str = NOT_STATED
    magnification_source: str = "not stated"
    case: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.prediction is not None

    @property
    def refer(self) -> bool:
        return self.ok and (bool(self.prediction.refer) or bool(self.warnings))

    @property
    def refer_reasons(self) -> list[str]:
        return list(self.prediction.refer_reasons) + self.warnings if self.ok else []


def magnification_from_name(name: str) -> str | None:
    parsed = parse_name(name)
    if parsed is not None:
        return parsed.magnification
    match = _MAGNIFICATION_IN_NAME.search(Path(name).stem)
    return f"{match.group(1)}X" if match else None


def extension_note(name: str) -> str | None:
    """A note for names without an image extension (the content decides how a file is read)."""
    extension = Path(name).suffix.lower()
    if extension in IMAGE_EXTENSIONS:
        return None
    return f"the name ends in '{extension or 'no extension'}', not .png/.jpg/.tif; read by its content"


def read_item(name: str, data: bytes) -> ImageResult:
    """Load one (name, bytes) item into an ImageResult, never raising for bad input."""
    result = ImageResult(name=name, digest=hashlib.sha256(data).hexdigest()[:16])
    try:
        result.image = load_image(data, name=name)
    except ImageError as problem:
        result.error = str(problem)
        return result
    except Exception as problem:  # A decoder bug must not take the app down.
        result.error = f"'{name}' could not be read as an image ({type(problem).__name__})."
        return result
    note = extension_note(name)
    result.notes = ([note] if note else []) + list(result.image.notes)
    result.warnings = list(result.image.warnings)
    parsed = parse_name(name)
    result.case = parsed.case if parsed else None
    found = magnification_from_name(name)
    if found:
        result.magnification, result.magnification_source = found, "file name"
    return result


def diagnose(predictor: Predictor, items: list[tuple[str, bytes]], tta: bool = False,
             refer_threshold: float = 0.7, magnification: str = NOT_STATED) -> list[ImageResult]:
    """Read and classify every item in one batch; bad items get a message, not an exception.

    `magnification` is the user's choice for images whose names carry none.
    """
    results, outputs = classify(predictor, items, tta)
    return interpret(predictor, results, outputs, tta, refer_threshold, magnification)


def classify(predictor: Predictor, items: list[tuple[str, bytes]], tta: bool = False) -> tuple[list, dict]:
    """The expensive part of `diagnose`: read every item, run the model once on the readable ones.

    Returns (ImageResults without predictions, head outputs {name: (n_readable, k)}).
    """
    results = [read_item(name, data) for name, data in items]
    readable = [r for r in results if r.image is not None]
    return results, predictor.probabilities([r.image.rgb for r in readable], tta=tta)


def interpret(predictor: Predictor, read: list[ImageResult], outputs: dict, tta: bool = False,
              refer_threshold: float = 0.7, magnification: str = NOT_STATED) -> list[ImageResult]:
    """The cheap part of `diagnose`: model outputs -> predictions, refer flags, magnifications.

    Works on copies, so the same `classify` output can be interpreted again with other settings.
    """
    results = [dataclasses.replace(r, notes=list(r.notes), warnings=list(r.warnings)) for r in read]
    readable = [r for r in results if r.image is not None]
    for result in readable:
        if result.magnification_source != "file name" and magnification != NOT_STATED:
            result.magnification, result.magnification_source = magnification, "chosen by user"
    for result, prediction in zip(readable, predictor.interpret(outputs, refer_threshold, tta)):
        result.prediction = prediction
    trained_at = describe_model(predictor.card)["magnification"]
    for result in readable:
        if trained_at not in (None, "all") and result.magnification not in (NOT_STATED, trained_at):
            result.warnings.append(f"The model was trained on {trained_at} images only; this image "
                                   f"is {result.magnification}.")
    return results


def sample_items() -> dict[str, Path]:
    """Bundled real samples: display name -> path."""
    paths = sorted(p for p in SAMPLES_DIR.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return {f"{pretty(parse_name(p.name).subtype)} · {p.name}" if parse_name(p.name) else p.name: p
            for p in paths}


def synthetic_folder() -> str | None:
    """The GAN images folder, only when it exists and holds GAN images (the GAN comes later)."""
    folder = Path(os.environ.get("BREAKHIS_SYNTHETIC_DIR") or REPO / "data" / "synthetic")
    if folder.is_dir() and any(parse_synthetic_name(p.name) for p in folder.rglob("SYN_*.png")):
        return str(folder)
    return None


def magnification_options() -> list[str]:
    return [NOT_STATED, *MAGNIFICATIONS]


# ---------------------------------------------------------------- explanations

_CAM_CACHE_KEY = "_explanations"
_CAM_CACHE_SIZE = 64


def explanations(predictor: Predictor, result: ImageResult, method: str) -> tuple:
    """(stage-1, stage-2) Explanation of one image's predicted class and subtype.

    The targets come from the shown prediction (which may use TTA), so the maps always explain
    what the page says. Remembered in this session only (not st.cache_data), so one user's
    images are never kept for another.
    """
    from core.explain import explain_stages

    p = result.prediction
    cache = st.session_state.setdefault(_CAM_CACHE_KEY, {})
    key = (model_identity(predictor), result.digest, method, p.label, p.subtype)
    if key not in cache:
        if len(cache) >= _CAM_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = explain_stages(predictor, result.image.rgb, method, p.label, p.subtype)
    return cache[key]


def model_identity(predictor: Predictor) -> tuple[str, str]:
    """(model folder, card sha256): stable across reloads, unlike id(), which Python reuses."""
    folder = str(predictor.folder.resolve()) if predictor.folder else f"in-memory model {id(predictor)}"
    return folder, str(predictor.card.get("sha256", ""))


# ---------------------------------------------------------------- session glue

def keep_keras_state() -> None:
    """Stop Streamlit from calling keras.backend.clear_session() after every script run.

    Streamlit does that to free models a script rebuilds on each run. This app builds none: its
    models are loaded once (st.cache_resource) and shared by all sessions. Clearing TensorFlow's
    kernel cache under them made the next prediction about 10x slower (DenseNet121 on CPU,
    0.15 s -> 1.0-1.7 s, plus a 0.4 s garbage collection per rerun) and could race with another
    session's prediction. streamlit is pinned (requirements.txt); the hook is checked by name.
    """
    from streamlit.runtime.scriptrunner import script_runner

    if hasattr(script_runner, "_clean_problem_modules"):
        script_runner._clean_problem_modules = lambda: None


def require_router() -> None:
    """Make sure a page runs inside app.py's st.navigation (its sidebar and model choice).

    Streamlit treats a pages/ folder next to the entrypoint as a legacy multipage app until the
    first st.navigation call. When the first request after a server start is a deep link
    (e.g. /retrain), it runs pages/retrain.py alone and stays in that mode. Every page calls
    this first: it records what st.navigation itself records, then reruns through app.py.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()



ACTIVE_MODEL_KEY = "active_model"


@st.cache_data(show_spinner=False, max_entries=64)
def _card(folder: str, stamp: float) -> dict:
    from core.model_io import read_card

    return read_card(folder)


def model_card(folder: str) -> dict:
    """The card of a model folder without loading the model (cheap, for the sidebar)."""
    return _card(folder, _stamp(folder))


def active_model() -> str | None:
    return st.session_state.get(ACTIVE_MODEL_KEY)


def set_active_model(folder: str) -> None:
    """Make `folder` this session's active model (a button callback, before widgets render)."""
    st.session_state[ACTIVE_MODEL_KEY] = str(Path(folder).resolve())


def require_predictor() -> Predictor:
    """The active model's predictor, or a clear message and a stopped page."""
    from core.model_io import ModelFolderError

    folder = active_model()
    if not folder:
        st.error("No model is available. Put a model folder in models/ (or train one on the "
                 "Retrain page) and reload.")
        st.stop()
    try:
        return get_predictor(folder)
    except ModelFolderError as problem:
        st.error(f"The active model cannot be used: {problem}. Choose another model in the sidebar.")
        st.stop()


def diagnose_in_session(predictor: Predictor, items: list[tuple[str, bytes]], **options) -> list[ImageResult]:
    """`diagnose`, with the model outputs remembered for this session.

    Only the model run is cached (keyed by model, items and TTA); the refer threshold and the
    magnification are applied on every run, so moving those controls never re-runs the model.
    """
    tta = bool(options.pop("tta", False))
    key = (model_identity(predictor), tuple((n, hashlib.sha256(d).hexdigest()) for n, d in items), tta)
    cached = st.session_state.get("_model_outputs")
    if cached is None or cached[0] != key:
        cached = (key, *classify(predictor, items, tta))
        st.session_state["_model_outputs"] = cached
    results = interpret(predictor, cached[1], cached[2], tta, **options)
    settings = (key, tuple(sorted(options.items())))
    if st.session_state.get("_diagnosis_settings") != settings:  # a prepared report is now stale
        st.session_state["_diagnosis_settings"] = settings
        st.session_state.pop("_report", None)
    return results


_SHOWN_UPLOADS, _EARLIER_UPLOADS = "_shown_uploads", "_earlier_uploads"


def uploads_across_pages(uploader_was_shown: bool, current: list[tuple[str, bytes]]) -> tuple[list, list]:
    """(all uploaded items to diagnose, those carried over from an earlier visit of the page).

    Streamlit empties a page's file uploader when the user visits another page. So that nothing
    the user uploaded is lost, the images shown last stay in this session's memory (never on
    disk) and come back with the page until the user forgets them.
    """
    state = st.session_state
    if not uploader_was_shown:  # first run of the page since it was (re)opened
        state[_EARLIER_UPLOADS] = state.get(_SHOWN_UPLOADS, [])
    earlier = [item for item in state.get(_EARLIER_UPLOADS, []) if item not in current]
    state[_SHOWN_UPLOADS] = current + earlier
    return current + earlier, earlier


def forget_earlier_uploads() -> None:
    st.session_state[_EARLIER_UPLOADS] = []
