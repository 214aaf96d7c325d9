"""Run an emulator (any aiohttp app) on a free loopback port, with or without TLS."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from imagegate.errors import listen_failed
from imagegate.testing.tls import LocalCA

__all__ = ["serve_app"]


@contextlib.asynccontextmanager
async def serve_app(
    app: web.Application, *, tls: LocalCA | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``app`` and yield its base URL; handlers are cancelled when a client goes away
    (so a cancelled hedge or a timed-out request is seen as cancelled on the server side)."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls.server_context() if tls else None)
    try:
        await site.start()
    except OSError as exc:  # port in use, no permission, not our address: one line
        await runner.cleanup()
        raise listen_failed(exc, host, port) from None
    bound = runner.addresses[0][1]
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://{host}:{bound}"
    finally:
        await runner.cleanup()
