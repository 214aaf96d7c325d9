"""The HTTP API: OpenAI-compatible ``POST /v1/images/generations`` plus health and metrics.

    imagegate serve --host 127.0.0.1 --port 8000 --config imagegate.toml

``create_app(settings, options)`` builds the aiohttp app: one ``cleanup_ctx`` owns the
ImageService (with it the shared ClientSession and the probe task); middlewares, outermost
first: ``observe`` (request id, one access-log line, metrics), ``errors`` (every failure in
OpenAI's error shape), ``auth`` (Bearer keys from IMAGEGATE_API_KEY), ``body_limit``.

Shutdown (SIGINT/SIGTERM): the listener closes, ``/readyz`` and new generations answer 503,
generations in flight get ``shutdown_grace_s`` to finish, the rest are cancelled and answered
503; then the service (sessions, probe task, Space clients) is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import re
import secrets
import signal
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from imagegate.config import Settings
from imagegate.errors import ConfigError
from imagegate.metrics import ServerMetrics
from imagegate.router import ImageService
from imagegate.server_api import ANY_BACKEND
from imagegate.server_errors import ApiError, Redactor, api_error_for
from imagegate.store import ImageStore

__all__ = [
    "OPTIONS",
    "SERVICE",
    "STATE",
    "ServerOptions",
    "ServerState",
    "create_app",
    "run_cli",
    "serve",
]

log = structlog.get_logger()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(frozen=True)
class ServerOptions:
    """How the HTTP server behaves (the router's behaviour lives in ``[service]``)."""

    api_keys: tuple[str, ...] = ()
    metrics_auth: bool = False
    max_body_bytes: int = 1024 * 1024
    shutdown_grace_s: float = 30.0
    public_url: str | None = None
    max_files: int = 10_000

    def __repr__(self) -> str:  # never show the keys
        return f"ServerOptions(api_keys=<{len(self.api_keys)}>, metrics_auth={self.metrics_auth})"

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> ServerOptions:
        """IMAGEGATE_API_KEY (comma-separated), IMAGEGATE_METRICS_AUTH=1,
        IMAGEGATE_MAX_BODY_BYTES, IMAGEGATE_SHUTDOWN_GRACE_S, IMAGEGATE_PUBLIC_URL."""
        keys = tuple(k.strip() for k in env.get("IMAGEGATE_API_KEY", "").split(",") if k.strip())
        return cls(
            api_keys=keys,
            metrics_auth=env.get("IMAGEGATE_METRICS_AUTH", "").strip().lower()
            in ("1", "true", "yes"),
            max_body_bytes=int(_number(env, "IMAGEGATE_MAX_BODY_BYTES", 1024 * 1024, lo=1024)),
            shutdown_grace_s=_number(env, "IMAGEGATE_SHUTDOWN_GRACE_S", 30.0, lo=0),
            public_url=(env.get("IMAGEGATE_PUBLIC_URL") or "").rstrip("/") or None,
        )


def _number(env: Mapping[str, str], name: str, default: float, *, lo: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}: must be a number (got {raw!r})") from None
    if value < lo:
        raise ConfigError(f"environment variable {name}: must be >= {lo:g} (got {raw!r})")
    return value


class FileIndex:
    """Random, unguessable id -> path of a file this server wrote (bounded, oldest dropped)."""

    def __init__(self, capacity: int) -> None:
        self._paths: OrderedDict[str, Path] = OrderedDict()
        self._capacity = capacity

    def add(self, path: Path) -> str:
        file_id = secrets.token_urlsafe(24)
        self._paths[file_id] = path
        while len(self._paths) > self._capacity:
            self._paths.popitem(last=False)
        return file_id

    def get(self, file_id: str) -> Path | None:
        return self._paths.get(file_id)


@dataclass
class ServerState:
    """What the app holds between requests (one per app, never a module global)."""

    options: ServerOptions
    metrics: ServerMetrics
    files: FileIndex
    store: ImageStore
    redact: Redactor
    openapi: dict[str, Any]
    closing: bool = False
    generations: set[asyncio.Task[Any]] = field(default_factory=set)
    abort_timer: asyncio.TimerHandle | None = None

    def cancel_generations(self) -> None:
        """Cancel every generation still running (their handlers answer 503)."""
        for task in list(self.generations):
            task.cancel()


SERVICE = web.AppKey("service", ImageService)
OPTIONS = web.AppKey("options", ServerOptions)
STATE = web.AppKey("state", ServerState)


def create_app(settings: Settings, options: ServerOptions | None = None) -> web.Application:
    """The aiohttp application; the ImageService starts and stops with it."""
    from imagegate import __version__
    from imagegate.openapi import openapi_document
    from imagegate.server_routes import routes

    options = options or ServerOptions()
    _check_aliases(settings)
    app = web.Application(
        middlewares=[observe, errors, auth, body_limit], client_max_size=options.max_body_bytes
    )
    secret_values = [v for found in settings.secrets.values() for v in found.values()]
    app[OPTIONS] = options
    app[STATE] = ServerState(
        options=options,
        metrics=ServerMetrics(lambda: app[SERVICE].health()),
        files=FileIndex(options.max_files),
        store=ImageStore(settings.service.output_dir),
        redact=Redactor([*secret_values, *options.api_keys]),
        openapi=openapi_document(version=__version__, server_url=options.public_url),
    )
    app.cleanup_ctx.append(_service_context(settings))
    app.on_shutdown.append(_begin_shutdown)
    app.add_routes(routes)
    return app


def _check_aliases(settings: Settings) -> None:
    names = {b.name for b in settings.backends}
    for alias, target in settings.service.aliases.items():
        if target != ANY_BACKEND and target not in names:
            raise ConfigError(
                f"{settings.source}: [service] key 'aliases': {alias!r} points at {target!r}, "
                f'which is not a configured backend (configured: {settings.names()}; "*" means any)'
            )


def _service_context(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with ImageService(settings) as service:
            app[SERVICE] = service
            log.info("service_started", backends=[b.name for b in service.backends])
            yield
            state = app[STATE]
            if state.abort_timer is not None:
                state.abort_timer.cancel()
        log.info("service_stopped")

    return context


async def _begin_shutdown(app: web.Application) -> None:
    state = app[STATE]
    state.closing = True
    grace = state.options.shutdown_grace_s
    log.info("server_draining", in_flight=len(state.generations), grace_s=grace)
    state.abort_timer = asyncio.get_running_loop().call_later(grace, state.cancel_generations)


# --- middlewares ------------------------------------------------------------------------------


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id (bound for every log line of the request), access log, HTTP metrics."""
    given = request.headers.get("x-request-id", "")
    request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    metrics = request.app[STATE].metrics
    started = time.monotonic()
    status = 500
    served: Mapping[str, str] = {}
    metrics.in_flight.inc()
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
            status, served = response.status, response.headers
            response.headers["x-request-id"] = request_id
            return response
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
    """``Authorization: Bearer <key>`` on /v1/ (and /metrics when configured)."""
    options = request.app[OPTIONS]
    protected = request.path.startswith("/v1/") or (
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


# --- running ----------------------------------------------------------------------------------


async def serve(
    app: web.Application, *, host: str, port: int, stop: asyncio.Event | None = None
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM (or ``stop``), then shut down gracefully.

    A second signal cancels the generations still running at once.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:  # kept through the drain: a second signal cuts it short
        loop.add_signal_handler(sig, _on_signal, app, stop)
    try:
        async with running(app, host=host, port=port) as url:
            log.info("server_listening", url=url)
            await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("server_stopped")


def _on_signal(app: web.Application, stop: asyncio.Event) -> None:
    if stop.is_set():
        log.warning("server_cancelling_generations")
        app[STATE].cancel_generations()
        return
    log.info("server_stopping")
    stop.set()


def run_cli(args: Any) -> int:
    """``imagegate serve``: logs at info (one access line per request) unless told otherwise."""
    from imagegate.config import load_settings
    from imagegate.logging import configure_logging

    if getattr(args, "log_level", "warning") == "warning":  # the CLI default
        configure_logging(level="info")
    settings = load_settings(args.config)
    options = ServerOptions.from_environ(_environ_with_dotenv())
    app = create_app(settings, options)
    asyncio.run(serve(app, host=args.host, port=args.port))
    return 0


def _environ_with_dotenv() -> dict[str, str]:
    from dotenv import dotenv_values

    env = dict(os.environ)
    for key, value in dotenv_values(".env").items():
        if value is not None:
            env.setdefault(key, value)
    return env


@contextlib.asynccontextmanager
async def running(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``app`` in this loop (tests, embedding) and yield its base URL; on exit, the same
    graceful shutdown as ``serve``."""
    options = app[OPTIONS]
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=options.shutdown_grace_s + 2.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        await runner.cleanup()
