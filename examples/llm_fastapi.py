from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request

from tidings import Hub
from tidings.llm import LLMConfig, Relay, validate_request
from tidings.server import SSEResponse

hub = Hub()
# The demo provider; LLMConfig.from_table({"base_url": ...}) relays a real model.
relay = Relay(hub, LLMConfig().router(), grace=30)


@asynccontextmanager
async def lifespan(app: FastAPI):
    async with hub:
        yield
        await relay.aclose()  # cancels running generations, closes upstreams


app = FastAPI(lifespan=lifespan)


@app.post("/questions")
async def ask(question: str) -> dict[str, str]:
    messages = [{"role": "user", "content": question}]
    generation = await relay.start(validate_request({"model": "demo", "messages": messages}))
    return {"id": generation.id, "events": f"/answers/{generation.id}"}


@app.get("/answers/{answer_id}")
async def answer(answer_id: str, request: Request) -> SSEResponse:
    generation = relay.get(answer_id)
    if generation is None:
        raise HTTPException(404, "no such answer")
    cursor = request.headers.get("last-event-id")
    # From the first token, or from where a reconnecting client left off.
    since = cursor or {generation.channel: generation.origin}
    return SSEResponse(hub, generation.channel, last_event_id=since)
