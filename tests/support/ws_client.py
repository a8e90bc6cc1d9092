"""A WebSocket client process for tests that kill or stop a peer.

``python -m tests.support.ws_client URL CHANNEL NAME`` connects with
``tidings.v1.json``, introduces itself as NAME, subscribes to CHANNEL, prints
``ready CLIENT_ID`` and then reads forever. Its ping answers come from the
``websockets`` library, so stopping the process (SIGSTOP) stops them too.
"""

from __future__ import annotations

import asyncio
import json
import sys

from websockets.asyncio.client import connect


async def main(url: str, channel: str, name: str) -> None:
    async with connect(url, subprotocols=["tidings.v1.json"], ping_interval=None) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"id": 1, "op": "connect", "info": {"name": name}}))
        client_id = json.loads(await ws.recv())["result"]["client"]
        await ws.send(json.dumps({"id": 2, "op": "subscribe", "channel": channel}))
        while True:
            message = json.loads(await ws.recv())
            if message.get("id") == 2:
                break
        print(f"ready {client_id}", flush=True)
        async for _ in ws:
            pass


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
