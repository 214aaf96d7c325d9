"""Running the app: ``imagegate serve`` (signals, graceful drain) and ``running()`` for tests
and embedding."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

from aiohttp import web
from dotenv import dotenv_values

from imagegate.backends.registry import load_settings
from imagegate.errors import listen_failed
from imagegate.logging import get_logger
from imagegate.server.app import create_app
from imagegate.server.guards import GUARDS
from imagegate.server.limits import GuardedRunner
from imagegate.server.state import OPTIONS, STATE, ServerOptions

__all__ = ["run_cli", "running", "serve"]

log = get_logger(__name__)


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


def run_cli(args: argparse.Namespace) -> int:
    """``imagegate serve`` (logging is set up by the command: info, one access line per
    request). A port that cannot be listened on is a ConfigError naming it (exit 2)."""
    settings = load_settings(args.config)
    options = ServerOptions.from_environ(_environ_with_dotenv())
    app = create_app(settings, options)
    asyncio.run(serve(app, host=args.host, port=args.port))
    return 0


def _environ_with_dotenv() -> dict[str, str]:
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
    runner = GuardedRunner(  # connection limits: limits.py; handler_cancellation: a client
        # that goes away cancels its work
        app, limits=app[GUARDS].limits, access_log=None, handle_signals=False,
        shutdown_timeout=options.shutdown_grace_s + 2.0, handler_cancellation=True,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:  # port in use, no permission, not our address
            raise listen_failed(exc, host, port) from None
        bound = runner.addresses[0]
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        await runner.cleanup()
