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
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from imagegate.config import SERVICE_SECRETS, Settings
from imagegate.config.redact import Redactor
from imagegate.errors import ConfigError
from imagegate.logging import get_logger
from imagegate.routing import ImageService
from imagegate.server.files import UrlSigner, default_state_dir, sweep, url_secret
from imagegate.server.guards import GUARDS, Guards
from imagegate.server.job_routes import job_routes
from imagegate.server.jobs import JOBS, JobRunner
from imagegate.server.jobstore import MemoryJobStore
from imagegate.server.jobstore_redis import RedisJobStore
from imagegate.server.metrics import ServerMetrics
from imagegate.server.middleware import MIDDLEWARES, request_id_header
from imagegate.server.openapi import openapi_document
from imagegate.server.routes import routes, store_images
from imagegate.server.state import OPTIONS, SERVICE, STATE, ServerOptions, ServerState
from imagegate.server.storage import stale_file_cleaner
from imagegate.server.ui import install_ui
from imagegate.server.webhooks import Webhooks
from imagegate.server.wire import ANY_BACKEND
from imagegate.store import ImageStore
from imagegate.version import __version__

__all__ = ["create_app"]

log = get_logger(__name__)

RETENTION_INTERVAL_S = 3600.0


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
    served = settings.service.output_dir
    store = ImageStore(served)
    state_dir = options.state_dir or default_state_dir(os.environ)
    signing_key = url_secret(options.url_secret, state_dir, served)
    app[OPTIONS] = options
    app[GUARDS] = guards
    app[STATE] = ServerState(
        options=options,
        metrics=ServerMetrics(lambda: app[SERVICE].health()),
        signer=UrlSigner(signing_key, settings.service.url_ttl_s),
        store=store,
        redact=Redactor.for_settings(
            settings.secrets, extra=(*options.api_keys, signing_key.decode())
        ),
        openapi=openapi_document(version=__version__, server_url=guards.public_url),
    )
    app.on_startup.append(stale_file_cleaner(store))
    app.cleanup_ctx.append(_service_context(settings))
    app.cleanup_ctx.append(_jobs_context(settings))
    app.on_response_prepare.append(request_id_header)
    app.on_shutdown.append(_begin_shutdown)
    app.add_routes(routes)
    app.add_routes(job_routes)
    install_ui(app, settings)  # the operator page (after the service and jobs contexts)
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
        async with ImageService(settings) as service, _retention(settings):
            app[SERVICE] = service
            log.info("service_started", backends=[b.name for b in service.backends])
            yield
            state = app[STATE]
            if state.abort_timer is not None:
                state.abort_timer.cancel()
        log.info("service_stopped")

    return context


@contextlib.asynccontextmanager
async def _retention(settings: Settings) -> AsyncIterator[None]:
    """``[service] retention_days``: sweep old images at start, then every hour."""
    days = settings.service.retention_days
    if days is None:
        yield
        return
    root, max_age_s = settings.service.output_dir, days * 86400

    async def loop() -> None:
        while True:
            try:
                deleted = await asyncio.to_thread(sweep, root, now=time.time(), max_age_s=max_age_s)
            except OSError as exc:  # e.g. a file we may not delete: try again next time
                log.warning("images_not_deleted", error=exc.strerror or str(exc))
            else:
                if deleted:
                    log.info("images_deleted", count=deleted, older_than_days=days)
            await asyncio.sleep(RETENTION_INTERVAL_S)

    task = asyncio.create_task(loop(), name="imagegate-retention")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _jobs_context(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """Async jobs: the store (``jobs_max``, ``jobs_ttl_s``: in memory, or in Redis shared by
    the fleet with ``state_url``), the runner, webhooks."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        svc = settings.service
        store: MemoryJobStore | RedisJobStore
        if svc.state_url:
            store = RedisJobStore(
                svc.state_url, instance=app[SERVICE].instance, max_jobs=svc.jobs_max,
                ttl_s=svc.jobs_ttl_s, lease_s=svc.jobs_lease_s, timeout_s=svc.state_timeout_s,
                password=settings.secret(SERVICE_SECRETS, "state_password"),
                ca_file=str(svc.state_ca_bundle) if svc.state_ca_bundle else os.environ.get("SSL_CERT_FILE"),
            )
        else:
            store = MemoryJobStore(max_jobs=svc.jobs_max, ttl_s=svc.jobs_ttl_s)
        secret = settings.secret(SERVICE_SECRETS, "webhook_secret")
        session = aiohttp.ClientSession() if svc.webhook_hosts and secret else None
        webhooks = (
            Webhooks(session, secret, backoff_s=svc.webhook_backoff_s)
            if session is not None and secret else None
        )
        app[JOBS] = JobRunner(store, app[SERVICE], app[STATE], store_images, webhooks)
        await app[JOBS].start()
        yield
        await app[JOBS].aclose()
        await store.aclose()
        if session is not None:
            await session.close()

    return context


async def _begin_shutdown(app: web.Application) -> None:
    state = app[STATE]
    state.closing = True
    grace = state.options.shutdown_grace_s
    log.info("server_draining", in_flight=len(state.generations), grace_s=grace)
    state.abort_timer = asyncio.get_running_loop().call_later(grace, state.cancel_generations)
