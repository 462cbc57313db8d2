"""Settings dataclasses as command-line options: defaults, choices and help live on the fields.

A field made with :func:`option` carries its help text, its parser (``type``), its choices and its
flag (default ``--name-with-dashes``); :func:`add_options` turns a dataclass's fields into
``argparse`` arguments and :func:`given_options` reads back the ones the user gave. Options the
user did not give stay out of the namespace (``argparse.SUPPRESS``), so the dataclass's own
default applies and is stated only there (the help shows it). A boolean field that defaults to
True becomes ``--no-name``; one that defaults to False, ``--name``.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Dict, Optional


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: Optional[str] = None,
           type: Optional[Callable[[str], Any]] = None, choices=None, cli: bool = True,
           metavar: Optional[str] = None) -> Any:
    """A dataclass field with its command-line description (``cli=False``: not an option)."""
    meta = dict(help=help, flag=flag, type=type, choices=choices, cli=cli, metavar=metavar)
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable (a tuple, not a list)")
    return dataclasses.field(default=default, metadata=meta)


def cli_fields(cls) -> list:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def add_options(parser: argparse.ArgumentParser, cls, default_text: Optional[Dict[str, str]] = None) -> None:
    """Add an argument for each option field of ``cls``.

    ``default_text`` replaces the "(default: ...)" text of some fields, for commands whose default
    comes from elsewhere (e.g. the paper's step count, which depends on the objective)."""
    default_text = default_text or {}
    for f in cli_fields(cls):
        m = f.metadata
        default = default_text.get(f.name, _show(f.default))
        help_text = f"{m['help']} (default: {default})" if m["help"] else f"(default: {default})"
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if isinstance(f.default, bool):
            flag = m["flag"] or ("--no-" if f.default else "--") + f.name.replace("_", "-")
            kw.update(action="store_false" if f.default else "store_true")
            kw["help"] = m["help"]
        else:
            flag = m["flag"] or "--" + f.name.replace("_", "-")
            metavar = m["metavar"] or (None if m["choices"] else flag.lstrip("-").replace("-", "_").upper())
            kw.update(type=m["type"] or _parser_for(f.default), choices=m["choices"], metavar=metavar)
        parser.add_argument(flag, **kw)


def _parser_for(default) -> Callable[[str], Any]:
    for kind in (int, float, str):
        if isinstance(default, kind):
            return kind
    return str


def given_options(args: argparse.Namespace, cls) -> Dict[str, Any]:
    """The option fields of ``cls`` present in ``args`` (given on the command line)."""
    return {f.name: getattr(args, f.name) for f in cli_fields(cls) if hasattr(args, f.name)}


# ------------------------------------------------------------------------------ value parsers
def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


POS = int_at_least(1)
NONNEG = int_at_least(0)


def _float_above(low: float, inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value >= low if inclusive else value > low) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a {'finite number >= 0' if inclusive else 'positive number'}, "
                                             f"got {text}")
        return value
    return parse


positive_float = _float_above(0.0, inclusive=False)
nonneg_float = _float_above(0.0, inclusive=True)


def minutes_as_seconds(text: str) -> float:
    """A positive number of minutes, returned in seconds."""
    return 60.0 * positive_float(text)


minutes_as_seconds.__name__ = "minutes"


def widths(text: str) -> tuple:
    try:
        values = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths like 256,256,256, "
                                         f"got {text!r}") from None
    if not values or any(w < 1 for w in values):
        raise argparse.ArgumentTypeError(f"layer widths must be >= 1, got {text!r}")
    return values
