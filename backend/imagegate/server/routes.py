"""The routes of the HTTP API (the app itself and its shutdown: ``app.py``)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from imagegate.errors import AllBackendsFailed
from imagegate.logging import get_logger
from imagegate.models import ImageResult
from imagegate.routing import ImageService
from imagegate.server.errors import API_ERROR, ApiError
from imagegate.server.files import SIGNED_FILE, STORED
from imagegate.server.guards import GUARDS
from imagegate.server.metrics import CONTENT_TYPE
from imagegate.server.state import SERVICE, STATE, ServerState
from imagegate.server.storage import ensure_room, output_problem, save_failed_warning
from imagegate.server.streaming import other_answer
from imagegate.server.urls import base_url
from imagegate.server.wire import (
    IGNORED_HEADER,
    Generation,
    adjustments_header,
    ignored_header,
    images_response,
    parse_generation,
)

__all__ = ["routes", "store_images"]

log = get_logger(__name__)
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
async def create_image(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if state.closing:
        raise _shutting_down()
    service = request.app[SERVICE]
    svc = service.settings.service
    generation = parse_generation(
        await request.read(),
        backends=[b.name for b in service.backends],
        aliases=svc.aliases,
        unknown_model=svc.unknown_model,
        strict_fields=svc.strict_fields,
    )
    other = await other_answer(request, generation)  # stream: true, or an async job
    if other is not None:
        return other
    guards = request.app[GUARDS]
    base = None
    if generation.response_format == "url":  # checked before anything is paid for
        base = base_url(request, guards.public_url)
        await ensure_room(state.store, guards.min_free_mb)
    result = await _generate(state, service, generation)
    headers = {
        "x-imagegate-backend": result.backend,
        "x-imagegate-attempts": str(len(result.attempts)),
        **adjustments_header(result),
    }
    if generation.ignored:
        headers[IGNORED_HEADER] = ignored_header(generation.ignored)
    urls, warnings = None, []
    if base is not None:
        try:
            urls = await store_images(base, state, generation, result)
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
            log.info("generation_cancelled_client_gone")  # the provider call is cancelled too
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


async def store_images(
    base: str, state: ServerState, generation: Generation, result: ImageResult
) -> list[str]:
    """Save the images (in a thread: the store fsyncs) and return their signed links under
    ``base``."""

    # embedded in the file ("Adjustments", "; "-separated): the operator page's gallery shows them
    adjusted = [f"{a.short()} ({a.why})".replace(";", ",") for a in result.adjustments]

    def save_all() -> list[Path]:
        return [
            state.store.save(img, generation.request, backend=result.backend, adjustments=adjusted)
            for img in result.images
        ]

    paths = await asyncio.to_thread(save_all)
    links = []
    for path in paths:
        relpath = path.relative_to(state.store.root).as_posix()
        links.append(f"{base}/v1/files/{relpath}?{state.signer.query(relpath)}")
    return links


@routes.get("/v1/files/{day}/{name}", name=SIGNED_FILE)
async def get_file(request: web.Request) -> web.Response:
    """A stored image by its signed link; no header needed. Nothing from the URL reaches the
    disk before the path's shape, the signature and the expiry are checked (see files.py)."""
    state = request.app[STATE]
    relpath = f"{request.match_info['day']}/{request.match_info['name']}"
    expires, sig = request.query.get("expires", ""), request.query.get("sig", "")
    verdict = state.signer.check(relpath, expires, sig)
    if verdict == "forged":
        raise ApiError(403, "this link is not valid (missing, altered or not signed here)",
                       code="invalid_signature")
    if verdict == "expired":
        raise ApiError(410, "this link has expired: generate the image again for a new one",
                       code="link_expired")
    if not STORED.fullmatch(relpath):
        raise ApiError(404, "no such file", code="not_found")
    path = state.store.root / relpath
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError:
        raise ApiError(404, "the file is no longer available", code="not_found") from None
    return web.Response(
        body=data,
        content_type=_MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
        headers={"Cache-Control": f"private, max-age={state.signer.seconds_left(expires)}"},
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
    """Alive; ``instance`` names this process in its fleet (shared state, jobs' ``runner``)."""
    return web.json_response({"status": "ok", "instance": request.app[SERVICE].instance})


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
