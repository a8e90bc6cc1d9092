from tidings.client import Reset, listen_sync, publish

URL = "http://127.0.0.1:8000"  # where `tidings serve` listens

with listen_sync(URL, ["jobs"]) as events:
    # Listening from here on: nothing published now can be missed.
    publish(URL, "jobs", {"job": 7, "state": "started"})
    publish(URL, "jobs", {"job": 7, "state": "done"})
    for event in events:
        if isinstance(event, Reset):
            continue  # a gap the server could not fill: see client_listen.py
        print(event.channel, event.offset, event.json())
        if event.json()["state"] == "done":
            break
