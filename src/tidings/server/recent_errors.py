"""RecentErrors: the last warnings and errors this process logged, for the admin page.

A ``logging.Handler`` on the ``tidings`` and ``uvicorn.error`` loggers that
keeps the newest :data:`RECENT_ERRORS` records at WARNING or above in a
bounded ring (each message cut to :data:`MAX_MESSAGE_CHARS`), so memory stays
flat however much goes wrong. It is attached only while an app with an
``admin_key`` runs. Log messages never hold secrets (``DESIGN.md``), so
neither does the ring; a traceback is reduced to its exception's type and
message.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Final

__all__ = ["LOGGERS", "MAX_MESSAGE_CHARS", "RECENT_ERRORS", "RecentErrors"]

#: Records the ring keeps; older ones are dropped.
RECENT_ERRORS: Final = 100
#: Characters kept of each message (and of each exception's text).
MAX_MESSAGE_CHARS: Final = 1000
#: The loggers whose records are kept (and their children).
LOGGERS: Final = ("tidings", "uvicorn.error")


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


class RecentErrors(logging.Handler):
    """A bounded ring of the newest WARNING-and-above records.

    Args:
        size: How many records to keep.
    """

    def __init__(self, size: int = RECENT_ERRORS) -> None:
        if size <= 0:
            raise ValueError(f"size must be > 0, not {size}")
        super().__init__(logging.WARNING)
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        #: Records seen since the handler was made, dropped ones included.
        self.total = 0

    @property
    def size(self) -> int:
        """How many records the ring keeps."""
        maxlen = self._entries.maxlen
        assert maxlen is not None
        return maxlen

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = str(record.msg)
        entry: dict[str, Any] = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _cut(message),
        }
        if record.exc_info and record.exc_info[0] is not None:
            kind, value, _ = record.exc_info
            entry["exception"] = _cut(f"{kind.__name__}: {value}")
        self._entries.append(entry)
        self.total += 1

    def entries(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The records kept, newest first; at most ``limit`` of them."""
        newest = list(reversed(self._entries))
        return newest if limit is None else newest[:limit]

    def attach(self) -> None:
        """Start keeping the records of :data:`LOGGERS`."""
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        """Stop keeping records."""
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self)
