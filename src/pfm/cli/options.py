"""Command-line options made from the config dataclasses (:mod:`pfm.config`), so that every setting is reachable
from ``pfm fit`` and ``pfm apply`` and no default is written twice.

A field ``batch_size`` becomes ``--batch-size`` (``metadata["flags"]`` can rename it); a ``bool`` that defaults to
False is a switch, one that defaults to True is turned off by its flag (``--no-normalize``); an ``Optional[int]``
field can name a word for None (``metadata["none"]``, e.g. ``--recouple-every never``). Numbers are parsed and checked on the command line; the dataclass checks them
again when the config is made, so both say what was expected and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from typing import Any, Optional


def number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, what: str = "", none: Optional[str] = None):
    """An argparse type: a ``kind`` (int or float) in a range, e.g. positive; the word ``none`` (e.g. 'never')
    stands for None."""
    what = what or ("an integer" if kind is int else "a number")
    if none:
        what += f" or {none!r}"

    def parse(text: str):
        if none is not None and text.strip().lower() == none:
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        bad = (kind is float and not math.isfinite(value)) or \
            (low is not None and (value <= low if low_open else value < low)) or \
            (high is not None and (value >= high if high_open else value > high))
        if bad:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


RANGES: dict[str, dict[str, Any]] = {
    "positive_int": dict(kind=int, low=1, what="a positive integer"),
    "nonneg_int": dict(kind=int, low=0, what="an integer >= 0"),
    "positive": dict(kind=float, low=0, low_open=True, what="a number > 0"),
    "nonneg": dict(kind=float, low=0, what="a number >= 0"),
    "decay": dict(kind=float, low=0, high=1, low_open=True, high_open=True, what="a number in (0, 1)"),
    "share": dict(kind=float, low=0, high=1, high_open=True, what="a number in [0, 1)"),
}
"""The ranges a config field can name in ``metadata["range"]``: its command-line option refuses other values."""

POSITIVE_INT = number(**RANGES["positive_int"])
NONNEG_INT = number(**RANGES["nonneg_int"])
POSITIVE = number(**RANGES["positive"])
NONNEG = number(**RANGES["nonneg"])
DECAY = number(**RANGES["decay"])


def _kind(cls: type, f: dataclasses.Field) -> type:
    """The type of a field, ``Optional[X]`` being ``X``."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    return args[0] if optional and len(args) == 1 else hint


def dest_of(f: dataclasses.Field) -> str:
    """The attribute of the parsed options that holds a config field (``metadata["dest"]``, else its name)."""
    return f.metadata.get("dest", f.name)


def flags_of(f: dataclasses.Field) -> tuple[str, ...]:
    """The command-line flags of a config field: ``metadata["flags"]``, else ``--name-with-dashes``."""
    return tuple(f.metadata.get("flags", ("--" + f.name.replace("_", "-"),)))


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a config field (its first)."""
    return flags_of(f)[0]


def add_config_options(parser: argparse.ArgumentParser, cls: type, *, defaults_from: Optional[str] = None,
                       title: Optional[str] = None, only_given: bool = False) -> None:
    """Add an option for every field of the dataclass ``cls`` (except those with ``cli=False``),
    with ``dest`` the field's name (or ``metadata["dest"]``). ``defaults_from``: the options default to None and their help says the
    default comes from there (e.g. "the flow's"), for settings a saved file already holds. ``only_given``: the
    options default to None (so :func:`given` tells which were given), their help shows the config's default."""
    group = parser.add_argument_group(title) if title else parser
    exclusive: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True) is False:
            continue
        kind, flags = _kind(cls, f), flags_of(f)
        text = f.metadata.get("help", "")
        where = group
        if "group" in f.metadata:
            if f.metadata["group"] not in exclusive:  # on the parser: argparse cannot format one in a group
                exclusive[f.metadata["group"]] = parser.add_mutually_exclusive_group()
            where = exclusive[f.metadata["group"]]
        if kind is bool:
            if defaults_from is None:
                action = "store_false" if f.default else "store_true"
                where.add_argument(*flags, dest=dest_of(f), action=action, default=f.default,
                                   help=f.metadata.get("off_help", text) if f.default else text)
            else:
                where.add_argument(*flags, dest=dest_of(f), action=argparse.BooleanOptionalAction, default=None,
                                   help=f"{text} (default: {defaults_from})")
            continue
        default = None if defaults_from is not None or only_given else f.default
        shown = f"the {defaults_from}" if defaults_from is not None else _show(f.default)
        kwargs: dict[str, Any] = {"dest": dest_of(f), "default": default,
                                  "help": f"{text} (default: {shown})" if shown is not None else text}
        if "choices" in f.metadata:
            kwargs["choices"] = list(f.metadata["choices"])
        elif "range" in f.metadata:
            kwargs["type"] = number(**RANGES[f.metadata["range"]], none=f.metadata.get("none"))
        elif kind in (int, float):
            kwargs["type"] = number(kind, none=f.metadata.get("none"))
        if "metavar" in f.metadata:
            kwargs["metavar"] = f.metadata["metavar"]
        if "nargs" in f.metadata:
            kwargs["nargs"] = f.metadata["nargs"]
        where.add_argument(*flags, **kwargs)


def _show(default: Any) -> Optional[str]:
    if default is None:
        return None  # the help text says what None means
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, (tuple, list)):
        return " ".join(_show(v) or "" for v in default)
    return str(default)


def config_from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """The ``cls`` config of the parsed options (the fields that are not on the command line keep their defaults,
    ``extra`` overrides). A value the config refuses is reported under its flag's name."""
    from ..errors import PFMError

    values = {f.name: getattr(args, dest_of(f)) for f in dataclasses.fields(cls) if hasattr(args, dest_of(f))}
    values.update(extra)
    try:
        return cls(**values)
    except PFMError as exc:
        text = str(exc)
        for f in dataclasses.fields(cls):
            if text.startswith(f.name + " "):
                text = flag_of(f) + text[len(f.name):]
                break
        for f in dataclasses.fields(cls):  # another setting the message names ("at most batch_size"): its flag too
            if "_" in f.name:
                text = re.sub(rf"(?<![\w-]){f.name}(?!\w)", flag_of(f), text)
        raise type(exc)(text) from None


def given(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line (for options made with ``defaults_from``)."""
    return {f.name: getattr(args, dest_of(f)) for f in dataclasses.fields(cls)
            if getattr(args, dest_of(f), None) is not None}
