"""The middlewares, outermost first: ``observe`` (request id, one access-log line, metrics),
``errors`` (every failure in OpenAI's error shape), ``cors`` (guards.py), ``auth`` (Bearer keys
from IMAGEGATE_API_KEY), ``body_limit``, ``read_body`` and ``json_only`` (guards.py)."""

from __future__ import annotations

import asyncio
import hmac
import re
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web

from imagegate.logging import get_logger
from imagegate.server.errors import ApiError, api_error_for
from imagegate.server.files import SIGNED_FILE
from imagegate.server.guards import cors, json_only, read_body
from imagegate.server.state import OPTIONS, STATE

__all__ = [
    "MIDDLEWARES", "auth", "body_limit", "errors", "key_matches", "observe", "request_id_header",
]

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("request_id", str)  # the request's own id, for streamed answers
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id (bound for every log line of the request), access log, HTTP metrics."""
    given = request.headers.get("x-request-id", "")
    request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id  # a streamed answer sends it before the handler returns
    metrics = request.app[STATE].metrics
    started = time.monotonic()
    status = 500
    served: Mapping[str, str] = {}
    metrics.in_flight.inc()
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
            status, served = response.status, response.headers
            return response  # its x-request-id: request_id_header, when it is prepared
        finally:
            elapsed = time.monotonic() - started
            metrics.in_flight.dec()
            route = _route_name(request)
            metrics.observe_http(route, request.method, status, elapsed)
            log.info(
                "http_request",
                method=request.method,
                route=route,
                status=status,
                backend=served.get("x-imagegate-backend"),
                attempts=int(served.get("x-imagegate-attempts") or 0) or None,
                duration_s=round(elapsed, 4),
            )


async def request_id_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer carries its request id, a streamed one included
    (its headers go out before the handler returns)."""
    request_id = request.get(REQUEST_ID)
    if isinstance(request_id, str):
        response.headers["x-request-id"] = request_id


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every exception becomes an OpenAI-shaped answer; none leaks a traceback or a secret."""
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place any failure becomes an answer
        error = api_error_for(exc, request.app[STATE].redact)
        if error.status == 500:  # the stack, but never the locals (they hold the keys)
            stack = "".join(traceback.format_exception(exc))
            log.error("unhandled_error", error_type=type(exc).__name__, traceback=stack)
        return error.response()


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``Authorization: Bearer <key>`` on /v1/ (and /metrics when configured); a signed file
    link needs none."""
    options = request.app[OPTIONS]
    signed = request.match_info.route.name == SIGNED_FILE  # the signature is the credential
    protected = (request.path.startswith("/v1/") and not signed) or (
        request.path == "/metrics" and options.metrics_auth
    )
    if options.api_keys and protected:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        if not key_matches(given.strip(), options.api_keys):
            raise _unauthorized("incorrect API key provided")
    return await handler(request)


def key_matches(given: str, keys: tuple[str, ...]) -> bool:
    """Constant-time comparison against every key (no early exit on a match)."""
    given_bytes = given.encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given_bytes, key.encode("utf-8"))
    return matched


def _unauthorized(message: str) -> ApiError:
    return ApiError(
        401,
        message,
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="imagegate"'},
    )


@web.middleware
async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """413 before reading a body whose declared length is over the limit (chunked bodies are
    capped by ``client_max_size`` while being read)."""
    limit = request.app[OPTIONS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(
            413,
            f"request body of {request.content_length} bytes is over the limit of {limit} bytes",
            code="request_too_large",
            headers={"Connection": "close"},
        )
    return await handler(request)


MIDDLEWARES = (observe, errors, cors, auth, body_limit, read_body, json_only)
