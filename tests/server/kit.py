"""Helpers for the HTTP API tests: run the real app on loopback, settings for the emulator."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from imagegate.config import Settings
from imagegate.server import ServerOptions, create_app, running

from tests.conftest import make_settings


def a1111_settings(
    url: str,
    tmp_path: Path,
    *,
    backend: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    **service: Any,
) -> Settings:
    """One A1111 backend at ``url`` (concurrency 64, so the emulator is the only queue)."""
    table = {"name": "local", "kind": "a1111", "base_url": url, "max_concurrency": 64}
    service = {"output_dir": tmp_path / "out", "probe_interval_s": 60.0, **service}
    return make_settings(
        [{**table, **(backend or {})}], service=service, environ=environ, tmp_path=tmp_path
    )


def closed_port_url() -> str:
    """An http:// URL on which nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def gateway(
    settings: Settings, options: ServerOptions | None = None
) -> AsyncIterator[tuple[str, web.Application]]:
    """The imagegate app served on 127.0.0.1: yields (base URL, app)."""
    app = create_app(settings, options or ServerOptions())
    async with running(app) as url:
        yield url, app
