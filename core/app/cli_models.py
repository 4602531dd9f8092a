"""The model-folder commands of `python -m core`: calibrate, evaluate, ensemble, make-default,
export-model, import-model.

In core.app, as `predict` is (core.app.cli_predict): they reach into the training, evaluation, slide
and app layers (make-default chooses a slide rule and writes an audit row), which only the app layer
and the command line may import (tests/test_architecture.py). Kept out of core/cli.py so that it
stays the parser's frame and the training commands; `add_model_commands` adds these through the
CLI's `command` factory. Each handler imports what it needs when it runs, so building
the parser (`--help`, `db`, `users`) imports no Keras.
"""

from __future__ import annotations

import sys
from pathlib import Path

from core.errors import UserInputError

OK = 0  # core.cli's exit code for done; failures are raised and mapped to codes there


def _calibrate(args) -> int:
    from core.evaluation.evaluate import evaluate_run
    from core.jsonfile import write_json_atomic
    from core.model.folders import CARD_FILE, read_card
    from core.training.calibrate_run import calibrate_run

    card_file = Path(args.run) / "model" / CARD_FILE  # put back if the re-evaluation fails: no card whose
    card = read_card(card_file.parent) if card_file.is_file() else None  # temperatures are new, figures not
    block = calibrate_run(args.run, args.data)  # (no card: calibrate_run says what the folder is instead)
    for split, measured in block["measured"].items():
        for head, m in measured["heads"].items():
            print(f"{split:4s} {head:18s} T={block['temperatures'].get(head, 1.0):.3f}  ECE {m['ece_before']:.3f} -> "
                  f"{m['ece_after']:.3f}  Brier {m['brier_before']:.3f} -> {m['brier_after']:.3f}  ({m['images']} images)")
    try:
        evaluate_run(args.run, args.data)  # metrics, thresholds and report with the new calibration
    except BaseException:
        write_json_atomic(card_file, card)
        print("the re-evaluation failed: the card's calibration was put back as it was", file=sys.stderr)
        raise
    print(f"updated {Path(args.run) / 'model' / 'card.json'} and re-evaluated {args.run}")
    return OK


def _ensemble(args) -> int:
    from core.training.ensemble_run import ensemble_run

    folder = ensemble_run(args.members, args.out, args.name, data=args.data, allow_missing=args.allow_missing)
    print(f"wrote the ensemble {folder}" + (f" and its evaluation {Path(args.out) / 'metrics.json'}"
                                           if (Path(args.out) / "metrics.json").is_file() else ""))
    return OK


def _evaluate(args) -> int:
    from core.app.registry import describe_model, model_badge
    from core.evaluation.evaluate import HELD_OUT, evaluate_run, outputs_of, write_outputs
    from core.evaluation.summary import summary_lines
    from core.model.folders import read_card

    results = evaluate_run(args.run, args.data, args.split, args.threshold, args.target_recall, write=False,
                           allow_missing=args.allow_missing)
    card = read_card(Path(args.run) / "model")
    if results["split"] == HELD_OUT and not results.get("subset"):
        card = {**card, "metrics": results}  # the card as this evaluation leaves it
    info = describe_model(card)  # the app's one rule for DEMO and LIMITED DATA, and their label
    label = f"{model_badge(card)}: {info['evidence'] or 'a demo model'}" if info["demo"] or info["limited"] else None
    if info["demo"]:
        label += " (a DEMO model has no valid accuracy: these figures only show the code ran)"
    lines = summary_lines(results, label)  # every figure formatted before a file is written: no half-written evaluation
    write_outputs(Path(args.run), results)
    print("\n".join(lines))
    print("wrote " + ", ".join(map(str, outputs_of(Path(args.run), results["split"], bool(results.get("subset"))))))
    return OK


def _make_default(args) -> int:
    from core.app.install_report import install_lines, record_install
    from core.slide.commands import choose_slide_rule
    from core.training.recipes import install_run, make_default, refuse_unused_options

    if (args.data is None) == (args.from_run is None):
        raise UserInputError("make-default needs --data (train it here) or --from-run RUN (install a run trained "
                             "elsewhere), one of the two")
    refuse_unused_options(args.from_run, args.recipe, args.cross_validate, args.command)
    if args.from_run is not None:
        installed = install_run(args.from_run, args.out, args.force, args.command, args.allow_demo)
    else:
        installed = make_default(args.data, args.recipe, args.out, args.force, args.cross_validate or 0,
                                 before_install=choose_slide_rule, allow_demo=args.allow_demo)
    print("\n".join(install_lines(installed)), flush=True)  # where the replaced model went, before anything fails
    audited, line = record_install(installed)
    print(line, file=sys.stdout if audited else sys.stderr)
    return OK


