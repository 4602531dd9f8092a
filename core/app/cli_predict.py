"""`python -m core predict`: classify image files with a model folder, one line (or JSON object) each.

Each file is read and interpreted by the Diagnose page's own code (core.app.service: read_item,
interpret), so its call, notes, warnings and magnification are the page's, and an image much larger
than the model's field is analysed as tiles as the page does (core.app.slides.tile_reason); one
file at a time, so a folder of thousands of images never sits in memory. Kept beside the app's
service (as core.slide.commands beside the slides) so that core/cli.py stays one page;
`add_predict_command` adds it through the CLI's `command` factory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from core.errors import ImageError, UserInputError
from core.paths import visible_files

OK, FAILED = 0, 1  # core.cli's exit codes
NO_CALL = 3  # predict's own: not one input got a call (all unreadable, not H&E tissue, or failed tiles)
EPILOG = (f"Exit codes: {OK} every input got a call or was not H&E tissue (an image that is not H&E tissue is not "
          f"a failure: it gets its 'not analysed' line and no call); {FAILED} some inputs could not be read, the "
          f"others got calls; {NO_CALL} no input got a call; 2 usage or user error (bad option, unusable model).")


_SOURCES = {"chosen by user": "--magnification"}  # the page's words for the CLI's own control


def folder_files(folder: str) -> tuple[list[str], list[str]]:
    """(the images of a folder's tree, the other files), each sorted. Images are the names the app's
    loader reads (core.data.images: PNG, JPEG, TIFF, BMP, GIF, WebP, any case); hidden files and
    folders are left out; linked folders are followed, each real folder once (a link up is no loop)."""
    from core.data.images import EXTENSION_FORMATS

    images, others = [], []
    for path in visible_files(folder):
        is_image = os.path.isfile(path) and Path(path).suffix.lower() in EXTENSION_FORMATS
        (images if is_image else others).append(path)
    return sorted(images), sorted(others)


def _formats() -> str:
    from core.data.images import EXTENSION_FORMATS

    return ", ".join(dict.fromkeys(EXTENSION_FORMATS.values()))


def _read(path: str) -> bytes:
    """A file's bytes, with the loader's own messages for a missing, empty or too large file."""
    from core.data.images import read_bytes

    return read_bytes(path, path)


@dataclasses.dataclass
class _Run:
    """What every line of one `predict` needs: its options, the model and how it is labelled."""

    args: object  # the parsed command line
    predictor: object  # core.model.predict.Predictor
    tta: bool
    reliable: bool  # the subtype head's (core.evaluation.subtype_trust.subtype_reliability)
    badge: str
    limited: bool
    seen: dict = dataclasses.field(default_factory=dict)  # {sha256 of the bytes: the first path given}


# Every JSON record's "outcome": what happened to the input, one key for every kind of record (a called
# image's class is its "label", a tiled one's call over the tiles too, a refused one's "call").
CALLED, TILED, ERROR = "called", "analysed as tiles", "error"  # and core.data.histology.NOT_ANALYSED


def _notes(result) -> str:
    """The loader's notes (16-bit scaled, alpha dropped, ...) on the text line too, as the JSON, the page,
    the CSV and the PDF give them."""
    return f" | notes: {'; '.join(result.notes)}" if result.notes else ""


def _emit(args, path: str, record: dict, text: str) -> None:
    """One input's line: a JSON object (its file name, its path as given, `record`) or 'path<TAB>text'."""
    print(json.dumps({"file": os.path.basename(os.path.normpath(path)), "path": path, **record}, default=float)
          if args.json else f"{path}\t{text}", flush=True)


def _tiled(run: _Run, result, reason: str, data: bytes) -> tuple[str, dict, str]:
    """An image much larger than the model's field, analysed as tiles at its scale as the Diagnose
    page does (core.app.slides.analyse_upload, core.slide): ('called' or 'failed', record, text),
    the line saying why."""
    from core.app import slides
    from core.slide.export import summary

    try:
        tiles = slides.analyse_upload(run.predictor, result.name, data, run.args.magnification)
    except UserInputError as error:
        return "failed", {"outcome": ERROR, "error": str(error)}, f"ERROR: {error}"
    headline, explained = slides.call_text(tiles.call)
    headline = headline.replace("Slide call", "Call over the tiles").replace("**", "").replace(" (why below)", "")
    return "called", {"outcome": TILED, "tiled": True, "tile_reason": reason, "label": tiles.call["label"],
                      "call_text": f"{headline} {explained}", "slide": summary(tiles), "model": run.predictor.name,
                      "model_badge": run.badge, "model_limited": run.limited, "magnification": result.magnification,
                      "notes": result.notes, "warnings": result.warnings}, \
        f"{headline} {explained} | {reason}{_notes(result)}"


def predict(args) -> int:
    """Each file as the Diagnose page reads and interprets an upload (core.app.service), one at a time."""
    from core.app.registry import describe_model, model_badge, probabilities_text
    from core.evaluation.subtype_trust import subtype_reliability
    from core.model.decisions import referral_rule
    from core.model.loading import load_predictor

    predictor = load_predictor(args.model)
    reliable, subtype_note = subtype_reliability(predictor.card)
    badge, info = model_badge(predictor.card), describe_model(predictor.card)
    if info["demo"] or info["limited"]:  # labelled wherever it predicts: text's first line, every JSON record
        label = f"{badge}: {info['evidence'] or 'demo model, no valid accuracy'}"
        if args.json:
            logging.getLogger(__name__).warning("%s", label)
        else:
            print(f"# {label}. Every call needs a pathologist's review.", flush=True)
    rule = referral_rule(*predictor.stage_thresholds(args.threshold))  # once, as the page caption and the PDF
    probabilities = f"Probabilities: {probabilities_text(info)}."  # as the page and the PDF say it
    if args.json:
        logging.getLogger(__name__).info("%s %s", probabilities, rule)  # each record's "referral" holds the thresholds
    else:
        print(f"# {probabilities}\n# {rule}", flush=True)
    if not reliable:
        logging.getLogger(__name__).warning("%s", subtype_note)
    # a card's declared views are always on (as on the page)
    run = _Run(args, predictor, predictor.uses_tta(args.tta), reliable, badge, info["limited"])
    counts = {"called": 0, "failed": 0, None: 0}
    for given in args.images:
        if not os.path.isdir(given):
            counts[_file(run, given)] += 1
            continue
        images, others = folder_files(given)
        if others:  # named, not silently dropped
            shown = [os.path.relpath(p, given) for p in others]
            _emit(args, given, {"outcome": "skipped", "skipped": shown},
                  f"skipped {len(shown)} file{'s' * (len(shown) > 1)} that are not images ({_formats()}): "
                  + ", ".join(shown[:5]) + (f", ... {len(shown) - 5} more" if len(shown) > 5 else ""))
        if not images:
            counts["failed"] += 1
            error = f"'{given}' is a folder without images ({_formats()})."
            _emit(args, given, {"outcome": ERROR, "error": error}, f"ERROR: {error}")
        for path in images:
            counts[_file(run, path)] += 1
    return NO_CALL if not counts["called"] else FAILED if counts["failed"] else OK


def _file(run: _Run, path: str) -> str | None:
    """One file's line, as the page reads and interprets an upload; 'called', 'failed' or None (no call,
    no failure: not H&E tissue)."""
    args = run.args
    try:
        data = _read(path)
    except (ImageError, OSError) as error:
        _emit(args, path, {"outcome": ERROR, "error": str(error)}, f"ERROR: {error}")
        return "failed"
    # The same bytes again: named as the page's service.distinct_items does, and still analysed (unlike on
    # the page, no case mean weighs it twice here, and its name may state another magnification).
    digest = hashlib.sha256(data).hexdigest()
    first = run.seen.get(digest)  # the path that gave these bytes first, if another did
    run.seen.setdefault(digest, path)
    outcome, record, text = _outcome(run, os.path.basename(path), data)
    if first is not None:
        record, text = {**record, "duplicate_of": first}, f"{text} | given more than once: the same file as {first}"
    _emit(args, path, record, text)
    return outcome


def _outcome(run: _Run, name: str, data: bytes) -> tuple[str | None, dict, str]:
    """(outcome, JSON record, text) of one file's bytes under `name`, the base name the page's rules read
    (case, magnification) as an upload's."""
    from core.app import service, slides
    from core.app.registry import NOT_STATED
    from core.data.histology import NOT_ANALYSED

    args, predictor = run.args, run.predictor
    result = service.diagnose_items(predictor, [(name, data)], run.tta, args.threshold,
                                    args.magnification or NOT_STATED, explain=False)[0]
    reason = result.error is None and slides.tile_reason(predictor.card, result, args.magnification)
    if reason:  # much larger than the model's field: tiles at its scale, as on the page
        return _tiled(run, result, reason, data)
    if result.error:
        return "failed", {"outcome": ERROR, "error": result.error}, f"ERROR: {result.error}"
    if result.not_histology:  # no call on what is not H&E tissue (core.data.histology)
        return None, {"outcome": NOT_ANALYSED, "call": NOT_ANALYSED, "reason": result.not_histology,
                      "model": predictor.name, "model_badge": run.badge, "model_limited": run.limited,
                      "magnification": result.magnification, "notes": result.notes}, \
            f"{NOT_ANALYSED} ({result.not_histology}){_notes(result)}"
    prediction = result.prediction
    hint = slides.scale_hint(result.name, result.image.upright_size, args.magnification)
    warnings = f" | REFER for review, warning: {'; '.join(result.warnings)}" if result.warnings else ""
    # refer / refer_reasons: the app's one rule (ImageResult.refer), either stage or an image warning
    return "called", {"outcome": CALLED, **prediction.to_dict(), "refer": result.refer,
                      "refer_reasons": result.refer_reasons,
                      "model": predictor.name, "model_badge": run.badge, "model_limited": run.limited,
                      "subtype_reliable": run.reliable, "magnification": result.magnification,
                      "magnification_source": _SOURCES.get(result.magnification_source,
                                                           result.magnification_source),
                      "notes": result.notes, "warnings": result.warnings, "scale_hint": hint}, \
        f"{prediction.summary(run.reliable)}{warnings}" + (f" | {hint}" if hint else "") + _notes(result)


def add_predict_command(command, default_model: str, unit_interval) -> None:
    """predict IMAGE..., from `command(name, handler, help)`; `unit_interval` parses --threshold."""
    from core.data.labels import MAGNIFICATIONS
    from core.model.decisions import DEFAULT_REFER_THRESHOLD

    parser = command("predict", predict, "classify BreakHis-style histopathology images")
    parser.epilog = EPILOG
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, TIFF, BMP, GIF, WebP), or folders of "
                        "them (their trees; other files are named in one line, linked folders followed)")
    parser.add_argument("--model", default=default_model, help="model folder (model.keras + card.json)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("--tta", action="store_true",
                        help="average over the 8 flips/rotations (a model whose card declares its views, such as "
                             "models/default's 3 crops x 8 symmetries, always does)")
    parser.add_argument("--magnification", choices=MAGNIFICATIONS, default=None,
                        help="of images whose names state none (a name's own wins); a field model with physical "
                             "views looks at the same tissue at every magnification (unstated: as 200X)")
    parser.add_argument("--threshold", type=unit_interval, default=None,
                        help="refer a stage when its probability is below this (default: the model's per-stage "
                             f"thresholds chosen on validation; {DEFAULT_REFER_THRESHOLD} for a model without them)")
