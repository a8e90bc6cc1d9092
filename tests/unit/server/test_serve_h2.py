"""server/serve_h2.py: the Hypercorn configuration, its TLS file checks, the lifespan it answers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from tests.support.tls import TLSFiles, make_tls_files
from tidings.server.serve_h2 import GRACEFUL_SECONDS, _LifespanDone, hypercorn_config
from tidings.settings import Settings, SettingsError


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def settings(tls: TLSFiles, **values: Any) -> Settings:
    return Settings(http2=True, certfile=str(tls.cert), keyfile=str(tls.key), **values)


def test_the_settings_map_onto_hypercorn(tls: TLSFiles) -> None:
    config = hypercorn_config(
        settings(tls, port=8443, ws_max_frame_bytes=4096, ws_ping_interval=7.0)
    )
    assert config.bind == ["127.0.0.1:8443"]
    assert config.alpn_protocols == ["h2", "http/1.1"]
    assert (config.certfile, config.keyfile) == (str(tls.cert), str(tls.key))
    assert config.graceful_timeout == GRACEFUL_SECONDS
    assert config.websocket_max_message_size == 4096
    assert config.websocket_ping_interval == 7.0
    assert isinstance(config.errorlog, logging.Logger)
    assert hypercorn_config(settings(tls, host="::1", port=8443)).bind == ["[::1]:8443"]


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("missing.pem", "key", r"^certfile: cannot read .*missing\.pem: No such file"),
        ("cert", "missing.pem", r"^keyfile: cannot read .*missing\.pem: No such file"),
        ("key", "cert", r"^certfile/keyfile: not a PEM certificate chain and its private key"),
        ("cert", "other", r"^certfile/keyfile: not a PEM certificate chain and its private key"),
    ],
)
def test_tls_files_that_do_not_load_are_named(
    tls: TLSFiles, tmp_path: Path, cert: str, key: str, message: str
) -> None:
    other = make_tls_files(tmp_path)  # a key that does not match tls.cert
    paths = {"cert": tls.cert, "key": tls.key, "other": other.key}
    bad = Settings(
        http2=True,
        certfile=str(paths.get(cert, tmp_path / cert)),
        keyfile=str(paths.get(key, tmp_path / key)),
    )
    with pytest.raises(SettingsError, match=message) as caught:
        hypercorn_config(bad)
    assert "PRIVATE KEY" not in str(caught.value)


async def test_the_lifespan_is_answered_and_requests_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    wrapped = _LifespanDone(app)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await wrapped({"type": "lifespan"}, receive, send)
    assert [message["type"] for message in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    await wrapped({"type": "http"}, receive, send)
    assert seen == ["http"]


def test_the_head_limits_and_idle_deadline_map_onto_hypercorn(tls: TLSFiles) -> None:
    config = hypercorn_config(
        settings(tls, max_url_bytes=1000, max_header_bytes=2000, idle_timeout=7.0)
    )
    assert config.h11_max_incomplete_size == 3000
    assert config.h2_max_header_list_size == 2000
    assert config.keep_alive_timeout == 7.0