def _export_model(args) -> int:
    from core.model.archive import export_zip

    print(f"wrote {export_zip(args.model, args.zip)}")
    return OK


def _import_model(args) -> int:
    from core.model.archive import import_zip

    print(f"imported {import_zip(args.zip, args.dest)} (checksum verified)")
    return OK


def add_model_commands(command, default_model: Path) -> None:
    """calibrate, ensemble, evaluate, make-default, export-model and import-model, each from
    `command(name, handler, help)`."""
    calibrate = command("calibrate", _calibrate, "refit the temperature of each head on a run's validation split")
    calibrate.add_argument("run", help="run folder (split.csv + model/)")
    calibrate.add_argument("--data", help="dataset folder: find the images again by file name")

    ensemble = command("ensemble", _ensemble, "several classifier folders as one model (mean of calibrated probabilities)")
    ensemble.add_argument("--members", nargs="+", required=True, help="classifier model folders")
    ensemble.add_argument("--out", required=True, help="run folder to create (OUT/model is the ensemble)")
    ensemble.add_argument("--name", help="ensemble name (default: the --out folder name)")
    ensemble.add_argument("--data", help="dataset folder: find the members' test images again by file name")
    ensemble.add_argument("--allow-missing", action="store_true",
                          help="as evaluate's: the images found scored into metrics_test_subset.json")

    evaluate = command("evaluate", _evaluate, "evaluate a training run on its held-out split")
    evaluate.add_argument("run", help="run folder (split.csv + model/)")
    evaluate.add_argument("--data", help="dataset folder: find the images again by file name")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"),
                          help="the split to score (default: test; val and train write metrics_<split>.json)")
    evaluate.add_argument("--threshold", type=float, default=None,
                          help="p(malignant) decision threshold (0.5): the recall at it is printed and stored as "
                               "malignant_recall_at_threshold, with it")
    evaluate.add_argument("--target-recall", type=float, default=0.95,
                          help="malignant recall the recall-favouring threshold must reach on val")
    evaluate.add_argument("--allow-missing", action="store_true",
                          help="score the images found when some are missing or unreadable, into "
                               "metrics_<split>_subset.json (never over the run's metrics.json, card or report)")

    default = command("make-default", _make_default, "reproduce the bundled default model into models/default")
    default.add_argument("--data", help="BreakHis folder (any layout)")
    default.add_argument("--from-run", type=Path, metavar="RUN",
                         help="install a fields cross-validation trained elsewhere (e.g. brought back from a GPU "
                              "machine) instead of training; --command says what was run there")
    default.add_argument("--command", help="with --from-run: the command that trained RUN, for the card")
    default.add_argument("--recipe", choices=("full", "field", "limited"),
                         help="full: ImageNet + the whole BreakHis; field: the field recipe from scratch (5-fold "
                              "CV, then a final model on every patient; the bundled model's); limited: the previous "
                              "small CNN on squashed fields (default: full from 5,000 images, else field)")
    default.add_argument("--cross-validate", type=int, metavar="K",  # None: not typed (refused with --from-run)
                         help="also run patient-wise K-fold cross-validation of the recipe and keep its summary")
    default.add_argument("--out", type=Path, default=default_model,
                         help="model folder to write (default: models/default)")
    default.add_argument("--force", action="store_true", help="replace an existing model folder (moved aside to "
                         ".NAME.previous-<UTC time> beside it, not deleted)")
    default.add_argument("--allow-demo", action="store_true", help="install a DEMO model (too few training images, "
                         "or --demo) all the same, e.g. for a demonstration; refused without it")

    export = command("export-model", _export_model, "zip a verified model folder")
    export.add_argument("model", help="model folder")
    export.add_argument("zip", help="zip file to write")
    imported = command("import-model", _import_model, "unpack and verify an exported model zip")
    imported.add_argument("zip", help="a zip written by export-model")
    imported.add_argument("--dest", default="runs/imported", help="folder to unpack into (default runs/imported)")
