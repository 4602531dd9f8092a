"""`python -m core predict`: classify image files with a model folder, one line (or JSON object) each.

Each file is read and interpreted by the Diagnose page's own code (core.app.service: read_item,
interpret), so its call, notes, warnings and magnification are the page's, and an image much larger
than the model's field is analysed as tiles as the page does (core.app.slides.tile_reason); one
file at a time, so a folder of thousands of images never sits in memory. Kept beside the app's service (as core.slide.commands beside the slides) so that core/cli.py stays
one page; `add_predict_command` adds it through the CLI's `command` factory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from core.errors import ImageError, UserInputError

OK, FAILED = 0, 1  # core.cli's exit codes
NO_CALL = 3  # predict's own: not one input got a call (all unreadable, not H&E tissue, or failed tiles)
EPILOG = (f"Exit codes: {OK} every input got a call or was not H&E tissue (an image that is not H&E tissue is not "
          f"a failure: it gets its 'not analysed' line and no call); {FAILED} some inputs could not be read, the "
          f"others got calls; {NO_CALL} no input got a call; 2 usage or user error (bad option, unusable model).")


def _image_paths(paths: list[str]) -> list[str]:
    """The images to predict: each file as given, each folder's images (its tree, sorted; hidden
    files and other files left out). A folder without images stays, for its error line."""
    from core.data.breakhis import IMAGE_EXTENSIONS

    expanded = []
    for path in paths:
        if not os.path.isdir(path):
            expanded.append(path)
            continue
        found = sorted(str(f) for f in Path(path).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                       and not any(part.startswith(".") for part in f.relative_to(path).parts))
        expanded.extend(found or [path])
    return expanded


def _read(path: str) -> bytes:
    """A file's bytes, with the loader's own messages for a missing, empty or too large file."""
    from core.data.images import _read_bytes

    if os.path.isdir(path):
        raise ImageError(f"'{path}' is a folder without images (PNG, JPEG, TIFF).")
    return _read_bytes(path, path)


def _emit(args, path: str, record: dict, text: str) -> None:
    """One input's line: a JSON object (its file name, its path as given, `record`) or 'path<TAB>text'."""
    print(json.dumps({"file": os.path.basename(os.path.normpath(path)), "path": path, **record}, default=float)
          if args.json else f"{path}\t{text}", flush=True)


def _tiled(args, predictor, path: str, result, reason: str, data: bytes) -> bool:
    """An image much larger than the model's field, analysed as tiles at its scale as the Diagnose
    page does (core.app.slides.analyse_upload, core.slide); its line says why. True if it got a call."""
    from core.app import slides
    from core.app.registry import describe_model, model_badge
    from core.slide.export import summary

    try:
        tiles = slides.analyse_upload(predictor, result.name, data, args.magnification)
    except UserInputError as error:
        _emit(args, path, {"error": str(error)}, f"ERROR: {error}")
        return False
    headline, explained = slides.call_text(tiles.call)
    headline = headline.replace("Slide call", "Call over the tiles").replace("**", "")
    _emit(args, path, {"tiled": True, "tile_reason": reason, "label": tiles.call["label"],
                       "call_text": f"{headline} {explained}", "slide": summary(tiles), "model": predictor.name,
                       "model_badge": model_badge(predictor.card),
                       "model_limited": describe_model(predictor.card)["limited"], "notes": result.notes},
          f"{headline} {explained} | {reason}")
    return True


def predict(args) -> int:
    """Each file as the Diagnose page reads and interprets an upload (core.app.service), one at a time."""
    from core.app import service, slides
    from core.app.registry import NOT_STATED, describe_model, model_badge, subtype_reliability
    from core.data.histology import NOT_ANALYSED
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
    if not reliable:
        logging.getLogger(__name__).warning("%s", subtype_note)
    tta = predictor.uses_tta(args.tta)  # a card's declared views are always on (as on the page)
    failed = called = 0
    for path in _image_paths(args.images):
        name = os.path.basename(path)  # what the page's rules read (case, magnification), as an upload's name
        try:
            data = _read(path)
        except (ImageError, OSError) as error:
            data, result = None, service.ImageResult(name=name, digest="", error=str(error))
        if data is not None:
            result = service.diagnose_items(predictor, [(name, data)], tta, args.threshold,
                                            args.magnification or NOT_STATED, explain=False)[0]
        reason = result.error is None and slides.tile_reason(predictor.card, result, args.magnification)
        if reason:  # much larger than the model's field: tiles at its scale, as on the page
            tiled = _tiled(args, predictor, path, result, reason, data)
            called, failed = called + tiled, failed + (not tiled)
            continue
        if result.error:
            failed += 1
            _emit(args, path, {"error": result.error}, f"ERROR: {result.error}")
            continue
        if result.not_histology:  # no call on what is not H&E tissue (core.data.histology)
            _emit(args, path, {"call": NOT_ANALYSED, "reason": result.not_histology, "model": predictor.name,
                               "model_badge": badge}, f"{NOT_ANALYSED} ({result.not_histology})")
            continue
        prediction, called = result.prediction, called + 1
        hint = slides.scale_hint(result.name, result.image.upright_size, args.magnification)
        warnings = f" | REFER for review, warning: {'; '.join(result.warnings)}" if result.warnings else ""
        # refer / refer_reasons: the app's one rule (ImageResult.refer), either stage or an image warning
        _emit(args, path, {**prediction.to_dict(), "refer": result.refer, "refer_reasons": result.refer_reasons,
                           "model": predictor.name, "model_badge": badge, "model_limited": info["limited"],
                           "subtype_reliable": reliable, "magnification": result.magnification,
                           "magnification_source": result.magnification_source, "notes": result.notes,
                           "warnings": result.warnings, "scale_hint": hint},
              f"{prediction.summary(reliable)}{warnings}" + (f" | {hint}" if hint else ""))
    return NO_CALL if not called else FAILED if failed else OK


def add_predict_command(command, default_model: str, unit_interval) -> None:
    """predict IMAGE..., from `command(name, handler, help)`; `unit_interval` parses --threshold."""
    from core.data.labels import MAGNIFICATIONS
    from core.model.decisions import DEFAULT_REFER_THRESHOLD

    parser = command("predict", predict, "classify BreakHis-style histopathology images")
    parser.epilog = EPILOG
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, TIFF), or folders of them")
    parser.add_argument("--model", default=default_model, help="model folder (model.keras + card.json)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("--tta", action="store_true", help="average over the 8 flips/rotations")
    parser.add_argument("--magnification", choices=MAGNIFICATIONS, default=None,
                        help="of images whose names state none (a name's own wins); a field model with physical "
                             "views looks at the same tissue at every magnification (unstated: as 200X)")
    parser.add_argument("--threshold", type=unit_interval, default=None,
                        help="refer a stage when its probability is below this (default: the model's per-stage "
                             f"thresholds chosen on validation; {DEFAULT_REFER_THRESHOLD} for a model without them)")
