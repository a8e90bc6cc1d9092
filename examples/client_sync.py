from tidings.client import listen_sync, publish

URL = "http://127.0.0.1:8000"

publish(URL, "jobs", {"job": 7, "state": "started"})

with listen_sync(URL, ["jobs"]) as events:
    for event in events:
        print(event)
        if getattr(event, "data", None) and '"done"' in event.data:
            break
