"""tidings.js as the npm package tidings-client: what ``npm pack`` ships and what tsc makes of it.

Needs Node, npm and the npm package ``typescript`` under ``$TIDINGS_NPM_PREFIX``
(default /tmp/tidings-npm; ``.ci/run`` installs it there), never in the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

import tidings
from tests.support.command import run
from tests.support.env import unavailable
from tidings.server.app import STATIC

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent / "npm"
NPM_PREFIX = Path(os.environ.get("TIDINGS_NPM_PREFIX", "/tmp/tidings-npm"))
SHIPPED = {"package.json", "README.md", "tidings.js", "tidings.d.ts"}
TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "noEmit": True,
        "target": "es2022",
        "module": "nodenext",
        "moduleResolution": "nodenext",
        "lib": ["es2022", "dom"],
        "types": [],
    },
    "files": ["usage.ts", "api.ts"],
}


def command(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        unavailable(f"{name} is not installed (apt-get install nodejs npm)")
    return found


def npm_pack(*args: str | Path, cache: Path) -> dict[str, object]:
    quiet = {"npm_config_update_notifier": "false", "npm_config_fund": "false"}
    out = run(command("npm"), "pack", "--json", "--cache", cache, *args, cwd=STATIC, env=quiet)
    [packed] = json.loads(out)
    assert isinstance(packed, dict)
    return packed


def test_npm_pack_ships_the_client_its_types_and_nothing_else(tmp_path: Path) -> None:
    packed = npm_pack("--dry-run", cache=tmp_path / "cache")
    assert packed["name"] == "tidings-client"
    assert packed["version"] == tidings.__version__
    assert isinstance(packed["files"], list)
    assert {file["path"] for file in packed["files"]} == SHIPPED


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A TypeScript project with the packed tarball unpacked as node_modules/tidings-client."""
    packed = npm_pack("--pack-destination", tmp_path, cache=tmp_path / "cache")
    project = tmp_path / "project"
    package = project / "node_modules" / "tidings-client"
    with tarfile.open(tmp_path / str(packed["filename"])) as tarball:
        tarball.extractall(package.parent, filter="data")
    (package.parent / "package").rename(package)
    (project / "package.json").write_text('{"type": "module", "private": true}\n')
    (project / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    shutil.copy(HERE / "usage.ts", project)
    return project


def declarations(names: dict[str, dict[str, object]]) -> str:
    """TypeScript that compiles only if the package declares exactly the names tidings.js has.

    A ``Record<keyof T, true>`` literal must name every key of ``T`` and no
    other: a name missing from the types, or declared but not in the script,
    is an error.
    """
    inherited = "keyof Event | keyof EventTarget | keyof Error"
    lines = [
        'import * as api from "tidings-client";',
        f"type Own<T> = Exclude<keyof T, {inherited}>;",
        "const yes = true as const;",
        "export const exported: Record<keyof typeof api, true> = {"
        + ", ".join(f"{name}: yes" for name in names)
        + "};",
    ]
    for name, found in names.items():
        members = found["members"]
        assert isinstance(members, list)
        keys = {"class": f"Own<api.{name}>", "object": f"keyof typeof api.{name}"}.get(
            str(found["kind"])
        )
        if keys is not None:
            body = ", ".join(f"{member}: yes" for member in members)
            lines.append(f"export const {name}_members: Record<{keys}, true> = {{{body}}};")
    return "\n".join(lines) + "\n"


@pytest.fixture
def tsc() -> Path:
    tsc = NPM_PREFIX / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        unavailable(f"no {tsc} (npm install --prefix {NPM_PREFIX} typescript)")
    return tsc


def test_tsc_checks_the_usage_and_the_declared_names(tsc: Path, project: Path) -> None:
    script = (project / "node_modules" / "tidings-client" / "tidings.js").as_uri()
    names = json.loads(run(command("node"), HERE / "members.mjs", script, cwd=project))
    assert {"TidingsEventSource", "TidingsSocket", "publish"} <= set(names)
    (project / "api.ts").write_text(declarations(names))
    run(command("node"), tsc, "--project", project, cwd=project)
