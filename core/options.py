"""Settings dataclasses as the one source of options: the CLI, job commands and forms derive from them.

A field declared with `option(default, help, choices=...)` becomes `--kebab-case` on the command
line (`add_arguments`), turns back into the same command line (`to_argv`, used by the Retrain
page to launch a job) and gives a form its default and choices (`choices_of`). Defaults,
choices and help therefore cannot drift apart between the CLI, the app and the Python API.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

_REQUIRED = dataclasses.MISSING


def option(default: Any = _REQUIRED, help: str = "", choices: tuple | None = None,
           nargs: str | None = None, cli: bool = True, metavar: str | None = None, off_help: str | None = None):
    """A dataclass field with what the command line needs to know about it. `off_help`: what the
    --no-kebab-case switch of an option that is on by default does (else "turn off: " + help)."""
    metadata = {"help": help, "choices": choices, "nargs": nargs, "cli": cli, "metavar": metavar,
                "off_help": off_help}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def whole_number(text: str, least: int = 0, most: int | None = None) -> int:
    """An argparse type's check: a whole number from least (to most), refused in words otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if most is not None and not least <= value <= most:
        raise argparse.ArgumentTypeError(f"must be between {least} and {most}, not {value}")
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (a count of things to make)."""
    return whole_number(text, 1)


def switch_help(field: dataclasses.Field) -> str:
    """The help of the --no-... switch of an option that is on by default: what turning it off does,
    not the "on" help (which read as if --no-evaluate evaluated)."""
    return field.metadata.get("off_help") or f"turn off (on by default): {field.metadata.get('help', '')}"


def flag(name: str, default=None) -> str:
    """--kebab-case; a switch that is on by default is turned off with --no-kebab-case."""
    return ("--no-" if default is True else "--") + name.replace("_", "-")


def _fields(cls, skip=(), only=None) -> list[dataclasses.Field]:
    fields = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False) and f.name not in skip]
    return fields if only is None else [f for f in fields if f.name in only]


def choices_of(cls, name: str) -> tuple | None:
    """The allowed values of a field, or None if any value goes."""
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("choices")


def default_of(cls, name: str):
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _value_type(field: dataclasses.Field, default):
    if isinstance(default, bool):
        return None
    sample = default[0] if isinstance(default, (tuple, list)) and default else default
    if isinstance(sample, (int, float)) and not isinstance(sample, bool):
        return type(sample)
    text = str(field.type)
    if "float" in text:
        return float
    if "int" in text and "str" not in text:
        return int
    return str


def add_arguments(parser: argparse.ArgumentParser, cls, skip=(), only=None, unset: bool = False) -> None:
    """One `--kebab-case` argument per option field of `cls` (booleans become switches).

    `only` picks some fields; `unset` makes every picked option optional with the value None when
    not given, for a command that passes only what the user set on to code with its own defaults
    (the GAN ablation's classifier runs)."""
    for field in _fields(cls, skip, only):
        default = default_of(cls, field.name)
        meta, kwargs = field.metadata, {}
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if unset and not isinstance(default, bool):
            kwargs = {"type": _value_type(field, default), "choices": meta.get("choices"), "nargs": meta.get("nargs"),
                      "metavar": meta.get("metavar")}
            parser.add_argument(flag(field.name), dest=field.name, default=None,
                                help=f"{meta.get('help', '')} (default: as for train)".replace("%", "%%"),
                                **{k: v for k, v in kwargs.items() if v is not None})
            continue
        if isinstance(default, bool):
            kwargs["action"] = "store_false" if default else "store_true"
        else:
            kwargs["type"] = _value_type(field, default)
            if meta.get("nargs"):
                kwargs["nargs"] = meta["nargs"]
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
        help_text = switch_help(field) if default is True else meta.get("help", "")
        if (not required and not isinstance(default, bool) and default not in (None, (), [])
                and "(default:" not in help_text):  # a help that words its own default keeps it
            shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else default
            help_text = f"{help_text} (default: {shown})" if help_text else f"default: {shown}"
        parser.add_argument(flag(field.name, default), dest=field.name, required=required, default=default,
                            help=help_text.replace("%", "%%"), **kwargs)


def not_given_is_none(parser: argparse.ArgumentParser, cls) -> None:
    """Options of `cls` left off the command line parse as None (their help still shows the default), so a
    command can tell the options typed from the defaults (given_options)."""
    parser.set_defaults(**{f.name: None for f in dataclasses.fields(cls) if not isinstance(f.default, bool)})


def given_options(cls, args: argparse.Namespace) -> dict:
    """The options of `cls` on the command line (after not_given_is_none): the others are None or, for a
    switch, its default (a switch can only be given to change it)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items()
            if k in names and v is not None and not (isinstance(v, bool) and v == default_of(cls, k))}


def from_args(cls, args: argparse.Namespace, **overrides):
    """The settings object from parsed arguments (fields the parser did not define keep defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**values, **overrides})


def to_argv(settings) -> list[str]:
    """The command-line arguments that recreate `settings`: required fields, then changed ones."""
    cls, argv = type(settings), []
    for field in _fields(cls):
        value, default = getattr(settings, field.name), default_of(cls, field.name)
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if not required and (value == default or (isinstance(value, (list, tuple)) and
                                                  isinstance(default, (list, tuple)) and list(value) == list(default))):
            continue
        if isinstance(default, bool):
            argv.append(flag(field.name, default))  # a switch only appears when it differs from its default
        elif isinstance(value, (list, tuple)):
            argv += [flag(field.name), *map(str, value)]
        else:
            argv += [flag(field.name), "none" if value is None else str(value)]
    return argv


def add_dataclass_options(parser: argparse.ArgumentParser, module: str, name: str, **which) -> None:
    """`add_arguments` for the settings dataclass `name` of `module`, imported only when a parser is
    built (the CLI's help loads no TensorFlow)."""
    import importlib

    add_arguments(parser, getattr(importlib.import_module(module), name), **which)
