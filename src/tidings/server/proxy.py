"""Proxy hooks: the ``on_connect``, ``on_subscribe``, ``on_publish`` and
``on_complete`` hooks as HTTP calls to the user's backend (``proxy_connect_url``,
``proxy_subscribe_url``, ``proxy_publish_url``, ``proxy_complete_url``), for
``tidings serve``.

Theory of operation
-------------------

Each configured URL becomes a :class:`ProxyHook`, an ordinary hook
(``server/hooks.py``): one mechanism, whether the hook is Python in the same
process or a POST to another one. A hook POSTs one JSON object describing the
action (:func:`describe`) with the request headers named by ``proxy_headers``
and reads the answer, at most ``proxy_max_body_bytes`` of it, within
``proxy_timeout`` seconds for the whole exchange:

* 2xx allows. Its body, empty or a JSON object, may carry ``info`` (connect:
  the connection's info) or ``data`` (publish: the data to publish instead;
  absent or null keeps it).
* 4xx refuses with :class:`~tidings.errors.Rejected`: the body's
  ``{"error": {"code", "message"}}`` and the status reach the client as
  they are (``rejected`` and a stock message when the body has none).
* Anything else (the backend down, a timeout, a 5xx or 3xx, a 2xx body that
  is not a JSON object, a body over the bound) refuses with
  :class:`~tidings.errors.ProxyUnavailable` (503 ``proxy_unavailable``):
  fail closed, with a warning in the log naming the setting, never its URL
  (it may hold a password).

``proxy_complete_url`` is told, not asked: it is POSTed each generation's
record (:meth:`GenerationRecord.to_json <tidings.llm.GenerationRecord.to_json>`)
once the generation has ended; any 2xx is fine, and anything else is logged
(the generation has ended already; nothing is refused).

All the hooks of an app share one pooled ``httpx.AsyncClient`` of
:class:`Proxy`, which the app closes when it stops.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import orjson
from starlette.datastructures import Headers

from tidings.errors import InvalidPublication, ProtocolError, ProxyUnavailable, Rejected
from tidings.llm.record import GenerationRecord
from tidings.server.auth import Kind
from tidings.server.hooks import ConnectContext, PublishContext, SubscribeContext
from tidings.settings import Settings
from tidings.wire import json

__all__ = ["PROXY_GRACE", "Proxy", "ProxyCompleteHook", "ProxyHook", "describe"]

logger = logging.getLogger(__name__)

#: Seconds a proxy hook's runner waits past ``proxy_timeout``, so the
#: hook's own deadline answers first (``proxy_unavailable``, not ``hook_failed``).
PROXY_GRACE = 1.0

Context = ConnectContext | SubscribeContext | PublishContext

#: Which field of a 2xx answer each hook returns.
_RESULT_FIELD = {"connect": "info", "subscribe": None, "publish": "data", "complete": None}


def describe(context: Context) -> dict[str, Any]:
    """The JSON object a proxy hook POSTs for ``context``."""
    principal = context.principal
    document: dict[str, Any] = {
        "transport": context.transport,
        "peer": context.peer,
        "principal": principal.kind.value,
        "user": principal.sub if principal.kind is not Kind.ANONYMOUS else None,
    }
    if isinstance(context, ConnectContext):
        document["channels"] = list(context.channels)
        return document
    document["info"] = context.info
    document["channel"] = context.channel
    if isinstance(context, SubscribeContext):
        document["action"] = context.action
        return document
    document["event"] = context.event
    document["data"] = context.data
    document["text"] = context.text
    return document


class ProxyHook:
    """One hook that asks the user's backend at ``url``.

    Args:
        proxy: The app's proxy (its HTTP client and settings).
        name: ``connect``, ``subscribe`` or ``publish``.
        url: Where to POST.
    """

    def __init__(self, proxy: Proxy, name: str, url: str) -> None:
        if name not in _RESULT_FIELD:
            raise ValueError(f"no proxy hook is called {name!r}")
        self.proxy = proxy
        self.name = name
        self.url = url
        self.setting = f"proxy_{name}_url"
        #: The runner's bound (server/hooks.py): past the exchange's own deadline.
        self.timeout = proxy.timeout + PROXY_GRACE

    async def __call__(self, context: Context) -> Any:
        """Ask the backend; return the answer's ``info`` or ``data`` (None: none).

        Raises:
            Rejected: the backend answered 4xx.
            ProxyUnavailable: the backend could not give an answer (logged).
            InvalidPublication: the publish's data cannot be sent as JSON.
        """
        try:
            body = orjson.dumps(describe(context))
        except TypeError as exc:
            raise InvalidPublication(f"data the {self.setting} cannot be sent as JSON") from exc
        status, answer = await self._post(body, context.headers)
        if 200 <= status < 300:
            document = self._document(answer)
            field = _RESULT_FIELD[self.name]
            return document.get(field) if field is not None else None
        if 400 <= status < 500:
            raise _rejection(status, answer, self.setting)
        raise self._unavailable(f"it answered {status}")

    async def _post(self, body: bytes, forwarded: Headers | None) -> tuple[int, bytes]:
        proxy = self.proxy
        headers = [("content-type", "application/json")]
        if forwarded is not None:
            for name in proxy.forward:
                headers += [(name, value) for value in forwarded.getlist(name)]
        try:
            async with asyncio.timeout(proxy.timeout):
                client = proxy.client
                request = client.build_request("POST", self.url, content=body, headers=headers)
                response = await client.send(request, stream=True)
                try:
                    answer = await _read(response, proxy.max_body_bytes)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise self._unavailable(f"no answer within {proxy.timeout:g} s") from None
        except httpx.TimeoutException:
            raise self._unavailable(f"no answer within {proxy.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise self._unavailable(f"cannot reach it ({type(exc).__name__})") from None
        except _TooLarge:
            raise self._unavailable(
                f"its answer is longer than proxy_max_body_bytes ({proxy.max_body_bytes})"
            ) from None
        return response.status_code, answer

    def _document(self, answer: bytes) -> dict[str, Any]:
        if not answer.strip():
            return {}
        try:
            document = json.loads(answer)
        except (ValueError, ProtocolError):
            document = None
        if not isinstance(document, dict):
            raise self._unavailable("it answered 2xx with a body that is not a JSON object")
        return document

    def _unavailable(self, reason: str) -> ProxyUnavailable:
        logger.warning("%s: %s; refusing (fail closed)", self.setting, reason)
        return ProxyUnavailable(self.name, reason)


class ProxyCompleteHook(ProxyHook):
    """The ``on_complete`` hook that POSTs each generation's record to ``url``."""

    def __init__(self, proxy: Proxy, url: str) -> None:
        super().__init__(proxy, "complete", url)

    async def __call__(self, record: GenerationRecord) -> None:  # type: ignore[override]
        """POST the record; any 2xx answer is fine.

        Raises:
            ProxyUnavailable: no 2xx answer came (logged).
        """
        status, _ = await self._post(orjson.dumps(record.to_json()), None)
        if not 200 <= status < 300:
            raise self._unavailable(f"it answered {status}")

    def _unavailable(self, reason: str) -> ProxyUnavailable:
        logger.warning("%s: %s; the record was not delivered", self.setting, reason)
        return ProxyUnavailable(self.name, reason)


