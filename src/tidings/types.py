"""Shared aliases and small value types used by every layer."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable
from typing import Any, NamedTuple, TypeAlias

__all__ = [
    "JSONValue",
    "Position",
    "deprecated_name",
    "kind_name",
    "parse_scalar",
    "unknown_setting",
]

JSONValue: TypeAlias = "dict[str, JSONValue] | list[JSONValue] | str | int | float | bool | None"


class Position(NamedTuple):
    """Where a channel's stream is: its epoch and the offset of its last event.

    Offsets count from 1 within an epoch; ``offset == 0`` means "before the
    first event". The epoch changes whenever history was lost, so a position
    from another epoch cannot be resumed exactly.
    """

    epoch: str
    offset: int


def parse_scalar(value: object, kind: type) -> Any:
    """Read a setting's ``value`` as ``kind`` (bool, int, float or str).

    Strings, as environment variables give them, are parsed ("1", "true",
    "yes" and "on" are true; "0", "false", "no" and "off" false). A bool is
    never taken for a number, nor a float for an int.

    Raises:
        ValueError: the value is not one of ``kind``.
    """
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
    elif kind is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        return float(value)
    elif kind is int and isinstance(value, int | str) and not isinstance(value, bool):
        return int(value)
    elif kind is str and isinstance(value, str):
        return value
    raise ValueError(f"not {kind_name(kind)}: {value!r}")


#: How settings errors name the kinds of value (``must be an integer``).
_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def kind_name(kind: type) -> str:
    """``kind`` as a settings error names it: ``"an integer"``, ``"a number"`` …"""
    return _KIND_NAMES.get(kind, f"of type {kind.__name__}")


def unknown_setting(name: str, known: Iterable[str], *, prefix: str = "") -> str:
    """The message for the unknown setting ``prefix + name``: the closest known
    name when one is close (difflib), else every known name."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{prefix}{close[0]}'?" if close else "known: " + ", ".join(names)
    return f"unknown setting '{prefix}{name}'; {hint}"


def deprecated_name(old: str, new: str) -> None:
    """Warn that ``old`` is the deprecated name of ``new``; the old name goes in Tidings 0.3.

    The warning points at the caller of the function or property that calls this.
    """
    warnings.warn(
        f"{old} is deprecated and will be removed in Tidings 0.3; use {new}",
        DeprecationWarning,
        stacklevel=3,
    )
