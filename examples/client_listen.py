import asyncio

from tidings.client import Reset, listen


async def main() -> None:
    async with listen("http://127.0.0.1:8000", ["orders", "news"]) as events:
        async for event in events:
            if isinstance(event, Reset):
                # The server could not fill a gap (it restarted, or we were away
                # longer than its history): reload from the source of truth.
                print("gap in", event.channel, "reason:", event.reason)
                continue
            print(event.channel, event.offset, event.event, event.json())


if __name__ == "__main__":
    asyncio.run(main())
