"""``/api/jobs``: start, look at, cancel and list jobs (``jobs.Runner``) over HTTP.

- ``POST /api/jobs/{name}``, the JSON body being the arguments: 202
  ``{"id", "stream", "state"}``; ``stream`` is the SSE URL of the job's
  events from the first (``/sse?channel=jobs:{id}&last_event_id=…``, under
  the app's mount path), so a client that connects late misses nothing.
- ``GET /api/jobs/{id}``: the job's record (state, progress, result, error).
- ``DELETE /api/jobs/{id}``: cancel it; the answer is its record.
- ``GET /api/jobs?cursor=…&limit=…``: a page of records, oldest first, and
  the registered jobs.

Every request is authorised first (``Authority.authorize``: ``jobs.start``,
``jobs.view``, ``jobs.cancel``). A job belongs to the identity that started
it: anyone else but an API key gets the same 404 as for an id that does not
exist. Refusals are the JSON errors of ``server/errors.py``: an unknown job
404, arguments that do not fit 422 (naming the argument), a full queue 429.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tidings.errors import InvalidCursor, ProtocolError, ShuttingDown, UnknownJob
from tidings.jobs import Job, Runner
from tidings.server.api import JSONBody, query_limit, read_body
from tidings.server.auth import Action, Kind, Principal
from tidings.server.state import ServerState
from tidings.wire import json
from tidings.wire.codes import ErrorCode

__all__ = ["job", "jobs", "start"]

#: Most records a listing page holds (also its default).
MAX_JOBS_PAGE = 100


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.tidings
    return state


def _runner(request: Request) -> Runner:
    runner = _state(request).runner
    assert runner is not None  # the routes are mounted only with a runner
    return runner


def _authorized(request: Request, action: Action, *, job: str | None = None) -> Principal:
    authority = _state(request).authority
    principal = authority.principal(request.scope)
    authority.authorize(principal, action, job=job)
    return principal


def _owner(principal: Principal) -> str | None:
    """Whose jobs a principal sees: an API key sees every job."""
    return None if principal.kind is Kind.SERVER else principal.identity


def _client(request: Request, principal: Principal) -> str | None:
    """Whose share of ``jobs_per_client`` a job takes: a token's subject, an
    anonymous client's address; API keys (your own backend) are not bounded."""
    if principal.kind is Kind.SERVER:
        return None
    if principal.kind is Kind.ANONYMOUS:
        return "address:" + _state(request).authority.peer(request.scope)
    return principal.identity


def stream_url(root: str, record: dict[str, Any]) -> str:
    """A job's SSE stream from its first event, whenever the client connects
    (``Last-Event-ID``, sent by a reconnecting client, takes precedence)."""
    cursor = quote(record["cursor"], safe=":")
    return f"{root}/sse?channel={record['channel']}&last_event_id={cursor}"


def _arguments(body: bytes) -> object:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"body is not valid JSON: {exc}", code=ErrorCode.INVALID_JSON) from exc


async def start(request: Request) -> Response:
    """``POST /api/jobs/{name}``: queue a job; 202 with its id and stream."""
    name = request.path_params["job"]
    principal = _authorized(request, Action.JOBS_START, job=name)
    runner = _runner(request)
    runner.jobs.spec(name)  # an unknown name is a 404 before the body is read
    if _state(request).draining:
        raise ShuttingDown(what="jobs")
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in ("", "application/json"):
        raise ProtocolError(
            f"unsupported Content-Type {media_type!r}: send application/json",
            code=ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        )
    body = await read_body(request, _state(request).settings.max_body_bytes)
    job = await runner.submit(
        name,
        _arguments(body),
        owner=principal.identity,
        client=_client(request, principal),
    )
    root = request.scope.get("root_path", "")
    return JSONBody(
        {"id": job.id, "stream": stream_url(root, job.record()), "state": job.state.value},
        status_code=202,
        headers={"location": f"{root}/api/jobs/{job.id}"},
    )


async def job(request: Request) -> Response:
    """``GET /api/jobs/{id}`` (the record) and ``DELETE /api/jobs/{id}`` (cancel it)."""
    job_id = request.path_params["job"]
    if request.method == "DELETE":
        principal = _authorized(request, Action.JOBS_CANCEL)
        record = await _runner(request).cancel_anywhere(job_id, owner=_owner(principal))
    else:
        principal = _authorized(request, Action.JOBS_VIEW)
        record = await _runner(request).find(job_id, owner=_owner(principal))
    root = request.scope.get("root_path", "")
    return JSONBody({**record, "stream": stream_url(root, record)})


async def jobs(request: Request) -> Response:
    """``GET /api/jobs?cursor=…&limit=…``: a page of job records, oldest first."""
    principal = _authorized(request, Action.JOBS_VIEW)
    runner = _runner(request)
    limit = query_limit(request, 1, MAX_JOBS_PAGE) or MAX_JOBS_PAGE
    cursor = request.query_params.get("cursor") or None
    if cursor is not None:
        try:
            runner.get(cursor, owner=_owner(principal))
        except UnknownJob:
            raise InvalidCursor(cursor, "no such job: not a 'next' field, or gone") from None
    page: list[Job] = runner.page(owner=_owner(principal), after=cursor, limit=limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return JSONBody(
        {
            "jobs": [record.record() for record in page],
            "next": page[-1].id if more else None,
            "available": [runner.jobs.spec(name).describe() for name in runner.jobs.names()],
            "queued": runner.queued,
            "running": runner.running,
        }
    )
