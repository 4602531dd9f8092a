"""The diagnosis service: uploaded (name, bytes) items -> one result per image, never an exception.

Importable and tested without Streamlit: the Diagnose page, the benchmarks and the tests call it
the same way. Each item is read once by the safe loader (core.data.images), which turns bad files
into messages, and shrunk once to the size the page shows. The model work of a request (the
prediction AND both stages' Grad-CAMs, core.model.cam.gradcam_diagnosis) is one batched pass,
shared with the requests of other sessions that arrive while a pass runs (`BatchQueue`), and it
runs while the H&E check and the copy shown are made (they need only the decoded pixels). The
outputs are interpreted separately, so moving a threshold never re-runs the model. Uploaded bytes
stay in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from core.app.registry import NOT_STATED, describe_model, magnification_from_name
from core.data.breakhis import IMAGE_EXTENSIONS, parse_name
from core.data.fields import per_image
from core.data.images import ImageError, LoadedImage, check_loaded, load_image
from core.model.cam import Explanation, RawCams, gradcam_diagnosis
from core.model.predict import Prediction, Predictor

# The longest side of the images the page shows (about the width of one of its three columns on
# a 4K screen): heat maps, overlays and page images are made at this size, not at full size. A
# BreakHis field (700x460) fits, so it is shown as scanned: shrinking it by a tenth blurred it and
# cost a sixth of a diagnosis for a copy (bench/diagnose.py); larger images are shrunk to this.
DISPLAY_MAX_SIDE = 768
READ_THREADS = 2  # uploads decoded at once (read_items): each decode holds one full-size image in memory


@dataclasses.dataclass
class ImageResult:
    """One uploaded image: either an error message, or the image and its prediction."""

    name: str
    digest: str
    image: LoadedImage | None = None
    display: np.ndarray | None = None  # the image at the size the page shows (<= DISPLAY_MAX_SIDE)
    prediction: Prediction | None = None
    gradcam: RawCams | None = None  # from the same pass as the prediction; None if it failed
    gradcam_error: str | None = None
    error: str | None = None
    magnification: str = NOT_STATED
    magnification_source: str = "not stated"
    case: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    sha256: str = ""  # of the uploaded bytes, in full: what the audit trail records

    @property
    def not_histology(self) -> str | None:
        """Why the image is not H&E tissue (core.data.histology); then it gets no call."""
        return self.image.not_histology if self.image is not None else None

    @property
    def analysable(self) -> bool:
        """Readable and H&E tissue: the images the model runs on."""
        return self.image is not None and self.not_histology is None

    @property
    def ok(self) -> bool:
        return self.prediction is not None

    @property
    def refer(self) -> bool:
        return self.ok and (bool(self.prediction.refer) or bool(self.warnings))

    @property
    def refer_reasons(self) -> list[str]:
        return list(self.prediction.refer_reasons) + self.warnings if self.ok else []

    def gradcam_maps(self) -> tuple[Explanation, Explanation] | None:
        """(stage 1, stage 2) Grad-CAM of the shown prediction at display size, or None when the
        pass had other targets (then the caller explains again)."""
        p, cams = self.prediction, self.gradcam
        if p is None or cams is None or (cams.label, cams.subtype) != (p.label, p.subtype):
            return None
        maps = cams.explanations(self.display.shape[:2])
        return maps["stage1"], maps["stage2"]


def display_size(rgb: np.ndarray) -> np.ndarray:
    """The image shrunk (never enlarged) so its longest side is at most DISPLAY_MAX_SIDE."""
    height, width = rgb.shape[:2]
    scale = DISPLAY_MAX_SIDE / max(height, width)
    if scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


def extension_note(name: str) -> str | None:
    """A note for names without an image extension (the content decides how a file is read)."""
    extension = Path(name).suffix.lower()
    if extension in IMAGE_EXTENSIONS:
        return None
    return f"the name ends in '{extension or 'no extension'}', not .png/.jpg/.tif; read by its content"


def read_item(name: str, data: bytes, check: bool = True) -> ImageResult:
    """Load one (name, bytes) item into an ImageResult, never raising for bad input.
    check=False decodes only: `check_item` then makes the H&E check and the copy shown."""
    sha256 = hashlib.sha256(data).hexdigest()
    result = ImageResult(name=name, digest=sha256[:16], sha256=sha256)
    parsed = parse_name(name)  # before reading: an unreadable image still belongs to its case
    result.case = parsed.case if parsed else None
    try:
        result.image = load_image(data, name=name, check_histology=False)
    except ImageError as problem:
        result.error = str(problem)
        return result
    except Exception as problem:  # A decoder bug must not take the app down.
        return _unreadable(result, problem)
    note = extension_note(name)
    result.notes = ([note] if note else []) + list(result.image.notes)
    found = magnification_from_name(name)
    if found:
        result.magnification, result.magnification_source = found, "file name"
    return check_item(result) if check else result


def read_items(items: list[tuple[str, bytes]]) -> list[ImageResult]:
    """read_item(check=False) of every item, in order; several are decoded READ_THREADS at a time (libpng and
    Pillow release the GIL: 8 bundled samples' reads 50 -> 28 ms, their diagnosis 540 -> 516 ms on 2 cores), one in this thread."""
    if len(items) < 2:
        return [read_item(name, data, check=False) for name, data in items]
    with ThreadPoolExecutor(min(READ_THREADS, len(items)), thread_name_prefix="read-upload") as pool:
        return list(pool.map(lambda item: read_item(item[0], item[1], check=False), items))


def check_item(result: ImageResult) -> ImageResult:
    """A decoded item's H&E check (core.data.images.check_loaded) and the copy the page shows."""
    try:
        check_loaded(result.image)
        result.display = display_size(result.image.rgb)
    except Exception as problem:  # noqa: BLE001 - a checker bug must not take the app down either
        return _unreadable(result, problem)
    result.warnings = list(result.image.warnings)
    return result


def _unreadable(result: ImageResult, problem: Exception) -> ImageResult:
    result.image, result.display = None, None
    result.error = f"'{result.name}' could not be read as an image ({type(problem).__name__})."
    return result


def distinct_items(items: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """(the items with each image's bytes once, the repeats left out as (name, the name analysed)). The
    same image given twice (uploaded twice, or uploaded and picked as a sample) would weigh double in
    its case's mean and its two results would share one audit id (records.audit_key)."""
    kept, first, repeats = [], {}, []
    for name, data in items:
        digest = hashlib.sha256(data).digest()
        if digest in first:
            repeats.append((name, first[digest]))
        else:
            first[digest] = name
            kept.append((name, data))
    return kept, repeats


def diagnose_items(predictor: Predictor, items: list[tuple[str, bytes]], tta: bool = False,
                   refer_threshold: float | None = None, magnification: str = NOT_STATED,
                   explain: bool = True) -> list[ImageResult]:
    """Read and classify every item in one batch; bad items get a message, not an exception.

    `magnification` is the user's choice for images whose names carry none; explain=False leaves
    out the Grad-CAMs (the command line shows none).
    """
    results, outputs = classify(predictor, items, tta, magnification=magnification, explain=explain)
    return interpret(predictor, results, outputs, tta, refer_threshold, magnification)


def stated_magnification(result: ImageResult, chosen: str = NOT_STATED) -> tuple[str, str]:
    """(magnification, source) of an image: its file name's, else the user's choice, else not stated."""
    if result.magnification_source != "file name" and chosen != NOT_STATED:
        return chosen, "chosen by user"
    return result.magnification, result.magnification_source


def pass_magnification(predictor: Predictor, magnification: str = NOT_STATED) -> str | None:
    """What the model pass needs of the user's magnification choice: the choice for a model whose
    views depend on it (a field model's physical views), else None, so that moving the control
    re-runs only such a model."""
    return magnification if predictor.uses_magnification else None


def classify(predictor: Predictor, items: list[tuple[str, bytes]], tta: bool = False,
             batches: "BatchQueue | None" = None, magnification: str = NOT_STATED,
             explain: bool = True) -> tuple[list, dict]:
    """The expensive part of `diagnose_items`: read every item, then one model pass for the readable
    ones (through the shared queue), which gives the head outputs and both stages' Grad-CAMs.
    Each image's magnification (its file name's, else `magnification`, the user's choice) sizes a
    field model's physical views.

    The pass starts as soon as the images are decoded and the H&E checks run beside it (~4 ms an
    image, a sixth of the bundled model's forward; bench/diagnose.py); an image the check refuses
    gets no call (its rows of the pass are dropped), which costs a wasted pass only for such images.

    Returns (ImageResults without predictions, head outputs {name: (n_readable, k)}). If Grad-CAM
    cannot run on this model, the prediction still comes (from a plain forward) with the reason;
    explain=False runs only that plain forward.
    """
    results = read_items(items)
    decoded = [r for r in results if r.image is not None]
    queue_ = batches or SHARED_QUEUE
    images = [r.image.rgb for r in decoded]
    magnifications = [stated_magnification(r, magnification)[0] for r in decoded]  # from the name, not the check
    pending = queue_.submit(predictor, images, tta, magnifications) if explain and decoded else None
    for result in decoded:
        check_item(result)
    keep = [i for i, r in enumerate(decoded) if r.analysable]
    readable = [decoded[i] for i in keep]
    if not readable:
        return results, {}
    images, magnifications = [images[i] for i in keep], [magnifications[i] for i in keep]
    if not explain:
        return results, predictor.probabilities(images, tta=tta, magnifications=magnifications)
    try:
        try:
            outputs, cams = pending.result()
            if len(keep) < len(decoded):
                outputs, cams = {name: value[keep] for name, value in outputs.items()}, [cams[i] for i in keep]
        except Exception:  # noqa: BLE001 - maybe one of the refused images; the readable ones alone
            if len(keep) == len(decoded):
                raise
            outputs, cams = queue_.run(predictor, images, tta, magnifications)
    except Exception as problem:  # noqa: BLE001 - heat maps are an aid; the prediction must still come
        logging.getLogger(__name__).warning("Grad-CAM failed for %s: %s: %s", predictor.name,
                                            type(problem).__name__, problem)
        outputs = predictor.probabilities(images, tta=tta, magnifications=magnifications)
        cams = [None] * len(readable)
        for result in readable:
            result.gradcam_error = f"{type(problem).__name__}: {problem}"
    for result, raw in zip(readable, cams):
        result.gradcam = raw
    return results, outputs


class BatchQueue:
    """One worker thread that runs the model for every session: requests for the same model that
    wait at the same moment run as ONE batch (one forward and gradient for all their images).

    A lone request runs at once: while one batch runs, the next requests queue up and form the next
    batch, so sessions share passes exactly when they would otherwise wait for each other. A fixed
    wait for company (`window_s` > 0) was measured as ~8 ms added to every lone diagnosis (the
    default waited 5 ms, a quarter of the bundled model's forward; bench/diagnose.py times this
    path). If a shared batch fails, each of its requests runs alone, so one session's bad input
    never breaks or delays another's results.
    """

    def __init__(self, window_s: float = 0.0, max_images: int = 64):
        self.window_s, self.max_images = window_s, max_images
        self._requests: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches_run = 0  # how many model batches ran (the tests and benchmarks read it)

    def run(self, predictor: Predictor, images: list[np.ndarray], tta: bool = False,
            magnifications=None) -> tuple[dict, list]:
        """gradcam_diagnosis(predictor, images, tta, magnifications=...), batched with other waiting requests."""
        return self.submit(predictor, images, tta, magnifications).result()

    def submit(self, predictor: Predictor, images: list[np.ndarray], tta: bool = False,
               magnifications=None) -> Future:
        """`run` without waiting: a Future of its (outputs, cams)."""
        future: Future = Future()
        self._ensure_worker()
        magnifications = per_image(magnifications, len(images))
        self._requests.put((predictor, list(images), bool(tta), magnifications, future))
        return future

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name="diagnosis-batches", daemon=True)
                self._worker.start()

    def _serve(self) -> None:
        while True:
            waiting = [self._requests.get()]
            deadline = time.monotonic() + self.window_s
            while sum(len(r[1]) for r in waiting) < self.max_images:
                remaining = deadline - time.monotonic()
                try:
                    waiting.append(self._requests.get(timeout=remaining) if remaining > 0
                                   else self._requests.get_nowait())
                except queue.Empty:
                    break
            groups: dict = {}
            for request in waiting:
                groups.setdefault((id(request[0]), request[2]), []).append(request)
            for group in groups.values():
                try:
                    self._run_group(group)
                except BaseException as problem:  # noqa: BLE001 - the worker must outlive any request
                    for *_, future in group:
                        if not future.done():
                            future.set_exception(problem)

    def _run_group(self, group: list) -> None:
        predictor, tta = group[0][0], group[0][2]
        try:
            outputs, cams = gradcam_diagnosis(predictor, [image for r in group for image in r[1]], tta,
                                              magnifications=[m for r in group for m in r[3]])
            self.batches_run += 1
        except Exception as problem:  # noqa: BLE001 - handed to the caller; in a shared batch, find whose
            if len(group) == 1:
                group[0][-1].set_exception(problem)
                return
            for request in group:  # each alone: only the request that fails gets the error
                self._run_group([request])
            return
        start = 0
        for _, images, _, _, future in group:
            part = slice(start, start + len(images))
            future.set_result(({name: value[part] for name, value in outputs.items()}, cams[part]))
            start += len(images)


SHARED_QUEUE = BatchQueue()


def interpret(predictor: Predictor, read: list[ImageResult], outputs: dict, tta: bool = False,
              refer_threshold: float | None = None, magnification: str = NOT_STATED) -> list[ImageResult]:
    """The cheap part of `diagnose_items`: model outputs -> predictions, refer flags, magnifications.

    Works on copies, so the same `classify` output can be interpreted again with other settings.
    """
    results = [dataclasses.replace(r, notes=list(r.notes), warnings=list(r.warnings)) for r in read]
    readable = [r for r in results if r.analysable]
    for result in readable:
        result.magnification, result.magnification_source = stated_magnification(result, magnification)
    for result, prediction in zip(readable, predictor.interpret(outputs, refer_threshold, tta)):
        result.prediction = prediction
    trained_at = describe_model(predictor.card)["magnification"]
    for result in readable:
        if predictor.uses_magnification and result.magnification == NOT_STATED:
            result.notes.append("No magnification stated: the model looked at this field as 200X. Choose its "
                                "magnification if it is another; the model then sees the same tissue as at 200X.")
        if trained_at not in (None, "all") and result.magnification not in (NOT_STATED, trained_at):
            result.warnings.append(f"The model was trained on {trained_at} images only; this image "
                                   f"is {result.magnification}.")
    return results
