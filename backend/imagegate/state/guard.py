"""A circuit breaker around the state store itself: Redis trouble never hangs a request.

Every call is bounded (``timeout_s``, 250 ms by default); the first failure marks the store
down (logged once, with the reason) and every later call answers from the in-process
fallback at once, without touching the network; a background ping every ``retry_s`` brings
it back (logged once), and the owner's ``on_up`` resynchronises (re-publishes what changed
here, re-reads what changed elsewhere). Once the owner begins to close (``closing``), a
failing call is no outage: it is answered locally and not logged, and after ``aclose()``
every call is answered locally, so no connection is opened again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from imagegate.logging import get_logger

__all__ = ["StoreGuard"]

log = get_logger(__name__)
T = TypeVar("T")


class StoreGuard:
    """Bounded calls, a down/up state, and one log line per change of it."""

    def __init__(
        self,
        ping: Callable[[], Awaitable[object]],
        *,
        timeout_s: float = 0.25,
        retry_s: float = 1.0,
        on_up: Callable[[], Awaitable[None]] | None = None,
        reset: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._ping = ping
        self._reset = reset  # drops connections opened before the outage (they are dead)
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._on_up = on_up
        self.up = False
        self.closing = False  # the owner is shutting down: set first thing in its aclose()
        self.downs = 0  # how many times the store went away (for tests and metrics)
        self._recovering: asyncio.Task[None] | None = None

    async def call(self, make: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]) -> T:
        """``make()`` within the time bound while the store is up, else ``fallback()``."""
        if not self.up:
            return await fallback()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await make()
        except Exception as exc:  # noqa: BLE001 - any store failure means: answer locally
            self.down(exc)
            return await fallback()

    async def connect(self) -> bool:
        """The first contact: up if the store answers a ping in time (else recovering)."""
        try:
            async with asyncio.timeout(self.timeout_s * 4):
                await self._ping()
        except Exception as exc:  # noqa: BLE001 - an unreachable store at start is not fatal
            self.down(exc)
            return False
        self.up = True
        return True

    def down(self, exc: BaseException) -> None:
        """The store failed: answer locally until a ping succeeds again."""
        if self.closing:  # a call that met the shutdown (its connections closing): no outage
            self.up = False
            return
        if not self.up and self._recovering is not None:
            return
        self.up = False
        self.downs += 1
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        log.warning("state_store_unavailable", kind="fallback_local", error=reason,
                    retry_s=self.retry_s)
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.create_task(self._recover(), name="imagegate-state-recover")

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(self.retry_s)
            try:
                async with asyncio.timeout(self.timeout_s * 4):
                    if self._reset is not None:
                        await self._reset()
                    await self._ping()
            except Exception:  # noqa: BLE001, S112 - still away: try again later
                continue
            self.up = True
            log.info("state_store_recovered", kind="resync")
            if self._on_up is not None:
                try:
                    await self._on_up()
                except Exception as exc:  # noqa: BLE001 - a failed resync is another outage
                    self.up = False
                    log.warning("state_store_resync_failed", error=f"{type(exc).__name__}: {exc}")
                    continue
            self._recovering = None
            return

    async def aclose(self) -> None:
        self.closing, self.up = True, False
        task, self._recovering = self._recovering, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
