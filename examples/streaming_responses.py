import asyncio
from collections.abc import AsyncIterator

from fastapi import FastAPI

from tidings.server import NDJSONResponse, ServerSentEvent, SSEResponse, StreamResponse

app = FastAPI()


async def countdown(last_event_id: str | None) -> AsyncIterator[ServerSentEvent]:
    # Last-Event-ID is the id of the last event the client received.
    n = int(last_event_id) - 1 if last_event_id else 10
    try:
        while n >= 0:
            yield ServerSentEvent({"n": n}, id=str(n), event="tick")
            n -= 1
            await asyncio.sleep(0.1)
    finally:
        print("countdown closed")  # runs the moment the client leaves


@app.get("/countdown")
async def countdown_events() -> SSEResponse:
    return SSEResponse(countdown)  # called with the request's Last-Event-ID


async def rows(count: int) -> AsyncIterator[dict[str, int]]:
    for n in range(count):
        yield {"n": n, "square": n * n}  # a database cursor would go here


@app.get("/rows")
async def export_rows(count: int = 1000) -> NDJSONResponse:
    return NDJSONResponse(rows(count))


async def chunks(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 65536):
        yield bytes(65536)


@app.get("/zeros")
async def download(size: int = 1 << 20) -> StreamResponse:
    return StreamResponse(chunks(size), headers={"Content-Disposition": "attachment"})
