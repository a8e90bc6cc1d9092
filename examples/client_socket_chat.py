import asyncio
import sys

from tidings.client import Socket, SocketEvent


def show(item: object) -> None:
    if isinstance(item, SocketEvent):
        print(f"{item.data['from']}: {item.data['text']}")


async def chat(url: str, room: str, name: str, line: str) -> None:
    async with Socket(url, format="msgpack", info={"name": name}) as socket:
        page = await socket.history(room, limit=10)  # the last ten lines
        for event in page.events:
            show(event)
        # Live from where the history ended: no gap, no line twice.
        await socket.subscribe(room, since=page.position, handler=show)
        await socket.publish(room, {"from": name, "text": line})
        here = await socket.presence(room)
        print("here:", ", ".join(member.info["name"] for member in here))
        await socket.wait_closed()  # until interrupted, or closed for good


USAGE = """usage: python examples/client_socket_chat.py URL ROOM NAME LINE
  e.g. python examples/client_socket_chat.py ws://127.0.0.1:8000/ws chat:lobby ada hello"""

if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    asyncio.run(chat(*sys.argv[1:5]))
