"""cli.py without sockets: the serve guard, ``token``, ``publish --api-key``, durations,
where the client commands find the server, and the one line each mistake gets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import httpx
import pytest

import tidings
from tidings import cli
from tidings.server.auth import TokenVerifier

SECRET = "a-development-secret-of-32-bytes!"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TIDINGS_CONFIG", "TIDINGS_JWT_SECRET", "TIDINGS_API_KEYS", "TIDINGS_HOST",
                 "TIDINGS_PORT", "TIDINGS_URL", "TIDINGS_BACKEND", "TIDINGS_REDIS_URL",
                 "TIDINGS_API_KEY"):  # fmt: skip
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
    jobs = ["--jobs", "report.*", "--jobs", "demo"]
    assert cli.main([*argv, "--history", "chat:a", *jobs, "--ttl", "1h"]) == 0
    principal = TokenVerifier(secret=SECRET).verify(capsys.readouterr().out.strip())
    assert principal.sub == "alice"
    assert principal.grants["subscribe"] == ("chat:*",)
    assert principal.grants["history"] == ("chat:a",)
    assert principal.grants["presence"] == ()
    assert principal.grants["jobs"] == ("report.*", "demo")
    assert principal.expires is not None


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"tidings {tidings.__version__}\n"


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


@pytest.mark.parametrize(
    ("flag", "environ", "url"),
    [
        (None, {}, "http://127.0.0.1:8000"),
        (None, {"TIDINGS_PORT": "9000"}, "http://127.0.0.1:9000"),
        (None, {"TIDINGS_HOST": "10.0.0.5", "TIDINGS_PORT": "9000"}, "http://10.0.0.5:9000"),
        (None, {"TIDINGS_HOST": "0.0.0.0"}, "http://127.0.0.1:8000"),
        (None, {"TIDINGS_HOST": "::1", "TIDINGS_PORT": "9000"}, "http://[::1]:9000"),
        (None, {"TIDINGS_URL": "https://rt.example", "TIDINGS_PORT": "9000"}, "https://rt.example"),
        ("http://h:1", {"TIDINGS_URL": "https://rt.example"}, "http://h:1"),
    ],
)  # fmt: skip
def test_server_url_comes_from_the_flag_then_the_environment(
    flag: str | None, environ: dict[str, str], url: str
) -> None:
    assert cli.server_url(flag, environ) == url


@pytest.mark.parametrize("command", ["publish", "listen", "bench"])
def test_a_bad_tidings_port_is_one_line(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TIDINGS_PORT", "80a")
    argv = {"publish": ["publish", "c", "1"], "listen": ["listen", "c"], "bench": ["bench"]}
    assert cli.main(argv[command]) == 2
    assert capsys.readouterr().err == "tidings: TIDINGS_PORT must be a port number 1-65535\n"


def test_publish_goes_to_tidings_port(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sent: list[str] = []

    def post(url: str, **kwargs: Any) -> httpx.Response:
        sent.append(url)
        return httpx.Response(200, json={"channel": "c", "epoch": "e", "offset": 1})

    monkeypatch.setattr(httpx, "post", post)
    monkeypatch.setenv("TIDINGS_PORT", "9000")
    assert cli.main(["publish", "c", "1"]) == 0
    assert sent == ["http://127.0.0.1:9000/api/publish"]
    capsys.readouterr()


@pytest.mark.parametrize(
    ("status", "body", "line"),
    [
        (400, b'{"error":{"code":"invalid_channel","message":"invalid channel name"}}',
         "publish: 400 invalid_channel: invalid channel name"),
        (413, b'{"error":{"code":"too_large","message":"body over\\n 64 KiB"}}',
         "publish: 413 too_large: body over 64 KiB"),
        (502, b"<html>bad gateway</html>", "publish: 502 Bad Gateway"),
    ],
)  # fmt: skip
def test_a_server_error_is_its_code_and_message_never_the_json(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    status: int,
    body: bytes,
    line: str,
) -> None:
    monkeypatch.setattr(httpx, "post", lambda url, **kwargs: httpx.Response(status, content=body))
    assert cli.main(["publish", "c", "1"]) == 1
    assert capsys.readouterr().err == f"tidings: {line}\n"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--backend", "redis", "--redis-url", "localhost:6379"],
         "redis_url must start with redis://, rediss:// or unix:// (e.g. redis://127.0.0.1:6379/0)"),
        (["--backend", "redis", "--redis-url", "redis://:hunter2@localhost:63a/0"],
         "redis_url has a port that is not a number 0-65535"),
        (["--redis-url", "redis://127.0.0.1:6379/0"],
         "--redis-url needs --backend redis (the backend is memory)"),
        (["--redis-prefix", "app:"],
         "--redis-prefix needs --backend redis (the backend is memory)"),
        (["--port", "70000"], "port must be 0-65535, not 70000"),
        (["--static", "/nonexistent/site"], "static_dir: /nonexistent/site does not exist"),
        (["--static", "/etc/hostname"], "static_dir: /etc/hostname is not a directory"),
    ],
)  # fmt: skip
def test_serve_refuses_a_bad_setting_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    assert cli.main(["serve", *argv]) == 2
    assert capsys.readouterr().err == f"tidings: {line}\n"


def test_serve_takes_redis_url_with_the_backend_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TIDINGS_BACKEND", "redis")
    # Refused for its host, after the Redis flags were accepted: no socket opened.
    assert cli.main(["serve", "--redis-url", "redis://h:6379/0", "--host", "0.0.0.0"]) == 2
    assert "no authentication" in capsys.readouterr().err


def test_listen_announces_delays_that_never_shrink() -> None:
    said: list[float] = []
    backoff = cli.AnnouncedBackoff(said.append)
    delays = [backoff.next_delay() for _ in range(12)]
    assert said == delays
    assert delays == sorted(delays)
    assert delays[-1] <= backoff.cap
    backoff.reset()
    assert backoff.next_delay() <= backoff.base
