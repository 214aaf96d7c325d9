"""The job routes: submit (from ``POST /v1/images/generations``), record, events, cancel.

- ``Prefer: respond-async`` (RFC 7240) on the generations POST: 202 with the record's
  ``{"id", "status", "urls": {"get", "events", "cancel"}}`` (+ ``Location`` and
  ``Preference-Applied``); 503 ``jobs_full`` when every kept job still runs.
- ``GET /v1/jobs/{id}``: the record (404 once unknown or expired).
- ``GET /v1/jobs/{id}/events``: SSE, ``id:`` on every event (its number in the job),
  ``event:`` its type; ``Last-Event-ID`` (or ``?after=N``) resumes after that id; the stream
  ends after the terminal event; a resume after the terminal event answers 204, which tells
  an EventSource to stop reconnecting (WHATWG HTML §9.2.3).
- ``POST /v1/jobs/{id}/cancel``: waits (bounded) until the job is cancelled and answers its
  record; 409 ``job_finished`` when it had already succeeded or failed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from imagegate.errors import InvalidRequest
from imagegate.server.errors import API_ERROR, ApiError
from imagegate.server.guards import GUARDS
from imagegate.server.jobs import JOBS, JobRunner
from imagegate.server.jobstore import JobsFull, StoredEvent
from imagegate.server.sse import HEADERS as SSE_HEADERS
from imagegate.server.sse import comment as sse_comment
from imagegate.server.sse import event as sse_event
from imagegate.server.state import SERVICE, STATE
from imagegate.server.storage import ensure_room
from imagegate.server.urls import base_url
from imagegate.server.webhooks import check_webhook_url
from imagegate.server.wire import Generation

__all__ = ["job_routes", "prefers_async", "submit_job"]

job_routes = web.RouteTableDef()
KEEPALIVE_S = 15.0  # WHATWG: a comment "every 15 seconds or so" keeps proxies from closing
_RESPOND_ASYNC = re.compile(r"(^|[\s,;])respond-async([\s,;=]|$)", re.IGNORECASE)


def prefers_async(request: web.Request) -> bool:
    """``Prefer: respond-async`` (one of possibly several preferences, RFC 7240 §2)."""
    return any(_RESPOND_ASYNC.search(value) for value in request.headers.getall("Prefer", []))


async def submit_job(request: web.Request, generation: Generation) -> web.Response:
    if generation.stream:
        raise InvalidRequest(
            "stream: an async job streams at its urls.events; drop stream or Prefer: respond-async",
            field="stream",
        )
    service_settings = request.app[SERVICE].settings.service
    if generation.webhook_url is not None:
        check_webhook_url(generation.webhook_url, service_settings.webhook_hosts)
    state, guards = request.app[STATE], request.app[GUARDS]
    base = base_url(request, guards.public_url)  # a bad Host is refused before anything is paid
    if generation.response_format == "url":
        await ensure_room(state.store, guards.min_free_mb)
    try:
        record = await request.app[JOBS].submit(generation, base)
    except JobsFull as exc:
        raise ApiError(503, f"no room for another job: {exc}", type=API_ERROR, code="jobs_full",
                       headers={"Retry-After": "5"}) from None
    body = {"id": record.id, "object": record.object, "status": record.status,
            "created_at": record.created_at, "urls": record.urls.model_dump()}
    return web.json_response(body, status=202, headers={
        "Location": record.urls.get, "Preference-Applied": "respond-async"})


@job_routes.get("/v1/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    _, _, record = await _job(request)
    return web.json_response(record)


@job_routes.get("/v1/jobs/{job_id}/events")
async def job_events(request: web.Request) -> web.StreamResponse:
    runner, job_id, _ = await _job(request)
    events = runner.store.events(job_id, _resume_after(request))
    try:
        first = await anext(events, None)  # before the headers: a finished stream is a 204
        if first is None:
            return web.Response(status=204)
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        await _follow(response, first, events)
        await response.write_eof()
        return response
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def _follow(
    response: web.StreamResponse, event: StoredEvent, events: AsyncIterator[StoredEvent]
) -> None:
    """Write ``event`` and the ones after it up to the final one, a keep-alive meanwhile."""
    pending: asyncio.Future[StoredEvent | None] | None = None
    try:
        while True:
            await response.write(sse_event(event.type, event.data, event_id=event.id))
            if event.final:
                return
            pending = asyncio.ensure_future(anext(events, None))
            while not (await asyncio.wait([pending], timeout=KEEPALIVE_S))[0]:
                await response.write(sse_comment("keep-alive"))
            nxt, pending = pending.result(), None
            if nxt is None:
                return
            event = nxt
    finally:
        if pending is not None:  # the listener left mid-wait: stop the read before the generator
            pending.cancel()
            await asyncio.wait([pending])


@job_routes.post("/v1/jobs/{job_id}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    runner, job_id, before = await _job(request)
    if before["status"] in ("succeeded", "failed"):
        raise ApiError(409, f"the job has already {before['status']}", code="job_finished",
                       extra={"status": before["status"]})
    try:
        record = await runner.cancel(job_id)
    except TimeoutError:
        raise ApiError(504, "the job did not stop in time; it was asked to", type=API_ERROR,
                       code="cancel_pending") from None
    if record is None:
        raise _not_found()
    return web.json_response(record)


async def _job(request: web.Request) -> tuple[JobRunner, str, dict[str, Any]]:
    """The runner, the job id of the path and its record; 404 when there is none."""
    runner, job_id = request.app[JOBS], request.match_info["job_id"]
    record = await runner.store.get(job_id)
    if record is None:
        raise _not_found()
    return runner, job_id, record


def _resume_after(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    try:
        after = int(raw)
    except ValueError:
        raise InvalidRequest(f"Last-Event-ID: must be an event id (a number; got {raw[:40]!r})",
                             field="Last-Event-ID") from None
    if after < 0:
        raise InvalidRequest(f"Last-Event-ID: must be >= 0 (got {after})", field="Last-Event-ID")
    return after


def _not_found() -> ApiError:
    return ApiError(404, "no job with this id (jobs expire [service] jobs_ttl_s after they end)",
                    code="not_found")
