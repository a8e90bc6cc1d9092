"""Shared aliases and small value types used by every layer."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, TypeAlias

__all__ = ["JSONValue", "Position", "deprecated_name"]

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
    raise ValueError(f"not a {kind.__name__}: {value!r}")


def deprecated_name(old: str, new: str) -> None:
    """Warn that ``old`` is the deprecated name of ``new``; the old name goes in Tidings 0.3.

    The warning points at the caller of the function or property that calls this.
    """
    warnings.warn(
        f"{old} is deprecated and will be removed in Tidings 0.3; use {new}",
        DeprecationWarning,
        stacklevel=3,
    )
