"""What the soak watches besides answers: router events, breaker permits, resources, warnings.

- ``EventLog``: keeps the router's structlog events that matter (breaker transitions and
  bypasses, crashes) and counts the rest, without growing with the request count.
- ``BreakerWatch``: wraps each backend's breaker (``acquire``/``force``) and ``generate`` so that
  every provider call is matched with the permit it was admitted with ("normal" while closed,
  the half-open "trial", or "forced" when every breaker was open), through a context variable
  that each attempt task inherits from the request that started it.
- ``Gauges``: open fds, asyncio tasks, threads; RSS sampled over time.
- ``WarningTrap``: Python warnings, the event loop's exception handler and the ``asyncio``
  logger ("Unclosed ..."; the asyncio logger's other lines are counted, not printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import structlog
from imagegate import ImageService
from imagegate.logging import structlog_configured

from benchlib.common import malloc_trim, open_fds, rss_mb

KEPT_EVENTS = frozenset(
    {
        "breaker_transition",
        "breaker_bypassed",
        "backend_crashed",
        "attempt_crashed",
        "probe_crashed",
    }
)
_PERMIT: ContextVar[tuple[str, str] | None] = ContextVar("soak_permit", default=None)


@dataclass
class EventLog:
    kept: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        name = str(event.get("event"))
        self.counts[name] += 1
        if name in KEPT_EVENTS:
            self.kept.append({**event, "t": time.monotonic()})
        raise structlog.DropEvent

    @contextlib.contextmanager
    def capturing(self) -> Iterator[EventLog]:
        """Route every structlog event (info and up) here; restore the configuration after."""
        with structlog_configured(
            processors=[self], wrapper_class=structlog.make_filtering_bound_logger(20)
        ):
            yield self


@dataclass
class BreakerWatch:
    served: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def install(self, service: ImageService) -> None:
        names = [b.name for b in service.backends]
        for name in names:
            self._wrap(service, name, names)

    def _wrap(self, service: ImageService, name: str, names: list[str]) -> None:
        breaker, backend = service.breaker(name), service.backend(name)
        acquire, force, generate = breaker.acquire, breaker.force, backend.generate

        def watched_acquire() -> Any:
            before = breaker.state
            permit = acquire()
            if permit == "normal" and before != "closed":
                self.violations.append(f"{name}: normal permit while the breaker was {before}")
            if permit is not None:
                _PERMIT.set((name, permit))
            return permit

        def watched_force() -> Any:
            closed = [n for n in names if service.breaker(n).state == "closed"]
            if closed:
                self.violations.append(
                    f"{name}: forced through while {closed} had a closed breaker"
                )
            _PERMIT.set((name, "forced"))
            return force()

        async def watched_generate(request: Any, *, deadline: Any) -> Any:
            admitted = _PERMIT.get()
            permit = admitted[1] if admitted and admitted[0] == name else "none"
            if permit == "none":
                self.violations.append(f"{name}: called without an admission permit")
            self.calls[permit] += 1
            images = await generate(request, deadline=deadline)
            self.served[permit] += 1
            return images

        breaker.acquire = watched_acquire  # type: ignore[method-assign]
        breaker.force = watched_force  # type: ignore[method-assign]
        backend.generate = watched_generate  # type: ignore[method-assign]


@dataclass(frozen=True)
class Gauges:
    fds: int
    tasks: int
    threads: int

    @classmethod
    def now(cls) -> Gauges:
        return cls(open_fds(), len(asyncio.all_tasks()), threading.active_count())

    def leaked_from(self, start: Gauges) -> dict[str, int]:
        return {
            k: getattr(self, k) - getattr(start, k)
            for k in ("fds", "tasks", "threads")
            if getattr(self, k) > getattr(start, k)
        }


async def settle(start: Gauges, timeout: float = 3.0) -> Gauges:
    """Gauges once closed sockets and finished tasks are gone (give them up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        now = Gauges.now()
        if not now.leaked_from(start) or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.05)


async def sample_rss(samples: list[tuple[float, float, float]], every_s: float = 0.5) -> None:
    """Every ``every_s``: (time, RSS, RSS after ``malloc_trim(0)``). The trimmed figure is what
    the process really holds; the raw one also keeps the allocator's high-water mark."""
    while True:
        raw = rss_mb()
        malloc_trim()
        samples.append((time.monotonic(), raw, rss_mb()))
        await asyncio.sleep(every_s)


def rss_growth(
    samples: list[tuple[float, float, float]], window_s: float, skip_s: float = 0.0, column: int = 2
) -> float:
    """Median RSS of the last ``window_s`` minus the median of the first ``window_s`` after
    ``skip_s`` of warm-up (MiB); ``column`` 1 is the raw RSS, 2 the trimmed one."""
    if not samples:
        return 0.0
    t0, t1 = samples[0][0] + skip_s, samples[-1][0]
    first = sorted(s[column] for s in samples if t0 <= s[0] <= t0 + window_s)
    last = sorted(s[column] for s in samples if s[0] >= t1 - window_s)
    if not first or not last:
        return 0.0
    return last[len(last) // 2] - first[len(first) // 2]


class WarningTrap(logging.Handler):
    """Python warnings, the loop's exception handler and the ``asyncio`` logger, collected."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.asyncio_log: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.asyncio_log[text[:80]] += 1
        if "nclosed" in text:
            self.messages.append(text)

    @contextlib.contextmanager
    def trapping(self) -> Iterator[WarningTrap]:
        gc.collect()  # what earlier code left unclosed is collected now, not blamed on this run
        loop = asyncio.get_running_loop()
        old_handler = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, ctx: self.messages.append(str(ctx.get("message"))))
        aio = logging.getLogger("asyncio")
        aio.addHandler(self)
        old_propagate, aio.propagate = aio.propagate, False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield self
            finally:
                gc.collect()
                self.messages += [f"{w.category.__name__}: {w.message}" for w in caught]
                loop.set_exception_handler(old_handler)
                aio.removeHandler(self)
                aio.propagate = old_propagate

    def unclosed(self) -> list[str]:
        return [m for m in self.messages if "nclosed" in m]
