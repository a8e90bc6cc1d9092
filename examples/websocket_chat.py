import asyncio
import json
import sys
from itertools import count

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def chat(url: str, room: str, name: str, say: str | None = None, stop_after: int = 0):
    """Join `room` as `name`, say `say`, print what arrives; resume exactly after drops."""
    since = None  # position of the last event seen: where to resume after a drop
    heard = []
    ids = count(1)
    async for ws in connect(url, subprotocols=["tidings.v1.json"]):  # reconnects with backoff
        try:
            await ws.send(json.dumps({"id": next(ids), "op": "connect", "info": {"name": name}}))
            subscribe = {"id": next(ids), "op": "subscribe", "channel": room}
            if since:
                subscribe["since"] = since
            await ws.send(json.dumps(subscribe))
            if say:
                message = {"from": name, "text": say}
                # The key makes a publish retried after a drop land only once.
                publish = {"id": next(ids), "op": "publish", "channel": room, "data": message}
                await ws.send(json.dumps({**publish, "key": f"{name}:{say}"}))
                say = None
            async for frame in ws:
                batch = json.loads(frame)  # one message, or an array of them when behind
                for message in batch if isinstance(batch, list) else [batch]:
                    if "error" in message:
                        print("error:", message["error"]["message"])
                    elif message.get("result", {}).get("recovered") is False:
                        print(f"missed events in {room} ({message['result']['reset']})")
                    elif message.get("event") in ("join", "leave"):
                        print(f"{message['data']['info']['name']} {message['event']}s")
                    elif "offset" in message:  # an event of the room
                        since = {"epoch": message["epoch"], "offset": message["offset"]}
                        print(f"{message['data']['from']}: {message['data']['text']}")
                        heard.append(message["data"])
                        if len(heard) == stop_after:
                            return heard
        except ConnectionClosed:
            continue


USAGE = """usage: python examples/websocket_chat.py URL ROOM NAME [LINE]
  e.g. python examples/websocket_chat.py ws://127.0.0.1:8000/ws chat:lobby ada hello"""

if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    asyncio.run(chat(*sys.argv[1:5]))
