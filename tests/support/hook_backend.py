"""A user's backend for the proxy hooks: a small Starlette app that answers by channel name.

Run it as a process of its own (:class:`BackendProcess`) and point
``proxy_connect_url``, ``proxy_subscribe_url`` and ``proxy_publish_url`` at
``/connect``, ``/subscribe`` and ``/publish``. What it answers:

- ``/connect``: 401 ``login_required`` when a channel of the URL starts with
  ``noconnect``; no answer in time for ``slowconnect``; else 200 with
  ``{"info": {"cookie": <the cookie it was sent>}}``.
- ``/subscribe`` and ``/publish``, by the channel's first word: ``deny`` 403
  ``not_allowed``; ``slow`` no answer in time; ``boom`` 500; ``rewrite``
  (publish) 200 ``{"data": {"rewritten": <data>}}``; anything else 200, empty.

``GET /seen?channel=C`` lists what it was asked about ``C`` (at most the last
:data:`KEPT` requests are kept).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import deque
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.env import TIMEOUT
from tidings.testing import free_port

__all__ = ["KEPT", "BackendProcess", "app"]

#: Requests the backend remembers for ``/seen``.
KEPT = 1000
#: How long a ``slow`` answer takes: longer than the proxy_timeout tests use.
SLOW = TIMEOUT * 2

seen: deque[dict[str, Any]] = deque(maxlen=KEPT)


def _refusal(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _record(request: Request, hook: str) -> dict[str, Any]:
    body: dict[str, Any] = await request.json()
    seen.append(
        {
            "hook": hook,
            "body": body,
            "cookie": request.headers.get("cookie"),
            "authorization": request.headers.get("authorization"),
        }
    )
    return body


async def connect(request: Request) -> Response:
    body = await _record(request, "connect")
    channels: list[str] = body["channels"]
    if any(channel.startswith("noconnect") for channel in channels):
        return _refusal(401, "login_required", "sign in first")
    if any(channel.startswith("slowconnect") for channel in channels):
        await asyncio.sleep(SLOW)
    return JSONResponse({"info": {"cookie": request.headers.get("cookie")}})


async def subscribe(request: Request) -> Response:
    body = await _record(request, "subscribe")
    return await _answer(body["channel"], None)


async def publish(request: Request) -> Response:
    body = await _record(request, "publish")
    return await _answer(body["channel"], body["data"])


async def _answer(channel: str, data: Any) -> Response:
    if channel.startswith("deny"):
        return _refusal(403, "not_allowed", f"the backend says no to {channel}")
    if channel.startswith("slow"):
        await asyncio.sleep(SLOW)
    if channel.startswith("boom"):
        return Response("database on fire", status_code=500)
    if channel.startswith("rewrite"):
        return JSONResponse({"data": {"rewritten": data}})
    return Response(status_code=200)


async def seen_about(request: Request) -> Response:
    channel = request.query_params["channel"]
    return JSONResponse(
        [
            entry
            for entry in seen
            if entry["body"].get("channel") == channel
            or channel in entry["body"].get("channels", ())
        ]
    )


async def healthz(request: Request) -> Response:
    return Response("ok")


app = Starlette(
    routes=[
        Route("/connect", connect, methods=["POST"]),
        Route("/subscribe", subscribe, methods=["POST"]),
        Route("/publish", publish, methods=["POST"]),
        Route("/seen", seen_about),
        Route("/healthz", healthz),
    ]
)


class BackendProcess:
    """This backend on uvicorn in a process of its own, on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def proxy_env(self) -> dict[str, str]:
        """The settings that send every hook of a ``tidings serve`` here."""
        return {
            f"TIDINGS_PROXY_{name.upper()}_URL": f"{self.url}/{name}"
            for name in ("connect", "subscribe", "publish")
        }

    def __enter__(self) -> BackendProcess:
        command = [sys.executable, "-m", "uvicorn", "tests.support.hook_backend:app"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT * 3
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the hook backend exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"the hook backend did not answer within {TIMEOUT * 3} s")

    def __exit__(self, *exc_info: object) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=TIMEOUT)
