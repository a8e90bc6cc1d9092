"""The browser client's close-code table is the Python one (STYLE.md: one table, two clients)."""

from __future__ import annotations

import re
from pathlib import Path

from tidings.wire.codes import CloseCode

SCRIPT = Path(__file__).parents[2] / "src" / "tidings" / "server" / "static" / "tidings.js"


def js_close_codes() -> dict[str, int]:
    block = re.search(
        r"export const CLOSE_CODES = Object\.freeze\(\{(.*?)\}\);", SCRIPT.read_text(), re.S
    )
    assert block is not None, "tidings.js has no CLOSE_CODES table"
    return {name: int(value) for name, value in re.findall(r"(\w+): (\d+),", block.group(1))}


def test_close_codes_match_the_python_table() -> None:
    assert js_close_codes() == {code.name: int(code) for code in CloseCode}
