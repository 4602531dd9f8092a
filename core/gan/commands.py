"""The GAN's commands for `python -m core gan`: train, sample, evaluate, compare, ablation.

Kept beside the GAN (as core.store.commands beside the store) so that core/cli.py stays one page of
the classifier's commands; `add_gan_commands` adds them to the `gan` sub-parser.
"""

from __future__ import annotations

import shlex
import signal
from pathlib import Path

from core.data.labels import SUBTYPES
from core.options import (
    add_dataclass_options,
    default_of,
    flag,
    given_options,
    not_given_is_none,
    positive_int,
    whole_number,
)

CANCELLED = 128 + signal.SIGTERM  # the CLI's exit code for a run stopped by SIGTERM (core.cli)
# The classifier settings `gan ablation` passes on to both of its runs (TrainConfig's own options).
ABLATION_OPTIONS = ("pipeline", "backbone", "hierarchy", "mode", "epochs", "batch_size", "input_size", "weights",
                    "dropout", "learning_rate", "split", "magnification", "seed")


def seed(text: str) -> int:
    """An argparse type: a whole number >= 0, since numpy takes no negative seed (and a SYN_ name none)."""
    return whole_number(text, 0)


def typed_command(args, given: dict) -> str:
    """The `gan train` command as typed (the options given, not the defaults): a card's record of it."""
    from core.gan.model import GanConfig

    argv = ["python", "-m", "core", "gan", "train", "--data", str(args.data), "--out", str(args.out)]
    argv += ["--resume"] if args.resume else []
    for name, value in given.items():
        default = default_of(GanConfig, name)
        if isinstance(default, bool):
            argv.append(flag(name, default))  # a switch is only given to change it
        else:
            argv += [flag(name), *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return shlex.join(argv)


def _gan_train(args) -> int:
    """SIGTERM (e.g. a cancelled job) stops cleanly after the current step and saves the generator.
    Only the options given count: a resumed run refuses those that would change it (core.gan.train)."""
    from core.gan.model import GanConfig
    from core.gan.train import train_gan

    given = given_options(GanConfig, args)
    config = GanConfig(**{"name": Path(args.out).name, **given})
    cancelled = []
    signal.signal(signal.SIGTERM, lambda *_: cancelled.append(True))
    train_gan(config, args.data, args.out, resume=args.resume, stop=lambda: bool(cancelled), given=tuple(given),
              command=typed_command(args, given))
    return CANCELLED if cancelled else 0


def _gan_sample(args) -> int:
    from core.gan.sampling import write_samples

    paths = write_samples(args.model, args.subtype, args.n, args.out, args.seed)
    print(f"wrote {len(paths)} images to {args.out}")
    return 0


def _gan_evaluate(args) -> int:
    from core.gan.checks import format_judgement
    from core.gan.quality import evaluate_generator, format_kid, load_features

    features = load_features(args.features) if args.features else None
    result = evaluate_generator(args.model, args.data, features, args.n, args.seed)
    print(format_judgement(result))
    print(format_kid(result["generators"]["generator"]))
    return 0


def _gan_compare(args) -> int:
    from core.gan.checks import format_judgement
    from core.gan.quality import compare_generators
    from core.jsonfile import write_json_atomic

    result = compare_generators(args.model, args.against, args.data, args.n, args.seed, args.sheet)
    print(format_judgement(result))
    if args.out:
        write_json_atomic(args.out, result)
    return 0


def _gan_ablation(args) -> int:
    from core.gan.ablation import run_ablation

    options = {k: getattr(args, k) for k in ABLATION_OPTIONS if getattr(args, k) is not None}
    run_ablation(args.data, args.gan, args.out, args.subtypes, args.allow_gan_leak, **options)
    print((Path(args.out) / "ablation.md").read_text())
    return 0


def add_gan_commands(gan) -> None:
    """Add train, sample, evaluate, compare and ablation under the `gan` sub-parser."""
    gan_commands = gan.add_subparsers(dest="gan_command", required=True, metavar="GAN_COMMAND")
    gan_train = gan_commands.add_parser("train", help="train or resume a conditional GAN")
    gan_train.set_defaults(handler=_gan_train)
    gan_train.add_argument("--data", required=True, help="BreakHis folder (any layout)")
    gan_train.add_argument("--out", required=True, help="run folder, e.g. runs/gan-NAME")
    gan_train.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings, "
                           "to --steps if given (--sample-every and --log-every may change too; other options "
                           "that differ from the run's are refused)")
    add_dataclass_options(gan_train, "core.gan.model", "GanConfig")
    # An option not given is None (its help still shows its default), so --resume tells a choice from a default.
    from core.gan.model import GanConfig

    not_given_is_none(gan_train, GanConfig)
    sample = gan_commands.add_parser("sample", help="write synthetic images from a generator folder")
    sample.set_defaults(handler=_gan_sample)
    sample.add_argument("--model", required=True, help="generator folder (e.g. models/gan-default)")
    sample.add_argument("--subtype", required=True, choices=SUBTYPES, help="the subtype to draw")
    sample.add_argument("--n", type=positive_int, default=100, help="images to write (at least 1)")
    sample.add_argument("--seed", type=seed, default=0, help="seed of the noise (default: 0; same seed, same images)")
    sample.add_argument("--out", required=True, help="folder to write the images and provenance.json into")
    quality = gan_commands.add_parser("evaluate", help="two-sample test, nuclei and distances of a generator (+ KID)")
    quality.set_defaults(handler=_gan_evaluate)
    quality.add_argument("--model", required=True, help="generator folder")
    quality.add_argument("--data", required=True, help="the BreakHis folder it was trained on")
    quality.add_argument("--features", help='also KID and memorisation in this feature space: "imagenet" (the '
                         'default classifier when offline), a classifier model folder, or "backbone:NAME"')
    quality.add_argument("--n", type=int, default=128,
                        help="patches per set (real and synthetic) per subtype (default: 128)")
    quality.add_argument("--seed", type=seed, default=1, help="seed of the patches and the noise (default: 1)")
    versus = gan_commands.add_parser("compare", help="two generators' checks on the same real patches")
    versus.set_defaults(handler=_gan_compare)
    versus.add_argument("--model", required=True, help="the new generator folder")
    versus.add_argument("--against", required=True, help="the generator folder to compare with (e.g. the old one)")
    versus.add_argument("--data", required=True, help="the BreakHis folder the new generator was trained on")
    versus.add_argument("--n", type=int, default=128,
                        help="patches per set (real and synthetic) per subtype (default: 128)")
    versus.add_argument("--seed", type=seed, default=1, help="seed of the patches and the noise (default: 1)")
    versus.add_argument("--out", type=Path, help="also write the JSON here")
    versus.add_argument("--sheet", type=Path, help="also write a PNG of real | new | old patches per subtype")
    ablation = gan_commands.add_parser("ablation", help="classifier with vs without GAN fill, same split")
    ablation.set_defaults(handler=_gan_ablation)
    ablation.add_argument("--data", required=True, help="the real BreakHis folder both arms train on")
    ablation.add_argument("--gan", required=True, help="generator folder trained on the same split")
    ablation.add_argument("--out", required=True, help="folder for both arms' runs and ablation.json")
    ablation.add_argument("--subtypes", nargs="+", choices=SUBTYPES, help="subtypes to fill (default: all it knows)")
    ablation.add_argument("--allow-gan-leak", action="store_true", help="run even if the GAN saw val/test images")
    add_dataclass_options(ablation, "core.training.config", "TrainConfig", only=ABLATION_OPTIONS, unset=True)
