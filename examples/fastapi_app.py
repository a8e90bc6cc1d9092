from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from tidings import Hub
from tidings.server import SSEResponse

hub = Hub()  # in-memory: no services needed


@asynccontextmanager
async def lifespan(app: FastAPI):
    async with hub:
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/orders/{order_id}/status")
async def set_status(order_id: str, status: str) -> dict[str, int]:
    position = await hub.publish(f"orders:{order_id}", {"status": status})
    return {"offset": position.offset}


@app.get("/orders/{order_id}/events")
async def order_events(order_id: str, request: Request) -> SSEResponse:
    last_event_id = request.headers.get("last-event-id")
    return SSEResponse(hub, f"orders:{order_id}", last_event_id=last_event_id)
