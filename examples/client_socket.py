import asyncio

from tidings.client import Reset, Socket


async def main() -> None:
    # After a drop the socket reconnects with backoff and subscribes again from
    # the last event it delivered; publishes made meanwhile wait in a queue and
    # land exactly once.
    async with Socket("ws://127.0.0.1:8000/ws", info={"name": "packer"}) as socket:
        orders = await socket.subscribe("orders")
        await socket.publish("orders", {"id": 7, "state": "paid"})  # or any other publisher
        async for event in orders:
            if isinstance(event, Reset):
                # The server could not fill a gap (it restarted, or we were away
                # longer than its history): reload from the source of truth.
                print("gap in", event.channel, "reason:", event.reason)
                continue
            print(event.channel, event.offset, event.data)
            position = await socket.publish("packed", {"order": event.data["id"]})
            print("packed at", position.offset)
            break  # one order here; a packer keeps going


if __name__ == "__main__":
    asyncio.run(main())
