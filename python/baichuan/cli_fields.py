"""Command-line flags derived from a config dataclass, so that a default lives in one place.

A field becomes ``--field-name`` (``metadata["flag"]`` renames it), typed from its annotation
(``int``, ``float``, ``str``, ``bool``; ``X | None`` as ``X``), with its help from
``metadata["help"]`` and the dataclass default shown in the help as ``[default: ...]``
(``metadata["show_default"]`` gives a friendlier spelling, e.g. ``256M``). Other metadata keys
go to ``add_argument`` as they are: ``type`` (e.g. :func:`baichuan.units.size_arg`), ``choices``,
``metavar``, ``nargs``, ``aliases`` (extra spellings). A ``bool`` field is a switch: ``--name``
sets it, or, with ``metadata["negate"]`` (e.g. ``"--no-strip"``), that flag clears it.

Two ways to take the defaults: ``defaults=True`` makes the dataclass default the argparse
default (``baichuan tokenize``); ``defaults=False`` leaves unset flags ``None`` so that
:func:`dataclass_from_args` keeps a base config's values (``baichuan train --config run.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")
_PASSED = ("type", "choices", "metavar", "nargs", "action")


def flag_of(f: dataclasses.Field[Any]) -> str:
    """The flag of a field: ``metadata["negate"]``, ``metadata["flag"]`` or ``--field-name``."""
    return f.metadata.get("negate") or f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field[Any]) -> Any:
    """The dataclass default of a field (``dataclasses.MISSING`` for a required one)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _base_type(hint: Any) -> Any:
    """``int | None`` -> int; ``str | list[str]`` -> str; ``list[str]`` -> str."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0])
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0]
    return hint


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    fields: list[str] | None = None,
    *,
    help: dict[str, str] | None = None,
    defaults: bool = True,
    required: tuple[str, ...] = (),
) -> list[str]:
    """Add one flag per field of ``cls`` (all of them, or ``fields`` in that order) to ``parser``;
    return the field names added. ``help`` overrides a field's ``metadata["help"]``."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    names = list(fields) if fields is not None else list(by_name)
    for name in names:
        f = by_name[name]
        meta = f.metadata
        default = default_of(f)
        kwargs: dict[str, Any] = {k: meta[k] for k in _PASSED if k in meta}
        text = (help or {}).get(name, meta.get("help"))
        if text is not argparse.SUPPRESS:
            shown = meta.get("show_default", default)
            if shown is not None and shown is not dataclasses.MISSING and not (isinstance(shown, bool) or shown == []):
                text = f"{text + ' ' if text else ''}[default: {shown}]".replace("%", "%%")
        kwargs["help"] = text
        kind = _base_type(hints[name])
        if kind is bool:
            kwargs["action"] = "store_false" if meta.get("negate") else "store_true"
        elif "type" not in kwargs and kind in (int, float):
            kwargs["type"] = kind
        if name in required or default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default if defaults else None
        parser.add_argument(flag_of(f), *meta.get("aliases", ()), dest=name, **kwargs)
    return names


def dataclass_from_args(
    args: argparse.Namespace, cls: type[T], base: T | None = None, fields: list[str] | None = None, **values: Any
) -> T:
    """``cls`` built from the parsed flags (those of :func:`add_dataclass_arguments`: ``fields``,
    or every field the namespace has) and ``values``: over ``base`` when given (a flag left
    ``None`` keeps the base's value), else from the dataclass defaults."""
    names = fields if fields is not None else [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    got = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    got.update(values)
    if base is not None:
        return dataclasses.replace(base, **got)  # type: ignore[type-var]
    return cls(**got)
