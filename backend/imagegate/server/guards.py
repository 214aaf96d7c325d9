"""What the HTTP API asks of a client before it spends anything: browsers from the allowed
origins only, a body that arrives in time and decodes, JSON when no key guards the API.

- ``cors``: a browser request carries ``Origin``. An origin in ``[service] cors_origins``
  (or ``"*"`` there) gets the CORS answer headers, and its preflight (``OPTIONS`` with
  ``Access-Control-Request-Method``) a ``204``; any other foreign origin gets ``403`` on every
  route but the health checks, so a page elsewhere can neither read answers nor make the
  server spend (a form or ``text/plain`` POST needs no preflight). The server's own origin
  (``public_url``, or the request's own scheme and Host) is not foreign. Empty by default: no
  cross-origin browser calls.
- ``read_body``: the body is read here, within ``[service] body_timeout_s`` (else ``408``,
  connection closed), and one that does not decode (a bad ``Content-Encoding``) is ``400``:
  the handlers then read it from memory.
- ``json_only``: with no API key configured, a ``POST`` must say ``Content-Type:
  application/json``; a browser cannot send that cross-origin without a preflight, which
  ``cors`` answers only for allowed origins (``415`` otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from imagegate.config import ServiceSettings
from imagegate.server.errors import ApiError
from imagegate.server.limits import ConnectionLimits
from imagegate.server.urls import own_origin

__all__ = ["GUARDS", "MIDDLEWARES", "Guards", "cors", "json_only", "read_body"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OPEN_PATHS = ("/healthz", "/readyz")  # load balancers and browsers' status pages alike
_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-Id"
_EXPOSE_HEADERS = "x-request-id, x-imagegate-backend, x-imagegate-attempts, x-imagegate-warning"


@dataclass(frozen=True)
class Guards:
    """The ``[service]`` keys (and server options) the HTTP API's defences read."""

    public_url: str | None = None
    cors_origins: tuple[str, ...] = ()
    body_timeout_s: float = 60.0
    min_free_mb: float = 100.0
    require_json: bool = True  # no API key configured
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)

    @classmethod
    def from_settings(cls, service: ServiceSettings, *, public_url: str | None, keyed: bool) -> Guards:
        """``public_url`` from the environment wins over the ``[service]`` key."""
        return cls(
            public_url=public_url or service.public_url,
            cors_origins=service.cors_origins,
            body_timeout_s=service.body_timeout_s,
            min_free_mb=service.min_free_mb,
            require_json=not keyed,
            limits=ConnectionLimits(
                service.header_timeout_s, service.keepalive_timeout_s, service.max_connections
            ),
        )

    def allows(self, origin: str) -> bool:
        return "*" in self.cors_origins or origin in self.cors_origins


GUARDS = web.AppKey("guards", Guards)


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for the allowed origins; 403 for other foreign browser origins."""
    origin = request.headers.get("Origin")
    if not origin:
        return await handler(request)
    guards = request.app[GUARDS]
    allowed = guards.allows(origin)
    if not allowed and origin != own_origin(request, guards.public_url):
        if request.path in _OPEN_PATHS:
            return await handler(request)
        raise ApiError(403, f"origin {origin!r} is not in [service] cors_origins", code="origin_not_allowed")
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response: web.StreamResponse = web.Response(status=204)
        response.headers.update({
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": _ALLOW_HEADERS,
            "Access-Control-Max-Age": "600",
        })
    else:
        response = await handler(request)
    if allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = _EXPOSE_HEADERS
        response.headers["Vary"] = "Origin"
    return response


@web.middleware
async def read_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read the body within ``body_timeout_s``; 400 when it does not decode."""
    if request.body_exists:
        timeout = request.app[GUARDS].body_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await request.read()
        except TimeoutError:
            raise ApiError(
                408, f"the request body did not arrive within {timeout:g} s",
                code="request_timeout", headers={"Connection": "close"},
            ) from None
        except (HttpProcessingError, web.RequestPayloadError):
            encoding = request.headers.get("Content-Encoding", "none")
            raise ApiError(
                400, f"the request body could not be decoded (Content-Encoding: {encoding[:32]})",
                code="bad_content_encoding", headers={"Connection": "close"},
            ) from None
    return await handler(request)


@web.middleware
async def json_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With no API key, a POST with a body must be ``application/json`` (so a browser must
    preflight it). A POST with no body (a job's cancel) needs none: a browser page of another
    origin sends ``Origin`` with it, which ``cors`` judges."""
    has_body = request.body_exists
    if (
        request.method == "POST"
        and has_body
        and request.app[GUARDS].require_json
        and request.content_type != "application/json"
    ):
        raise ApiError(
            415,
            "Content-Type must be application/json (required while no API key is configured)",
            code="unsupported_media_type",
        )
    return await handler(request)


MIDDLEWARES = (cors, json_only, read_body)
