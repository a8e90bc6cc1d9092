"""The browser client agrees with the Python side: close codes (STYLE.md: one table, two
clients), its types and its npm package.json. tests/packaging/test_npm.py runs npm and tsc."""

from __future__ import annotations

import json
import re
from pathlib import Path

import tidings
from tidings.server.app import STATIC
from tidings.wire.codes import CloseCode

SCRIPT = STATIC / "tidings.js"
TYPES = STATIC / "tidings.d.ts"
#: The values a module exports (declarations of types only are not values).
EXPORT = re.compile(r"^export (?:async )?(?:function|class|const) (\w+)", re.M)


def close_codes(path: Path) -> dict[str, int]:
    block = re.search(r"export const CLOSE_CODES[^{]*\{(.*?)\}", path.read_text(), re.S)
    assert block is not None, f"{path.name} has no CLOSE_CODES table"
    return {name: int(value) for name, value in re.findall(r"(\w+): (\d+),", block.group(1))}


def test_close_codes_match_the_python_table() -> None:
    python = {code.name: int(code) for code in CloseCode}
    assert close_codes(SCRIPT) == python
    assert close_codes(TYPES) == python


def test_the_types_declare_the_exports_of_the_script() -> None:
    exported = set(EXPORT.findall(SCRIPT.read_text()))
    assert len(exported) >= 10
    assert set(EXPORT.findall(TYPES.read_text())) == exported  # overloads repeat a name


def test_package_json_ships_the_script_and_its_types_at_the_python_version() -> None:
    manifest = json.loads((STATIC / "package.json").read_text())
    assert manifest["name"] == "tidings-client"
    assert manifest["version"] == tidings.__version__
    assert manifest["type"] == "module"
    assert manifest["license"] == "MIT"
    assert manifest["exports"]["."] == {"types": "./tidings.d.ts", "default": "./tidings.js"}
    assert (manifest["main"], manifest["types"]) == ("./tidings.js", "./tidings.d.ts")
    assert sorted(manifest["files"]) == ["tidings.d.ts", "tidings.js"]
