"""The HTTP API: OpenAI-compatible ``POST /v1/images/generations`` plus health and metrics.

    imagegate serve --host 127.0.0.1 --port 8000 --config imagegate.toml

``create_app(settings, options)`` builds the aiohttp app: one ``cleanup_ctx`` owns the
ImageService (with it the shared ClientSession and the probe task); the middlewares are in
``middleware.py``, the routes in ``routes.py``, what the app holds in ``state.py``, and
``run.py`` serves it.

Shutdown (SIGINT/SIGTERM): the listener closes, ``/readyz`` and new generations answer 503,
generations in flight get ``shutdown_grace_s`` to finish, the rest are cancelled and answered
503; then the service (sessions, probe task, Space clients) is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from imagegate.config import Settings
from imagegate.config.redact import Redactor
from imagegate.errors import ConfigError
from imagegate.routing import ImageService
from imagegate.server.guards import GUARDS, Guards
from imagegate.server.metrics import ServerMetrics
from imagegate.server.middleware import MIDDLEWARES
from imagegate.server.openapi import openapi_document
from imagegate.server.routes import routes
from imagegate.server.state import OPTIONS, SERVICE, STATE, FileIndex, ServerOptions, ServerState
from imagegate.server.storage import stale_file_cleaner
from imagegate.server.wire import ANY_BACKEND
from imagegate.store import ImageStore
from imagegate.version import __version__

__all__ = ["create_app"]

log = structlog.get_logger()


def create_app(settings: Settings, options: ServerOptions | None = None) -> web.Application:
    """The aiohttp application; the ImageService starts and stops with it."""
    options = options or ServerOptions()
    _check_aliases(settings)
    app = web.Application(
        middlewares=MIDDLEWARES, client_max_size=options.max_body_bytes
    )
    guards = Guards.from_settings(
        settings.service, public_url=options.public_url, keyed=bool(options.api_keys)
    )
    store = ImageStore(settings.service.output_dir)
    app[OPTIONS] = options
    app[GUARDS] = guards
    app[STATE] = ServerState(
        options=options,
        metrics=ServerMetrics(lambda: app[SERVICE].health()),
        files=FileIndex(options.max_files),
        store=store,
        redact=Redactor.for_settings(settings.secrets, extra=options.api_keys),
        openapi=openapi_document(version=__version__, server_url=guards.public_url),
    )
    app.on_startup.append(stale_file_cleaner(store))
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
