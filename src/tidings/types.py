"""Shared aliases and small value types used by every layer."""

from __future__ import annotations

from typing import NamedTuple, TypeAlias

__all__ = ["Channel", "Epoch", "JSONValue", "Offset", "Position"]

Channel: TypeAlias = str
Epoch: TypeAlias = str
Offset: TypeAlias = int
JSONValue: TypeAlias = "dict[str, JSONValue] | list[JSONValue] | str | int | float | bool | None"


class Position(NamedTuple):
    """Where a channel's stream is: its epoch and the offset of its last event.

    Offsets count from 1 within an epoch; ``offset == 0`` means "before the
    first event". The epoch changes whenever history was lost, so a position
    from another epoch cannot be resumed exactly.
    """

    epoch: Epoch
    offset: Offset
