"""cli.py without sockets: the serve guard, ``token``, ``publish --api-key``, durations."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import httpx
import pytest

from tidings import cli
from tidings.server.auth import TokenVerifier

SECRET = "a-development-secret-of-32-bytes!"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TIDINGS_CONFIG", "TIDINGS_JWT_SECRET", "TIDINGS_API_KEYS", "TIDINGS_HOST"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30s", 30), ("30m", 1800), ("1h", 3600), ("7d", 604800)]
)
def test_ttl_takes_a_unit_suffix(text: str, seconds: float) -> None:
    assert cli.parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "1w", "h", "-5", "0", "1.2.3h"])
def test_ttl_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_ttl(text)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.com", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert cli.is_loopback(host) is loopback


def test_serve_refuses_an_open_non_loopback_host_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "no authentication" in error
    assert "--allow-anonymous" in error


def test_serve_names_the_setting_of_a_bad_key_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text("not a key, and a secret-looking line")
    monkeypatch.setenv("TIDINGS_JWT_KEY_FILE", str(key_file))
    assert cli.main(["serve"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("tidings: jwt_key_file:")
    assert "secret-looking" not in error


def test_token_mints_a_token_the_server_accepts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDINGS_JWT_SECRET", SECRET)
    argv = ["token", "--sub", "alice", "--subscribe", "chat:*", "--publish", "chat:*"]
    assert cli.main([*argv, "--history", "chat:a", "--ttl", "1h"]) == 0
    principal = TokenVerifier(secret=SECRET).verify(capsys.readouterr().out.strip())
    assert principal.sub == "alice"
    assert principal.grants["subscribe"] == ("chat:*",)
    assert principal.grants["history"] == ("chat:a",)
    assert principal.grants["presence"] == ()
    assert principal.expires is not None


def test_token_needs_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "--sub", "alice"]) == 2
    assert "jwt_secret" in capsys.readouterr().err


@pytest.mark.parametrize("from_env", [False, True])
def test_publish_sends_the_api_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], from_env: bool
) -> None:
    sent: dict[str, Any] = {}

    def post(url: str, **kwargs: Any) -> httpx.Response:
        sent.update(kwargs, url=url)
        return httpx.Response(200, json={"channel": "c", "epoch": "e", "offset": 1})

    monkeypatch.setattr(httpx, "post", post)
    argv = ["publish", "c", "1"]
    if from_env:
        monkeypatch.setenv("TIDINGS_API_KEY", "k" * 20)
    else:
        argv += ["--api-key", "k" * 20]
    assert cli.main(argv) == 0
    assert sent["headers"] == {"X-API-Key": "k" * 20}
    capsys.readouterr()
