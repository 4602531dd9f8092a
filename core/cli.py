"""The one command line: `python -m core <command>` (or `breakhis <command>` after `pip install -e .`).

    index FOLDER          count a BreakHis folder, list skipped files, compare with the full set
    download --dest DIR   fetch BreakHis from Kaggle (kagglehub), then index it
    train ...             train a classifier into a run folder (options: core.training.config);
                          with --folds k and no --fold: k-fold cross-validation
    pack-fields --data DIR --out FOLDER   a BreakHis folder's real images as JPEG fields + fields.csv,
                          the fields pipeline's data for a machine without the data set (--data FOLDER)
    compare ...           train several backbones / input sizes on the same split, one table
    ensemble ...          several trained classifiers as one model, evaluated with its members
    tune ...              hyper-parameter search with KerasTuner, each trial a run scored on validation
    calibrate RUN         refit each head's temperature on the validation split, then re-evaluate
    evaluate RUN          evaluate a run on its held-out split
    predict IMAGE...      classify images with a model folder
    slide PATH --out DIR  a whole-slide image or large field analysed as tiles (core.slide)
    slides DIR --out DIR  every slide of a folder, on a Dask cluster (--scheduler) or a local one
    slide-threshold MODEL --data DIR   choose the slide rule on mosaics of validation patients, into the card
    make-default          reproduce the bundled default model (--from-run RUN: install one trained elsewhere)
    gan train|sample|evaluate|ablation   the conditional GAN for minority subtypes
    export-model / import-model          move a model folder between machines as a zip
    db upgrade|status     the app's database (core.store): create or migrate it, show its schema
    users add|list|set    local accounts (`users add NAME --role admin`; the password is prompted)
    reviews export OUT    reviewed kept images as a training folder (train --reviewed-dir OUT)

Exit codes are the same for every command: 0 done, 1 failed (a bug, or some inputs that could
not be processed; the traceback is logged), 2 a usage or user error (core.errors.UserInputError:
bad option, missing folder, unusable model; the message alone), 130 interrupted, 143 cancelled
by SIGTERM, 141 its output pipe closed (`| head`: stops quietly, as on SIGPIPE). `predict` adds 3: no
input got a call (core.app.cli_predict).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

from core.errors import Cancelled, DatasetError, UserInputError
from core.options import add_dataclass_options, not_given_is_none, whole_number
from core.paths import DEFAULT_MODEL_DIR

log = logging.getLogger("core.cli")

OK, FAILED, USER_ERROR, INTERRUPTED, CANCELLED = 0, 1, 2, 130, 128 + signal.SIGTERM
BROKEN_PIPE = 128 + 13  # SIGPIPE's number (signal.SIGPIPE does not exist on Windows)


def _index(args) -> int:
    from core.data.download import report

    report(args.folder)  # a DatasetError (no folder, no images) is the user's: exit 2
    if args.csv:
        from core.data.breakhis import index_folder

        index_folder(args.folder).images.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return OK


def _download(args) -> int:
    from core.data.download import download, manual_steps, report

    try:
        path = download(args.dest)
    except DatasetError as error:
        print(f"error: {error}\n{manual_steps(args.dest)}", file=sys.stderr)
        return FAILED
    print(f"Downloaded to {path}")
    report(path)
    print(f"Train with: python -m core train --data {path} --out runs/NAME")
    return OK


def _train(args) -> int:
    """One run; with --folds k and no --fold, the cross-validation of every fold."""
    from core.options import from_args
    from core.training.config import TrainConfig

    config = from_args(TrainConfig, args, command_line=shlex.join(["python", "-m", "core", *args.argv]))  # for the card
    from core.backends import backend_problem, current_backend

    problem = backend_problem(current_backend(), config.pipeline)
    if problem:
        raise UserInputError(f"Cannot train here: {problem}.")
    if config.pipeline == "fields":  # TensorFlow-free: runs under KERAS_BACKEND=jax as well
        from core.training.field_run import cross_validate_fields, train_fields

        cross_validate_fields(config, config.final_model) if config.all_folds else train_fields(config)
    elif config.all_folds:
        from core.training.crossval import cross_validate

        cross_validate(config)
    else:
        from core.training.fit import train

        train(config)
    return OK


def _pack_fields(args) -> int:
    """Index a BreakHis folder, keep its real images (of --magnification), write them as a field pack."""
    from core.data.breakhis import index_folder
    from core.data.fields import PACK_INDEX, is_pack, pack_fields
    from core.data.selection import select_magnification

    if is_pack(args.out):
        raise UserInputError(f"{args.out} already holds a field pack ({PACK_INDEX}); choose another --out")
    table = index_folder(args.data).images
    table = table[~table["synthetic"].astype(bool)]
    table = table.loc[select_magnification(table, args.magnification).index].reset_index(drop=True)
    if table.empty:
        raise UserInputError(f"No real images of magnification {args.magnification} in {args.data}")
    folder = pack_fields(table, args.out, args.quality)
    size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    print(f"wrote {len(table)} fields of {table['case'].nunique()} patients to {folder} ({size:.1f} MiB); "
          f"train with: python -m core train --pipeline fields --data {folder} --out runs/NAME")
    return OK


def _compare(args) -> int:
    from core.options import from_args
    from core.training.compare import candidates, compare, format_comparison
    from core.training.config import TrainConfig

    config = from_args(TrainConfig, args)
    pairs = candidates(args.backbones, args.input_sizes, args.candidates, config.input_size)
    print(format_comparison(compare(config, pairs)))
    return OK


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


def _tune(args) -> int:
    from core.options import given_options
    from core.training.config import TrainConfig
    from core.training.tuning import OBJECTIVE, tune

    given = given_options(TrainConfig, args)  # the searched settings typed are held in every trial
    best = tune(TrainConfig(**given, baselines=False), args.max_trials, args.search, held=tuple(given))
    print(best["trials"].to_string(index=False))
    print(f"best: trial {best['trial']} ({OBJECTIVE} {best[OBJECTIVE]:.3f}) -> {best['run']}: {best['settings']}")
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


ALL = None  # build_parser(ALL): every command with all its options (the tests, the Retrain page's jobs)


def build_parser(command_run: str | None = ALL) -> argparse.ArgumentParser:
    """The parser of every command. command_run: the command about to run ("" for none, e.g.
    `--help`): the options of the others that need Keras to list (the training settings' choices)
    are left out, so that `--help`, `db`, `users` or `predict` do not wait ~4 s for its import."""
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__.split("\n")[0],
                                     epilog="Exit codes: 0 done, 1 failed, 2 usage or user error, 3 (predict) no input "
                                            "got a call, "
                                            "130 interrupted, 141 output pipe closed, 143 cancelled (SIGTERM).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, handler, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    def needed(name: str) -> bool:  # options whose choices import Keras: only for the command about to run
        return command_run is ALL or command_run == name

    def training_options(sub, name: str) -> None:  # TrainConfig's options: core.training.config imports Keras
        if needed(name):
            _add_dataclass_options(sub, "core.training.config", "TrainConfig")

    index = command("index", _index, "index a BreakHis folder and print its counts and skipped files")
    index.add_argument("folder", help="a BreakHis folder (any layout)")
    index.add_argument("--csv", help="also write the index to this CSV file")
    download = command("download", _download, "fetch BreakHis with kagglehub (network + Kaggle account), then index it")
    download.add_argument("--dest", required=True, help="folder to keep the dataset in")

    train = command("train", _train, "train the classifier; writes a run folder")
    training_options(train, "train")

    from core.data.selection import MAGNIFICATION_CHOICES

    packed = command("pack-fields", _pack_fields, "write a BreakHis folder's real images as a field pack (JPEG "
                     "fields at 350x230 px + fields.csv) for `train --pipeline fields --data PACK`")
    packed.add_argument("--data", required=True, help="BreakHis folder (any layout)")
    packed.add_argument("--out", required=True, help="folder to write the pack into")
    packed.add_argument("--magnification", default="all", choices=MAGNIFICATION_CHOICES,
                        help="only the fields of this magnification (default: all)")
    packed.add_argument("--quality", type=_jpeg_quality, default=92, help="JPEG quality, 1-95 (default 92)")

    compared = command("compare", _compare, "train several backbones / input sizes on the same split, one table")
    compared.add_argument("--backbones", nargs="+", help="registry names, e.g. small_cnn densenet121")
    compared.add_argument("--input-sizes", nargs="+", type=int, help="input sizes to try (default: --input-size)")
    compared.add_argument("--candidates", nargs="+", metavar="BACKBONE@SIZE", help="single pairs, e.g. densenet121@128")
    training_options(compared, "compare")

    calibrate = command("calibrate", _calibrate, "refit the temperature of each head on a run's validation split")
    calibrate.add_argument("run", help="run folder (split.csv + model/)")
    calibrate.add_argument("--data", help="dataset folder: find the images again by file name")

    tune = command("tune", _tune, "hyper-parameter search (KerasTuner); every trial a run, scored on validation")
    tune.add_argument("--max-trials", type=int, default=10,  # below 1: refused by tune() (KerasTuner: no limit)
                      help="trials to run, at least 1 (default 10)")
    tune.add_argument("--search", choices=("random", "grid"), default="random",
                      help="how trials are drawn from the space (default: random)")
    training_options(tune, "tune")
    if needed("tune"):  # --dropout 0.5 typed is held, though the default
        _not_given_is_none(tune, "core.training.config", "TrainConfig")

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

    from core.app.cli_predict import add_predict_command

    add_predict_command(command, str(DEFAULT_MODEL_DIR), _unit_interval)

    from core.slide.commands import add_slide_commands

    add_slide_commands(command, str(DEFAULT_MODEL_DIR))

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
    default.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR,
                         help="model folder to write (default: models/default)")
    default.add_argument("--force", action="store_true", help="replace an existing model folder (moved aside to "
                         ".NAME.previous-<UTC time> beside it, not deleted)")
    default.add_argument("--allow-demo", action="store_true", help="install a DEMO model (too few training images, "
                         "or --demo) all the same, e.g. for a demonstration; refused without it")

    from core.gan.commands import add_gan_commands

    gan = command("gan", None, "the conditional GAN: train, sample, evaluate, compare, ablation")
    if needed("gan"):  # its settings' options import Keras too
        add_gan_commands(gan)

    export = command("export-model", _export_model, "zip a verified model folder")
    export.add_argument("model", help="model folder")
    export.add_argument("zip", help="zip file to write")
    imported = command("import-model", _import_model, "unpack and verify an exported model zip")
    imported.add_argument("zip", help="a zip written by export-model")
    imported.add_argument("--dest", default="runs/imported", help="folder to unpack into (default runs/imported)")

    from core.store.commands import add_store_commands

    add_store_commands(commands)
    return parser


def _add_dataclass_options(parser, module: str, name: str, **which) -> None:
    """The options of a settings dataclass (core.options), imported only when the parser is built."""
    add_dataclass_options(parser, module, name, **which)


def _not_given_is_none(parser, module: str, name: str) -> None:
    not_given_is_none(parser, getattr(importlib.import_module(module), name))


def _jpeg_quality(text: str) -> int:
    """1-95: Pillow's range for JPEG quality; above 95 some compression is switched off for no gain."""
    return whole_number(text, 1, 95)


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's last flush at exit does not hit the closed pipe
    again (the recipe in Python's signal documentation)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests): nothing to flush
        pass


def _command_word(argv: list[str]) -> str:
    """The command about to run: the first word that is not an option ("" when there is none)."""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(_command_word(argv)).parse_args(argv)
    except SystemExit as stop:  # argparse printed the usage error (code 2) or the help (code 0)
        return int(stop.code or 0)
    args.argv = argv  # as typed: what a model card records of the command that trained it
    # Warnings of every module (logging) and the traceback of a failure go to stderr for this command.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        return args.handler(args)
    except Cancelled:
        return CANCELLED
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:  # the reader went away (`| head -1`): nothing is wrong, stop quietly
        _quiet_stdout()
        return BROKEN_PIPE
    except UserInputError as error:  # the user's input, not the program: the message is enough
        print(f"error: {error}", file=sys.stderr, flush=True)
        return USER_ERROR
    except Exception:  # anything else is a failure of ours: log everything
        log.exception("python -m core %s failed", args.command)
        return FAILED
    finally:
        logging.getLogger().removeHandler(handler)
