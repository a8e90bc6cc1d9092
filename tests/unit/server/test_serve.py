"""server/serve.py: the uvicorn configuration and the version fence of the fast write path."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest
from starlette.types import Receive, Scope, Send

from tidings.server import serve
from tidings.server.fastwrite import FastHttpToolsProtocol, FastWebSocketsProtocol
from tidings.server.guard import (
    GuardedHttpToolsProtocol,
    GuardedWebSocketsProtocol,
    ProtocolLimits,
)
from tidings.server.serve import TESTED_VERSIONS, fast_write_problem, release, uvicorn_config
from tidings.settings import Settings

PYPROJECT = Path(__file__).parents[3] / "pyproject.toml"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    pass


def fake_versions(monkeypatch: pytest.MonkeyPatch, **versions: str) -> None:
    real = serve.version
    monkeypatch.setattr(serve, "version", lambda name: versions.get(name) or real(name))


def test_the_tested_range_is_the_one_pyproject_declares() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    for package, (low, high) in TESTED_VERSIONS.items():
        [spec] = [dep for dep in dependencies if dep.split("[")[0].split(">")[0] == package]
        dotted = ".".join(map(str, low)), ".".join(map(str, high))
        assert spec.endswith(f">={dotted[0]},<{dotted[1]}"), spec


def test_release_reads_the_numeric_part() -> None:
    assert release("0.54.0") == (0, 54, 0)
    assert release("17.4") == (17, 4)
    assert release("17.5rc1") == (17, 5)
    assert release("nonsense") == ()


def test_the_installed_versions_fit() -> None:
    assert fast_write_problem() is None


def test_tested_versions_serve_on_the_fast_protocol_classes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=serve.__name__):
        config = uvicorn_config(app, Settings(), fast_write=True)
    assert isinstance(config.http, type)
    assert isinstance(config.ws, type)
    assert issubclass(config.http, FastHttpToolsProtocol)
    assert issubclass(config.ws, FastWebSocketsProtocol)
    assert not caplog.records


def test_no_fast_write_serves_on_the_guarded_classes() -> None:
    settings = Settings(fast_write=False, max_url_bytes=1000, header_timeout=2.5)
    config = uvicorn_config(app, settings)
    assert isinstance(config.http, type)
    assert isinstance(config.ws, type)
    assert issubclass(config.http, GuardedHttpToolsProtocol)
    assert not issubclass(config.http, FastHttpToolsProtocol)
    assert issubclass(config.ws, GuardedWebSocketsProtocol)
    assert not issubclass(config.ws, FastWebSocketsProtocol)
    for cls in (config.http, config.ws):
        assert cls.limits == ProtocolLimits.from_settings(settings)  # type: ignore[attr-defined]
    assert config.timeout_keep_alive == settings.idle_timeout


@pytest.mark.parametrize(
    ("package", "installed"),
    [
        ("uvicorn", "0.55.0"),
        ("uvicorn", "0.53.9"),
        ("websockets", "17.5"),
        ("websockets", "18.0"),
        ("websockets", "14.2"),
    ],
)
def test_an_untested_version_warns_once_and_serves_plain_asgi(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    package: str,
    installed: str,
) -> None:
    fake_versions(monkeypatch, **{package: installed})
    with caplog.at_level(logging.WARNING, logger=serve.__name__):
        config = uvicorn_config(app, Settings(), fast_write=True)
    assert (config.http, config.ws) == ("httptools", "websockets-sansio")
    [record] = [r for r in caplog.records if r.name == serve.__name__]
    assert record.levelno == logging.WARNING
    assert f"{package} {installed}" in record.getMessage()
    assert "plain ASGI path" in record.getMessage()


def test_the_range_is_checked_for_the_guarded_classes_too(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_versions(monkeypatch, uvicorn="0.99.0")
    with caplog.at_level(logging.WARNING, logger=serve.__name__):
        config = uvicorn_config(app, Settings(), fast_write=False)
    assert (config.http, config.ws) == ("httptools", "websockets-sansio")
    [record] = caplog.records
    assert "no request-head limits" in record.getMessage()


@pytest.mark.parametrize(("setting", "deflate"), [("off", False), ("deflate", True)])
def test_ws_compression_sets_permessage_deflate(setting: str, deflate: bool) -> None:
    config = uvicorn_config(app, Settings(ws_compression=setting))
    assert config.ws_per_message_deflate is deflate
