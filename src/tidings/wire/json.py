"""JSON encoding for bytes that are kept (history, presence): right-sized.

orjson returns its output in an over-allocated buffer (4 KiB for a 100-byte
document). That is fine for bytes written and dropped, but an event kept in
history for minutes would hold the whole buffer, so what is kept goes
through :func:`dumps_kept`, which keeps a copy of exactly the output's size.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["dumps_kept"]


def dumps_kept(value: Any) -> bytes:
    """``orjson.dumps(value)`` in a right-sized buffer; raises what orjson raises."""
    return bytes(memoryview(orjson.dumps(value)))
