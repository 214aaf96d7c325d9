"""In-process shared state: one instance shares with itself (the zero-setup default), and the
Redis implementation's fallback while Redis is away."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable

from imagegate.models import BackendHealth
from imagegate.state.base import BreakerNews, SharedState

__all__ = ["MemoryState", "new_instance_id"]


def new_instance_id() -> str:
    """A fleet-unique id for this process (host-independent: a random hex)."""
    return uuid.uuid4().hex[:12]


class MemoryState(SharedState):
    """Everything local: leases and slots are this process's, the hedge budget a token bucket."""

    def __init__(self, instance: str | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.instance = instance or new_instance_id()
        self._clock = clock
        self._breakers: dict[str, BreakerNews] = {}
        self._leases: dict[str, float] = {}  # key -> expiry (clock)
        self._slots: dict[str, set[str]] = {}
        self._freed: dict[str, asyncio.Event] = {}
        self._tokens = 0.0
        self._pending = 0.0

    async def publish_breaker(self, news: BreakerNews) -> None:
        if news.state == "closed":
            self._breakers.pop(news.backend, None)
        else:
            self._breakers[news.backend] = news

    async def breakers(self) -> dict[str, BreakerNews]:
        now = time.time()
        return {k: v for k, v in self._breakers.items() if v.until is None or v.until > now}

    async def lease(self, key: str, ttl_s: float) -> bool:
        now = self._clock()
        if self._leases.get(key, 0.0) > now:
            return False
        self._leases[key] = now + ttl_s
        return True

    async def release(self, key: str) -> None:
        self._leases.pop(key, None)

    async def acquire_slot(self, backend: str, limit: int) -> str | None:
        held = self._slots.setdefault(backend, set())
        if len(held) >= limit:
            return None
        token = f"{self.instance}:{uuid.uuid4().hex[:8]}"
        held.add(token)
        return token

    async def release_slot(self, backend: str, token: str) -> None:
        self._slots.get(backend, set()).discard(token)
        event = self._freed.pop(backend, None)
        if event is not None:
            event.set()

    async def slot_freed(self, backend: str, timeout: float) -> None:
        event = self._freed.setdefault(backend, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(timeout, 0.0)):
                await event.wait()

    def hedge_earn(self, ratio: float) -> None:
        self._pending += ratio

    async def hedge_spend(self, burst: float) -> bool:
        self._tokens = min(max(burst, 1.0), self._tokens + self._pending)
        self._pending = 0.0
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    async def publish_probe(self, health: BackendHealth) -> None:
        """Nothing to tell: this instance is the whole fleet."""

    def held_slots(self) -> dict[str, set[str]]:
        """Slots held now, per backend (the Redis implementation re-takes them after an outage)."""
        return {k: set(v) for k, v in self._slots.items() if v}

    def take_pending(self) -> float:
        """Hedge earnings not yet added to the budget (the Redis implementation flushes them)."""
        pending, self._pending = self._pending, 0.0
        return pending
