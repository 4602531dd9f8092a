"""The diagnosis service: uploaded (name, bytes) items -> one result per image, never an exception.

Importable and tested without Streamlit: the Diagnose page, the benchmarks and the tests call it
the same way. Each item is read by the safe loader (core.data.images), which turns bad files
into messages; the model runs once per batch of readable images; the outputs are interpreted
separately, so moving a threshold never re-runs the model. Uploaded bytes stay in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from core.app.registry import NOT_STATED, describe_model, magnification_from_name
from core.data.breakhis import IMAGE_EXTENSIONS, parse_name
from core.data.images import ImageError, LoadedImage, load_image
from core.model.predict import DEFAULT_REFER_THRESHOLD, Prediction, Predictor


@dataclasses.dataclass
class ImageResult:
    """One uploaded image: either an error message, or the image and its prediction."""

    name: str
    digest: str
    image: LoadedImage | None = None
    prediction: Prediction | None = None
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


def diagnose_items(predictor: Predictor, items: list[tuple[str, bytes]], tta: bool = False,
                   refer_threshold: float = DEFAULT_REFER_THRESHOLD, magnification: str = NOT_STATED) -> list[ImageResult]:
    """Read and classify every item in one batch; bad items get a message, not an exception.

    `magnification` is the user's choice for images whose names carry none.
    """
    results, outputs = classify(predictor, items, tta)
    return interpret(predictor, results, outputs, tta, refer_threshold, magnification)


def classify(predictor: Predictor, items: list[tuple[str, bytes]], tta: bool = False) -> tuple[list, dict]:
    """The expensive part of `diagnose_items`: read every item, run the model once on the readable ones.

    Returns (ImageResults without predictions, head outputs {name: (n_readable, k)}).
    """
    results = [read_item(name, data) for name, data in items]
    readable = [r for r in results if r.image is not None]
    return results, predictor.probabilities([r.image.rgb for r in readable], tta=tta)


def interpret(predictor: Predictor, read: list[ImageResult], outputs: dict, tta: bool = False,
              refer_threshold: float = DEFAULT_REFER_THRESHOLD, magnification: str = NOT_STATED) -> list[ImageResult]:
    """The cheap part of `diagnose_items`: model outputs -> predictions, refer flags, magnifications.

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
