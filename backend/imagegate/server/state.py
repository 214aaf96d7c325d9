"""What the HTTP app holds between requests: its options, its state, and the typed keys.

One of each per app (never a module global); handlers reach them through ``request.app[KEY]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from imagegate.config.redact import Redactor
from imagegate.errors import ConfigError
from imagegate.routing import ImageService
from imagegate.server.files import SECRET_ENV, UrlSigner, default_state_dir
from imagegate.server.metrics import ServerMetrics
from imagegate.store import ImageStore

__all__ = ["OPTIONS", "SERVICE", "STATE", "ServerOptions", "ServerState"]


@dataclass(frozen=True)
class ServerOptions:
    """How the HTTP server behaves (the router's behaviour lives in ``[service]``)."""

    api_keys: tuple[str, ...] = ()
    metrics_auth: bool = False
    max_body_bytes: int = 1024 * 1024
    shutdown_grace_s: float = 30.0
    public_url: str | None = None
    url_secret: str | None = None  # IMAGEGATE_URL_SECRET; else the state file's
    state_dir: Path | None = None  # where that file lives (default: $XDG_STATE_HOME/imagegate)

    def __repr__(self) -> str:  # never show the keys
        return f"ServerOptions(api_keys=<{len(self.api_keys)}>, metrics_auth={self.metrics_auth})"

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> ServerOptions:
        """IMAGEGATE_API_KEY (comma-separated), IMAGEGATE_METRICS_AUTH=1,
        IMAGEGATE_MAX_BODY_BYTES, IMAGEGATE_SHUTDOWN_GRACE_S, IMAGEGATE_PUBLIC_URL,
        IMAGEGATE_URL_SECRET, XDG_STATE_HOME."""
        keys = tuple(k.strip() for k in env.get("IMAGEGATE_API_KEY", "").split(",") if k.strip())
        return cls(
            url_secret=env.get(SECRET_ENV) or None,
            state_dir=default_state_dir(env),
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


@dataclass
class ServerState:
    """What the app holds between requests (one per app, never a module global)."""

    options: ServerOptions
    metrics: ServerMetrics
    signer: UrlSigner
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
