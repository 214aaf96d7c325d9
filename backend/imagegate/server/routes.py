"""The routes of the HTTP API (the app itself and its shutdown: ``app.py``)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from imagegate.errors import AllBackendsFailed
from imagegate.models import ImageResult
from imagegate.routing import ImageService
from imagegate.server.errors import API_ERROR, ApiError
from imagegate.server.guards import GUARDS
from imagegate.server.metrics import CONTENT_TYPE
from imagegate.server.state import SERVICE, STATE, ServerState
from imagegate.server.storage import ensure_room, output_problem, save_failed_warning
from imagegate.server.urls import base_url
from imagegate.server.wire import Generation, images_response, parse_generation

__all__ = ["routes"]

log = structlog.get_logger()
routes = web.RouteTableDef()

_MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}
_USABLE_STATES = ("closed", "half_open")


def _shutting_down() -> ApiError:
    return ApiError(
        503,
        "the server is shutting down; retry on another instance",
        type=API_ERROR,
        code="shutting_down",
        headers={"Connection": "close", "Retry-After": "1"},
    )


@routes.post("/v1/images/generations")
async def create_image(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.closing:
        raise _shutting_down()
    service = request.app[SERVICE]
    generation = parse_generation(
        await request.read(),
        backends=[b.name for b in service.backends],
        aliases=service.settings.service.aliases,
    )
    guards = request.app[GUARDS]
    base = None
    if generation.response_format == "url":  # checked before anything is paid for
        base = base_url(request, guards.public_url)
        await ensure_room(state.store, guards.min_free_mb)
    result = await _generate(state, service, generation)
    headers = {
        "x-imagegate-backend": result.backend,
        "x-imagegate-attempts": str(len(result.attempts)),
    }
    urls, warnings = None, []
    if base is not None:
        try:
            urls = await _store(base, state, generation, result)
        except OSError as exc:  # paid for: never lost (storage.py)
            warnings.append(save_failed_warning(exc))
            headers["x-imagegate-warning"] = warnings[0]
    body = images_response(result, urls=urls)
    if warnings:
        body["warnings"] = warnings
    return web.Response(text=json.dumps(body), content_type="application/json", headers=headers)


async def _generate(
    state: ServerState, service: ImageService, generation: Generation
) -> ImageResult:
    """Run one generation as its own task, so that shutdown can cancel it and answer 503."""
    started = time.monotonic()
    task = asyncio.create_task(service.generate(generation.request, backend=generation.backend))
    state.generations.add(task)
    try:
        result = await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the handler itself is being cancelled (client gone, hard shutdown)
        state.metrics.observe_generation(None, "cancelled", time.monotonic() - started, [])
        log.warning("generation_cancelled_for_shutdown")
        raise _shutting_down() from None
    except AllBackendsFailed as exc:
        outcome = "deadline_exceeded" if exc.deadline_exceeded else "all_backends_failed"
        state.metrics.observe_generation(None, outcome, time.monotonic() - started, exc.attempts)
        raise
    finally:
        state.generations.discard(task)
    state.metrics.observe_generation(result.backend, "ok", result.elapsed_s, result.attempts)
    return result


async def _store(
    base: str, state: ServerState, generation: Generation, result: ImageResult
) -> list[str]:
    """Save the images (in a thread: the store fsyncs) and return their URLs under ``base``."""

    def save_all() -> list[Path]:
        return [
            state.store.save(img, generation.request, backend=result.backend)
            for img in result.images
        ]

    paths = await asyncio.to_thread(save_all)
    return [f"{base}/v1/files/{state.files.add(path)}" for path in paths]


@routes.get("/v1/files/{file_id}")
async def get_file(request: web.Request) -> web.Response:
    """Only ids this server handed out map to a path; nothing from the URL reaches the disk."""
    path = request.app[STATE].files.get(request.match_info["file_id"])
    if path is None:
        raise ApiError(
            404, "no file with this id (ids expire when the server restarts)", code="not_found"
        )
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError:
        raise ApiError(404, "the file is no longer available", code="not_found") from None
    return web.Response(
        body=data,
        content_type=_MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
        headers={"Cache-Control": "private, max-age=86400"},
    )


@routes.get("/v1/backends")
async def list_backends(request: web.Request) -> web.Response:
    table = request.app[SERVICE].health()
    return web.json_response(
        {
            "object": "list",
            "ready": any(_usable(h) for h in table),
            "data": [h.model_dump(mode="json") for h in table],
        }
    )


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    names = [b.name for b in service.backends] + list(service.settings.service.aliases)
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": "imagegate"} for n in names
            ],
        }
    )


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    if request.app[STATE].closing:
        return web.json_response({"status": "shutting_down", "usable_backends": 0}, status=503)
    usable = sum(1 for h in request.app[SERVICE].health() if _usable(h))
    problem = await output_problem(request.app[STATE].store, request.app[GUARDS].min_free_mb)
    body: dict[str, Any] = {"status": "ready", "usable_backends": usable}
    if not usable:
        body["status"] = "no_usable_backend"
    elif problem is not None:  # cannot serve `url` answers (storage.py)
        body.update(status="output_unavailable", output=problem)
    return web.json_response(body, status=200 if body["status"] == "ready" else 503)


def _usable(health: Any) -> bool:
    """Breaker closed or half-open, and the last probe (if any) did not fail."""
    return health.state in _USABLE_STATES and health.ok is not False


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].openapi)
