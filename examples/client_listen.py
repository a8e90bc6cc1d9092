import asyncio

from tidings.client import Reset, apublish, listen

URL = "http://127.0.0.1:8000"  # where `tidings serve` listens


async def main() -> None:
    async with listen(URL, ["orders", "news"]) as events:
        # Subscribed from here on: publish an order, then print events up to it.
        paid = await apublish(URL, "orders", {"id": 42, "state": "paid"})
        async for event in events:
            if isinstance(event, Reset):
                # The server could not fill a gap (it restarted, or we were away
                # longer than its history): reload from the source of truth.
                print("gap in", event.channel, "reason:", event.reason)
                continue
            print(event.channel, event.offset, event.event, event.json())
            if event.channel == "orders" and event.offset == paid.offset:
                break  # a real consumer keeps going; the listener resumes after drops


if __name__ == "__main__":
    asyncio.run(main())
