"""Watch: what a browser page logs as an error, throws uncaught, or fails to load."""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import Page


class Watch:
    """A page's console errors, uncaught exceptions and failed requests; the test
    allows (by pattern) those it causes on purpose."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.allowed: list[str] = []

    def attach(self, page: Page) -> None:
        def console(message: Any) -> None:
            url = message.location.get("url", "")
            # A page without an icon: the browser's own request for one.
            if message.type == "error" and not url.endswith("/favicon.ico"):
                self.problems.append(f"{message.text} ({url})")

        page.on("console", console)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))

        def failed(request: Any) -> None:
            # close(), break and abort cancel their request on purpose.
            if request.failure != "net::ERR_ABORTED":
                self.problems.append(f"failed: {request.url} {request.failure}")

        page.on("requestfailed", failed)

    def allow(self, *patterns: str) -> None:
        self.allowed += patterns

    def check(self) -> None:
        unexpected = [p for p in self.problems if not any(re.search(a, p) for a in self.allowed)]
        assert not unexpected, unexpected
