"""Background health probes: one task per backend, each on a jittered interval, faster while
that backend's breaker is not closed."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence

from imagegate.logging import get_logger

__all__ = ["HealthProber"]

log = get_logger(__name__)


class HealthProber:
    """Background probes: one task per backend name, each on a jittered interval.

    ``probe(name)`` does the work (and must not raise for a backend failure); ``urgent(name)``
    says the backend's breaker is not closed, which shortens its interval by ``fast_factor``.
    ``nudge(name)`` wakes the loop at once to recompute its delay (called when a breaker opens).
    """

    def __init__(
        self,
        names: Sequence[str],
        probe: Callable[[str], Awaitable[object]],
        *,
        interval_s: float,
        urgent: Callable[[str], bool] = lambda name: False,
        rng: random.Random | None = None,
        jitter: float = 0.2,
        fast_factor: float = 0.25,
    ) -> None:
        self._names = list(names)
        self._probe = probe
        self._interval = interval_s
        self._urgent = urgent
        self._rng = rng or random.Random()
        self._jitter = jitter
        self._fast = fast_factor
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def next_delay(self, name: str) -> float:
        base = self._interval * (self._fast if self._urgent(name) else 1.0)
        return base * self._rng.uniform(1 - self._jitter, 1 + self._jitter)

    def start(self) -> None:
        for name in self._names:
            if name not in self._tasks:
                self._wake[name] = asyncio.Event()
                self._tasks[name] = asyncio.create_task(self._loop(name), name=f"imagegate-probe-{name}")

    def nudge(self, name: str) -> None:
        event = self._wake.get(name)
        if event is not None:
            event.set()

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self, name: str) -> None:
        wake = self._wake[name]
        while True:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.next_delay(name)):
                    await wake.wait()
                continue  # woken early: recompute the delay from now
            try:
                await self._probe(name)
            except Exception as exc:  # noqa: BLE001 - a broken probe must not end the loop
                log.warning("probe_crashed", backend=name, kind=type(exc).__name__, error=str(exc))
