"""A plain ASGI app, no framework: a price ticker over Server-Sent Events.

``GET /prices`` streams the ``prices`` channel (resuming from ``Last-Event-ID``),
``POST /prices`` with a JSON body publishes to it. Any ASGI server runs it:
``uvicorn examples.asgi_app:app`` or ``hypercorn examples.asgi_app:app``.
"""

import orjson

from tidings import Hub
from tidings.server import SSEResponse

hub = Hub()


async def lifespan(receive, send):
    """Start the hub when the server starts, close it when the server stops."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await hub.start()
        else:
            await hub.aclose()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


async def read_body(receive) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def answer(send, status: int, document: object) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(document)})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close"})  # refused: no WebSocket here
    elif scope["path"] != "/prices":
        await answer(send, 404, {"error": "not found"})
    elif scope["method"] == "GET":
        cursor = dict(scope["headers"]).get(b"last-event-id", b"").decode() or None
        # An SSEResponse is an ASGI app: call it with the request's scope.
        await SSEResponse(hub, "prices", last_event_id=cursor)(scope, receive, send)
    elif scope["method"] == "POST":
        try:
            price = orjson.loads(await read_body(receive))
        except orjson.JSONDecodeError:
            await answer(send, 400, {"error": "the body is not JSON"})
            return
        position = await hub.publish("prices", price)
        await answer(send, 200, {"offset": position.offset})
    else:
        await answer(send, 405, {"error": "GET or POST"})