class _TooLarge(Exception):
    pass


async def _read(response: httpx.Response, limit: int) -> bytes:
    """The body of ``response``, refusing more than ``limit`` bytes."""
    length = response.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and int(length) > limit:
        raise _TooLarge
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)


def _rejection(status: int, answer: bytes, setting: str) -> Rejected:
    """The refusal a 4xx answer asks for: its code and message when it gives valid ones."""
    code, message = "rejected", f"refused by {setting.removesuffix('_url')}"
    try:
        error = json.loads(answer).get("error") if answer.strip() else None
    except (ValueError, ProtocolError, AttributeError):
        error = None
    if isinstance(error, dict):
        if isinstance(error.get("message"), str) and error["message"]:
            message = error["message"]
        try:
            return Rejected(str(error.get("code")), message, status=status)
        except ValueError:
            pass  # no usable code: the stock one, with the message
    return Rejected(code, message, status=status)


class Proxy:
    """The proxy hooks of one app and the pooled HTTP client they share.

    Args:
        connect_url, subscribe_url, publish_url, complete_url: The backend's
            URLs ("" for none).
        timeout: Seconds for a whole exchange (connect, send, answer).
        forward: Names of request headers to pass on (lower case).
        max_body_bytes: Longest answer read from the backend.
        max_connections: Connections the pool may open to the backend.
        transport: The client's transport (httpx's default when None; tests
            pass an ``httpx.MockTransport``).
    """

    def __init__(
        self,
        *,
        connect_url: str = "",
        subscribe_url: str = "",
        publish_url: str = "",
        complete_url: str = "",
        timeout: float = 3.0,
        forward: tuple[str, ...] = (),
        max_body_bytes: int = 64 * 1024,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self.forward = forward
        self.max_body_bytes = max_body_bytes
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            # The backend is named by its URL alone, never by HTTP_PROXY and the like.
            trust_env=False,
            transport=transport,
        )
        self.connect = ProxyHook(self, "connect", connect_url) if connect_url else None
        self.subscribe = ProxyHook(self, "subscribe", subscribe_url) if subscribe_url else None
        self.publish = ProxyHook(self, "publish", publish_url) if publish_url else None
        self.complete = ProxyCompleteHook(self, complete_url) if complete_url else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Proxy | None:
        """The proxy ``settings`` configure, or None when no proxy URL is set."""
        if not settings.proxy_urls():
            return None
        return cls(
            connect_url=settings.proxy_connect_url,
            subscribe_url=settings.proxy_subscribe_url,
            publish_url=settings.proxy_publish_url,
            complete_url=settings.proxy_complete_url,
            timeout=settings.proxy_timeout,
            forward=settings.proxy_header_names(),
            max_body_bytes=settings.proxy_max_body_bytes,
            max_connections=settings.proxy_max_connections,
        )

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self.client.aclose()
