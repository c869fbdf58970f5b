"""Command-line options derived from dataclasses, so each option is described once.

A field's ``metadata`` says how it appears on the command line: ``help``; ``choices``; ``parse``
(a function of the string, for values that are not plain numbers or text); ``flag`` (the option
name, default ``--field-name``); ``short`` (e.g. ``-o``); ``required``; ``group`` (a heading in
``--help``); ``negate`` (for a True-by-default bool: the flag that turns it off, e.g.
``--no-progress``); ``cli`` False to leave a field out. Booleans that default to False are flags.
A field's ``range`` (see :func:`inbetweening.options.check_fields`, which :func:`from_args` applies
to what it builds) is shown in its help.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..options import check_fields, field_type, range_help, show_number
from ..utils import InbetweeningError


def add_dataclass_args(parser: argparse.ArgumentParser, cls, defaults=None,
                       skip: tuple[str, ...] = ()) -> None:
    """Add one option per field of the dataclass ``cls`` (defaults from the instance
    ``defaults``, else the class). Parsed values are the raw strings/numbers; build the instance
    with :func:`from_args`."""
    defaults = defaults if defaults is not None else cls()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in skip or meta.get("cli") is False:
            continue
        where = parser
        if meta.get("group"):
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            where = groups[meta["group"]]
        flags = [meta.get("flag", "--" + f.name.replace("_", "-"))]
        if meta.get("short"):
            flags.insert(0, meta["short"])
        default = getattr(defaults, f.name)
        help_text = meta.get("help", "")
        kind = field_type(cls, f)
        if kind is bool:
            if default:
                where.add_argument(meta["negate"], dest=f.name, action="store_false",
                                   help=help_text)
            else:
                where.add_argument(*flags, dest=f.name, action="store_true", help=help_text)
            continue
        extra = {k: meta[k] for k in ("choices", "nargs", "const", "metavar") if k in meta}
        if meta.get("required"):
            extra["required"] = True
        shown = "" if default is None or "default" in help_text or meta.get("required") else \
            f" (default {_show(default)})"
        where.add_argument(*flags, dest=f.name, type=None if "parse" in meta else kind,
                           default=None if "parse" in meta else default,
                           help=help_text + range_help(f) + shown, **extra)


def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return show_number(value) if isinstance(value, (int, float)) else str(value)


def from_args(cls, args: argparse.Namespace, defaults=None, **overrides):
    """The ``cls`` instance the parsed ``args`` describe (fields parsed with their ``parse``
    functions; fields without an option keep ``defaults``' values), its fields checked
    (:func:`~inbetweening.options.check_fields`)."""
    defaults = defaults if defaults is not None else cls()
    values = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if "parse" in f.metadata:
            value = f.metadata["parse"](value) if value is not None else getattr(defaults, f.name)
        values[f.name] = value
    values.update(overrides)
    try:
        made = dataclasses.replace(defaults, **values)
    except (TypeError, ValueError) as e:
        raise InbetweeningError(str(e)) from None
    return check_fields(made)
