"""The Autobahn WebSocket cases (the quick ones) against a running ``tidings serve``.

The full selection (with 9.* and the cases that wait on purpose) runs in
``.ci/run`` through ``python -m tests.support.autobahn``.
"""

from __future__ import annotations

import pytest

from tests.support.autobahn import (
    ALLOWED,
    PROTOCOL_CASES,
    TIMED_CASES,
    echo_url,
    problems,
    run_cases,
    server_env,
)
from tests.support.server import ServerProcess


@pytest.mark.parametrize("path", ["fast", "asgi"])
async def test_autobahn_quick_cases(path: str) -> None:
    with ServerProcess(env=server_env(path)) as server:
        results = await run_cases(echo_url(server), PROTOCOL_CASES, TIMED_CASES)
    assert len(results) > 200
    found = problems(results, ALLOWED[path])
    assert not found, "\n".join(found)


async def test_the_echo_route_exists_only_when_enabled() -> None:
    with ServerProcess(env={"TIDINGS_DEMO": "0"}) as server:
        results = await run_cases(echo_url(server), ["1.1.1"])
    assert [result.passed for result in results] == [False]
