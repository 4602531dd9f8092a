"""The slide commands of `python -m core`: slide, slides, slide-threshold.

Kept beside the slide package (as core.gan.commands beside the GAN) so that core/cli.py stays one
page of the classifier's commands; `add_slide_commands` adds them through the CLI's `command`
factory. `choose_slide_rule` is what make-default runs on a cross-validated final model before
installing it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.errors import UserInputError
from core.options import add_dataclass_options, positive_int

OK, FAILED, USER_ERROR = 0, 1, 2  # core.cli's exit codes


def _slide_options(args) -> dict:
    from core.options import from_args
    from core.slide.predictor import TileSettings
    from core.slide.tissue import TissueSettings

    return {"tiles": from_args(TileSettings, args), "tissue": from_args(TissueSettings, args),
            "mpp": args.mpp, "magnification": args.magnification}


def _slide(args) -> int:
    from core.slide.batch import SlideJob, analyse_slide, slide_model
    from core.slide.export import check_out_folder
    from core.slide.reader import check_file

    options = _slide_options(args)
    # A missing or empty file first (loading the model takes seconds), then an unusable model or --out: each
    # its message (exit 2) before the slide is read.
    check_file(Path(args.path))
    slide_model(args.model)
    check_out_folder(args.out)
    shown = []

    def progress(done, total):
        shown.append(done)
        print(f"\r{done}/{total} tiles", end="", file=sys.stderr, flush=True)

    row = analyse_slide(SlideJob(args.path, args.out, args.model, **options), progress)
    if shown:  # end the progress line; without one, no blank line before the error
        print(file=sys.stderr)
    if row["error"]:
        from core.slide.batch import INPUT

        print(f"error: {row['error']}", file=sys.stderr)
        return USER_ERROR if row["error_kind"] == INPUT else FAILED
    print(json.dumps(row))
    return OK


def _slides(args) -> int:
    from core.slide.batch import BATCH_TABLE, run_batch

    table = run_batch(args.folder, args.out, args.model, scheduler=args.scheduler, workers=args.workers,
                      serial=args.serial, **_slide_options(args))
    print(table.to_string(index=False))
    print(f"wrote {Path(args.out) / BATCH_TABLE}")
    return FAILED if (table["error"].fillna("") != "").any() else OK


def _slide_threshold(args) -> int:
    from core.slide.choose import validate_slide_rule

    entry = validate_slide_rule(args.model, args.data, repeats=args.repeats, benign_mosaics=args.benign_mosaics,
                                seed=args.seed, write=not args.dry_run)
    print(json.dumps(entry, indent=1))
    print(("not written (--dry-run)" if args.dry_run else f"wrote thresholds.slide_rule into {args.model}/card.json"),
          file=sys.stderr)
    return OK


def choose_slide_rule(model_dir, data) -> None:
    """A cross-validated final model's slide rule, chosen while its fold models are beside it; where
    mosaics cannot be made the card keeps the default rule, which says so."""
    from core.slide.choose import validate_slide_rule

    try:
        validate_slide_rule(model_dir, data)
    except UserInputError as problem:
        print(f"slide rule not chosen: {problem}", file=sys.stderr)


def stated_magnification(text: str) -> str:
    """An argparse type: '200X', '200x' or '200' -> '200X' (core.data.scale's reading), else a usage error in
    words. Free text, unlike the app's choices: a slide's objective need not be one of BreakHis' four."""
    import argparse

    from core.data.scale import parse_magnification

    try:
        return f"{parse_magnification(text)}X"
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_slide_commands(command, default_model: str) -> None:
    """slide PATH, slides DIR and slide-threshold MODEL, each from `command(name, handler, help)`."""
    for name, handler, text, target, what in (
            ("slide", _slide, "analyse one whole-slide image or large image as tiles at the model's scale", "path",
             "the slide (SVS, NDPI, MRXS, pyramidal TIFF, ...) or large image"),
            ("slides", _slides, "analyse every slide of a folder on a Dask cluster (a local one by default)", "folder",
             "the folder whose slides (and its sub-folders') to analyse")):
        sub = command(name, handler, text)
        sub.add_argument(target, help=what)
        sub.add_argument("--out", required=True, help="output folder")
        sub.add_argument("--model", default=default_model, help="model folder (default: the bundled model)")
        sub.add_argument("--mpp", type=float, help="microns per pixel; overrides what the file states (its metadata or name)")
        sub.add_argument("--magnification", type=stated_magnification,
                         help="e.g. 200X, for a file whose metadata and name state no scale (--mpp overrides them)")
        add_dataclass_options(sub, "core.slide.predictor", "TileSettings")
        add_dataclass_options(sub, "core.slide.tissue", "TissueSettings")
        if name == "slides":
            sub.add_argument("--scheduler", help="address of an existing Dask scheduler (default: a local cluster)")
            sub.add_argument("--workers", type=positive_int, default=2,  # 0 workers: the tasks wait for ever
                             help="worker processes of the local cluster (at least 1)")
            sub.add_argument("--serial", action="store_true", help="no cluster: one slide after the other")
    threshold = command("slide-threshold", _slide_threshold,
                        "choose the slide rule on mosaics of the model's validation patients; writes it into the card")
    threshold.add_argument("model", help="model folder")
    threshold.add_argument("--data", required=True, help="the data folder the model was trained on")
    threshold.add_argument("--repeats", type=positive_int, default=2,
                           help="mosaics per focus size and malignant patient (at least 1; default: 2)")
    threshold.add_argument("--benign-mosaics", type=positive_int, default=12,
                           help="benign-only mosaics (at least 1; default: 12)")
    threshold.add_argument("--seed", type=int, default=0, help="seed of the mosaics' layout (default: 0)")
    threshold.add_argument("--dry-run", action="store_true", help="print the chosen rule; leave the card as it is")
