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
    from core.data.selection import no_real_images, select_magnification

    if is_pack(args.out):
        raise UserInputError(f"{args.out} already holds a field pack ({PACK_INDEX}); choose another --out")
    index = index_folder(args.data)
    table = index.images[~index.images["synthetic"].astype(bool)]
    table = table.loc[select_magnification(table, args.magnification).index].reset_index(drop=True)
    if table.empty:
        raise no_real_images(args.magnification, args.data, index.skipped)
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


def _tune(args) -> int:
    from core.options import given_options
    from core.training.config import TrainConfig
    from core.training.tuning import OBJECTIVE, tune

    given = given_options(TrainConfig, args)  # the searched settings typed are held in every trial
    best = tune(TrainConfig(**given, baselines=False), args.max_trials, args.search, held=tuple(given))
    print(best["trials"].to_string(index=False))
    print(f"best: trial {best['trial']} ({OBJECTIVE} {best[OBJECTIVE]:.3f}) -> {best['run']}: {best['settings']}")
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

    tune = command("tune", _tune, "hyper-parameter search (KerasTuner); every trial a run, scored on validation")
    tune.add_argument("--max-trials", type=int, default=10,  # below 1: refused by tune() (KerasTuner: no limit)
                      help="trials to run, at least 1 (default 10)")
    tune.add_argument("--search", choices=("random", "grid"), default="random",
                      help="how trials are drawn from the space (default: random)")
    training_options(tune, "tune")
    if needed("tune"):  # --dropout 0.5 typed is held, though the default
        _not_given_is_none(tune, "core.training.config", "TrainConfig")

    from core.app.cli_predict import add_predict_command

    add_predict_command(command, str(DEFAULT_MODEL_DIR), _unit_interval)

    from core.slide.commands import add_slide_commands

    add_slide_commands(command, str(DEFAULT_MODEL_DIR))

    from core.app.cli_models import add_model_commands

    add_model_commands(command, DEFAULT_MODEL_DIR)

    from core.gan.commands import add_gan_commands

    gan = command("gan", None, "the conditional GAN: train, sample, evaluate, compare, ablation")
    if needed("gan"):  # its settings' options import Keras too
        add_gan_commands(gan)

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
    handler.setLevel(logging.WARNING)  # libraries that log INFO themselves (Dask's ~30 lines a batch) stay quiet
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
