"""ImageService: the one async entry point; picks backends, fails over, keeps the trail."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import structlog

from imagegate.backends import create_backend
from imagegate.backends.base import Deadline, ImageBackend, timing_trace_config
from imagegate.config import Settings, load_settings
from imagegate.errors import AllBackendsFailed, BackendError, ConfigError, GenerationTimeout
from imagegate.models import Attempt, BackendHealth, ImageRequest, ImageResult

__all__ = ["ImageService"]

log = structlog.get_logger()


class ImageService:
    """Generate images through the configured backends, failing over between them.

    Use as an async context manager: ``async with ImageService.from_config() as svc:``.
    One service per process: it owns the shared HTTP session and every backend.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._backends: dict[str, ImageBackend] = {}

    @classmethod
    def from_config(cls, path: str | Path | None = None) -> ImageService:
        """Load settings from ``path`` (or ``$IMAGEGATE_CONFIG``, or the environment alone)."""
        return cls(load_settings(path))

    async def __aenter__(self) -> ImageService:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the shared HTTP session and build every backend."""
        if self._session is not None:
            return
        if not self.settings.backends:
            raise ConfigError(f"{self.settings.source}: no backend is configured")
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.settings.service.deadline_s, sock_connect=30),
            trace_configs=[timing_trace_config()],
        )
        for cfg in self.settings.backends:
            secrets = self.settings.secrets.get(cfg.name, {})
            self._backends[cfg.name] = create_backend(cfg, secrets=secrets, session=self._session)

    async def aclose(self) -> None:
        """Close every backend and the shared session."""
        backends, self._backends = self._backends, {}
        for backend in backends.values():
            try:
                await backend.aclose()
            except Exception as exc:  # closing must not hide the others
                log.warning("backend_close_failed", backend=backend.name, error=str(exc))
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def backends(self) -> list[ImageBackend]:
        return list(self._backends.values())

    def backend(self, name: str) -> ImageBackend:
        try:
            return self._backends[name]
        except KeyError:
            raise ConfigError(f"no backend named {name!r} (configured: {self.settings.names()})") from None

    async def generate(
        self,
        request: ImageRequest,
        *,
        backend: str | None = None,
        deadline_s: float | None = None,
    ) -> ImageResult:
        """Generate ``request``: try backends in order until one returns images."""
        if self._session is None:
            raise RuntimeError("ImageService is not started: use 'async with ImageService...'")
        started = time.monotonic()
        deadline = Deadline.after(deadline_s or self.settings.service.deadline_s)
        candidates = [self.backend(backend)] if backend else self.backends
        attempts: list[Attempt] = []
        for candidate in candidates[: self.settings.service.max_attempts]:
            if deadline.expired:
                break
            attempt_start = time.monotonic()
            try:
                images = await self._attempt(candidate, request, deadline)
            except BackendError as exc:
                attempts.append(_failed(candidate.name, exc, time.monotonic() - attempt_start))
                log.warning(
                    "backend_failed",
                    backend=candidate.name,
                    error_kind=exc.kind,
                    error=str(exc),
                    elapsed_s=round(time.monotonic() - attempt_start, 4),
                )
                continue
            attempts.append(Attempt(backend=candidate.name, outcome="ok", elapsed_s=time.monotonic() - attempt_start))
            elapsed = time.monotonic() - started
            log.info("image_generated", backend=candidate.name, attempts=len(attempts), elapsed_s=round(elapsed, 4))
            return ImageResult(images=images, backend=candidate.name, attempts=attempts, elapsed_s=elapsed)
        raise AllBackendsFailed(
            "no backend produced an image", attempts=attempts, deadline_exceeded=deadline.expired
        )

    async def _attempt(self, backend: ImageBackend, request: ImageRequest, deadline: Deadline) -> list[Any]:
        try:
            async with asyncio.timeout(deadline.remaining() + 0.05):
                return await backend.generate(request, deadline=deadline)
        except TimeoutError as exc:
            if isinstance(exc, BackendError):
                raise
            raise GenerationTimeout("the request deadline ran out", backend=backend.name) from exc

    def health(self) -> list[BackendHealth]:
        """What is known of every backend now, without any network call."""
        return [BackendHealth(name=b.name, kind=b.kind) for b in self.backends]

    async def probe_all(self, *, timeout: float | None = None) -> list[BackendHealth]:
        """Probe every backend once, concurrently."""
        t = timeout or self.settings.service.probe_timeout_s
        return list(await asyncio.gather(*(b.probe(timeout=t) for b in self.backends)))


def _failed(backend: str, exc: BackendError, elapsed: float) -> Attempt:
    return Attempt(backend=backend, outcome=exc.kind, elapsed_s=elapsed, error=str(exc), status=exc.status)
