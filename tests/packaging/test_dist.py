"""The sdist and wheel ``python -m build`` makes: what PyPI would accept and a user would get.

The tree is copied first, so the build never writes into the checkout. The
wheel is built from the sdist (``build``'s default), so a file the sdist
forgets fails here. The installed wheel runs in a fresh venv that sees the
dependencies of the test environment but not its editable Tidings.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import tidings
from tests.support.command import run
from tests.support.env import TIMEOUT
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
NAME = f"tidings-{tidings.__version__}"
#: Never part of a release: virtualenvs, caches and build output of a working tree.
JUNK = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.py[cod]", "*.egg-info", "build", "dist",
    ".*_cache", ".hypothesis", "node_modules", "reports",
)  # fmt: skip
#: What the sdist carries beside the package (MANIFEST.in).
SDIST_DIRS = ("src", "tests", "docs", "examples")
SDIST_FILES = {"README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml", "MANIFEST.in"}


@dataclass(frozen=True)
class Dist:
    files: frozenset[str]  # every file of the tree that was built, before the build
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    tree = tmp_path_factory.mktemp("tree") / "tidings"
    shutil.copytree(ROOT, tree, ignore=JUNK)
    files = frozenset(
        path.relative_to(tree).as_posix() for path in tree.rglob("*") if path.is_file()
    )
    out = tree.parent / "dist"
    # --no-isolation: the build backend is the test environment's (the dev
    # extra asks for it as [build-system] does, and build checks the version).
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, tree)
    return Dist(files, out / f"{NAME}.tar.gz", out / f"{NAME}-py3-none-any.whl")


def test_twine_check_passes(dist: Dist) -> None:
    output = run(sys.executable, "-m", "twine", "check", "--strict", dist.sdist, dist.wheel)
    assert output.count("PASSED") == 2


def test_the_wheel_holds_the_package_whole(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read(f"{NAME}.dist-info/entry_points.txt").decode()
        metadata = wheel.read(f"{NAME}.dist-info/METADATA").decode()
    package = {name.removeprefix("src/") for name in dist.files if name.startswith("src/tidings/")}
    assert {name for name in names if not name.startswith(f"{NAME}.dist-info/")} == package
    assert {
        "tidings/py.typed",
        "tidings/server/static/tidings.js",
        "tidings/server/static/tidings.d.ts",
        "tidings/server/static/package.json",
        "tidings/server/demo/index.html",
        "tidings/server/demo/llm.html",
        "tidings/server/demo/demo.css",
        "tidings/server/demo/chart.js",
        "tidings/server/demo/favicon.svg",
        f"{NAME}.dist-info/licenses/LICENSE",
    } <= names
    lua = {path.name for path in (ROOT / "src/tidings/hub/backends/redis/lua").glob("*.lua")}
    assert {name.rpartition("/")[2] for name in names if name.endswith(".lua")} == lua
    assert "[console_scripts]\ntidings = tidings.cli:main" in entry_points
    assert "License-Expression: MIT" in metadata


def test_the_sdist_holds_the_sources_tests_and_docs(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as sdist:
        names = {member.name.removeprefix(f"{NAME}/") for member in sdist.getmembers()
                 if member.isfile()}  # fmt: skip
    made_by_setuptools = {
        name for name in names if name in ("PKG-INFO", "setup.cfg") or ".egg-info/" in name
    }
    expected = {name for name in dist.files if name.split("/")[0] in SDIST_DIRS} | SDIST_FILES
    assert names - made_by_setuptools == expected


@pytest.fixture(scope="module")
def installed(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv's python with the wheel installed; the dependencies are this environment's."""
    venv = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
        "--no-index", "--no-cache-dir", dist.wheel)  # fmt: skip
    # The dependencies only: a path in a .pth file goes on sys.path after the
    # venv's own site-packages, and the .pth files in it (the editable install
    # of this checkout among them) are not run.
    script = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(run(python, "-c", script).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


def test_the_installed_wheel_is_imported_from_its_venv(installed: Path) -> None:
    venv = installed.parents[1]
    where = run(installed, "-c", "import tidings; print(tidings.__file__)", cwd=venv)
    assert Path(where.strip()).is_relative_to(venv)


def test_the_installed_command_runs(installed: Path) -> None:
    command = installed.with_name("tidings")
    assert run(command, "--version") == f"tidings {tidings.__version__}\n"
    assert "serve" in run(installed, "-m", "tidings", "--help", cwd=installed.parents[1])


def test_the_installed_server_serves_the_client_and_the_demo(installed: Path) -> None:
    with ServerProcess(python=installed) as server:
        for path in ("/", "/static/tidings.js", "/static/tidings.d.ts", "/static/llm.html"):
            assert httpx.get(server.url + path, timeout=TIMEOUT).status_code == 200, path
