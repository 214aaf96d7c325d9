"""Routing policy, free of I/O: per-backend state, candidate order, admission, hedge budget.

``BackendState`` is what the service remembers of one backend (breaker, in-flight count,
latency); ``order()`` sorts candidates by the ``[service] order`` policy; ``Admission`` walks
the candidates for one request, skipping open breakers and saturated backends, and never
skips them all; once every candidate is tried or skipped, ``Admission.reopening()`` says
whether a skipped backend's breaker lets a call through before the deadline (and so is worth
waiting for); ``HedgeBudget`` caps hedges at a share of requests.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from imagegate.models import BackendHealth, SkipKind
from imagegate.routing.breaker import CircuitBreaker, Permit

__all__ = [
    "Admission",
    "Admitted",
    "BackendState",
    "HedgeBudget",
    "Reopening",
    "Skip",
    "full_jitter",
    "order",
    "percentile",
]

EWMA_ALPHA = 0.2
LATENCY_WINDOW = 200
MIN_P95_SAMPLES = 20
WAIT_MARGIN_S = 0.1  # a reopening backend is waited for only if this much deadline is left after


@dataclass(eq=False)
class BackendState:
    """The service's memory of one backend."""

    name: str
    kind: str
    breaker: CircuitBreaker
    priority: int = 0
    max_concurrency: int = 8
    queue: bool = False
    cost: float = 0.0
    in_flight: int = 0
    latency_ewma_s: float | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    # handshakes that had to happen (not a pooled connection), for race_after_s = "auto"
    handshakes: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    last_probe: BackendHealth | None = None
    last_error_kind: str | None = None
    last_error: str | None = None
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)
    _watchers: list[asyncio.Future[None]] = field(default_factory=list)

    # -- concurrency slots --------------------------------------------------------------

    @property
    def saturated(self) -> bool:
        return self.in_flight >= self.max_concurrency

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now (``queue = true``)."""
        return len(self._waiters)

    def try_enter(self) -> bool:
        if self.saturated:
            return False
        self.in_flight += 1
        return True

    async def enter(self) -> None:
        """Wait for a free slot (``queue = true``)."""
        while self.saturated:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:  # each re-checks; a cancelled one cannot swallow the wake-up
            if not waiter.done():
                waiter.set_result(None)

    # -- breaker changes ----------------------------------------------------------------

    def watch(self) -> asyncio.Future[None]:
        """A future resolved at this backend's next breaker transition (``unwatch`` it after)."""
        watcher: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchers.append(watcher)
        return watcher

    def unwatch(self, watcher: asyncio.Future[None]) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    def breaker_changed(self) -> None:
        """Called on every breaker transition: wake the requests waiting for this backend."""
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)

    # -- observations -------------------------------------------------------------------

    def observe_latency(self, seconds: float) -> None:
        """A request succeeded here in ``seconds``."""
        self.latencies.append(seconds)
        self.outcomes.append(True)
        if self.latency_ewma_s is None:
            self.latency_ewma_s = seconds
        else:
            self.latency_ewma_s += EWMA_ALPHA * (seconds - self.latency_ewma_s)

    def observe_handshake(self, seconds: float) -> None:
        self.handshakes.append(seconds)

    def p95(self) -> float | None:
        if len(self.latencies) < MIN_P95_SAMPLES:
            return None
        return percentile(self.latencies, 0.95)

    def note_error(self, kind: str, message: str, *, request: bool = True) -> None:
        """The last error seen (``request=False``: a probe's, not counted as a failure)."""
        self.last_error_kind, self.last_error = kind, message
        if request:
            self.outcomes.append(False)

    def health(self, *, now: float | None = None) -> BackendHealth:
        """The health row for this backend (no network)."""
        probe = self.last_probe
        remaining = self.breaker.remaining()
        open_until = None
        if self.breaker.state in ("open", "disabled"):
            open_until = (now or time.time()) + remaining if math.isfinite(remaining) else None
        return BackendHealth(
            name=self.name,
            kind=self.kind,
            state=self.breaker.state,
            ok=probe.ok if probe else None,
            last_probe_at=probe.last_probe_at if probe else None,
            last_error_kind=self.last_error_kind,
            last_error=self.last_error,
            detail=probe.detail if probe else None,
            open_until=open_until,
            timings=dict(probe.timings) if probe else {},
            in_flight=self.in_flight,
            max_concurrency=self.max_concurrency,
            latency_ewma_s=self.latency_ewma_s,
            latency_p50_s=percentile(self.latencies, 0.5) if self.latencies else None,
            latency_p95_s=percentile(self.latencies, 0.95) if self.latencies else None,
            success_rate=sum(self.outcomes) / len(self.outcomes) if self.outcomes else None,
            recent_requests=len(self.outcomes),
            breaker_reason=None if self.breaker.state == "closed" else self.breaker.reason,
        )


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def order(states: list[BackendState], policy: str, turn: int = 0) -> list[BackendState]:
    """Candidates for one request. ``priority``: by priority, then config order;
    ``latency``: by latency EWMA (unmeasured backends after measured ones), priority breaks
    ties; ``round_robin``: by priority, rotating by ``turn`` within equal priorities."""
    by_priority = sorted(states, key=lambda s: s.priority)
    if policy == "latency":
        return sorted(
            by_priority,
            key=lambda s: (s.latency_ewma_s is None, s.latency_ewma_s or 0.0, s.priority),
        )
    if policy == "round_robin":
        out: list[BackendState] = []
        for prio in sorted({s.priority for s in states}):
            group = [s for s in by_priority if s.priority == prio]
            k = turn % len(group)
            out += group[k:] + group[:k]
        return out
    return by_priority


def full_jitter(rng: random.Random, base: float, attempt: int, cap: float) -> float:
    """AWS "full jitter": uniform(0, min(cap, base * 2**attempt))."""
    return rng.uniform(0.0, min(cap, base * 2**attempt))


class HedgeBudget:
    """A token bucket: each request earns ``ratio`` tokens (at most ``burst``), a hedge costs 1."""

    def __init__(self, ratio: float, *, burst: float = 10.0) -> None:
        self.ratio = ratio
        self.burst = max(burst, 1.0)
        self.tokens = 0.0
        self.requests = 0
        self.hedges = 0

    def on_request(self) -> None:
        self.requests += 1
        self.tokens = min(self.burst, self.tokens + self.ratio)

    def available(self) -> bool:
        return self.tokens >= 1.0

    def spend(self) -> None:
        self.tokens -= 1.0
        self.hedges += 1


@dataclass(frozen=True)
class Skip:
    """A candidate passed over for one request, and why."""

    state: BackendState
    why: str
    kind: SkipKind


@dataclass(frozen=True)
class Reopening:
    """Skipped backends worth waiting for: ``first``'s breaker lets a call through in
    ``wait_s`` (or, with ``wait_s`` the whole budget, a trial is in flight and its verdict is
    awaited); a transition of any breaker in ``watch`` is worth waking up for."""

    first: BackendState
    wait_s: float
    watch: tuple[BackendState, ...]


@dataclass(frozen=True)
class Admitted:
    """A candidate that may be called: its breaker permit, and whether it holds a slot
    already (``wait=False``) or must queue for one (``wait=True``)."""

    state: BackendState
    permit: Permit
    wait: bool


class Admission:
    """Walks one request's candidates in order; records skips through ``on_skip``."""

    def __init__(self, candidates: list[BackendState], on_skip: Callable[[Skip], Any]) -> None:
        self.pending = list(candidates)
        self._on_skip = on_skip
        self._blocked: list[Skip] = []
        self.admitted = 0

    def next(
        self, *, accept: Callable[[BackendState], bool] = lambda s: True, force: bool = False
    ) -> Admitted | None:
        """The next candidate that may be called now, or None.

        ``accept`` filters without consuming (a hedge leaves a too-expensive backend for
        failover); with ``force`` and nothing admitted so far, the blocked backend whose
        cool-down ends first is let through anyway: a request never skips every backend.
        """
        for state in list(self.pending):
            if not accept(state):
                continue
            self._drop(state)
            found = self._try(state)
            if found is not None:
                self.admitted += 1
                return found
        if force and self.admitted == 0 and self._blocked:
            return self._forced()
        return None

    def reopening(self, budget_s: float) -> Reopening | None:
        """The skipped backends whose breaker lets a call through within ``budget_s`` (what is
        left of the deadline) minus a margin (``WAIT_MARGIN_S``, or the backend's latency EWMA
        if longer), soonest first; or None. A half-open breaker whose trial is in flight counts
        (its verdict may close it); disabled and saturated backends are never waited for."""
        due: list[tuple[float, BackendState]] = []
        busy: list[tuple[float, BackendState]] = []
        for skip in self._blocked:
            st, breaker = skip.state, skip.state.breaker
            usable = budget_s - max(WAIT_MARGIN_S, st.latency_ewma_s or 0.0)
            if skip.kind == "saturated" or breaker.state == "disabled" or usable <= 0:
                continue
            if breaker.trial_in_flight:
                busy.append((usable, st))
            elif breaker.remaining() <= usable:
                due.append((breaker.remaining(), st))
        due.sort(key=lambda pair: pair[0])
        watch = tuple(st for _, st in due + busy)
        if due:
            return Reopening(due[0][1], due[0][0], watch)
        if busy:
            return Reopening(busy[0][1], busy[0][0], watch)
        return None

    def readmit(self, plan: Reopening) -> Admitted | None:
        """After waiting for ``plan``: the first of its backends that may be called now, or
        None. A backend found saturated is not waited for again; no skip is recorded twice."""
        for st in plan.watch:
            permit = st.breaker.acquire()
            if permit is None:
                continue
            entered = st.try_enter()
            if not entered and not st.queue:
                st.breaker.release(permit)
                self._blocked = [
                    Skip(b.state, b.why, "saturated") if b.state is st else b for b in self._blocked
                ]
                continue
            self._blocked = [b for b in self._blocked if b.state is not st]
            self.admitted += 1
            return Admitted(st, permit, wait=not entered)
        return None

    def give_back(self, state: BackendState) -> None:
        """A candidate admitted but never called (it lost a handshake race): last in line,
        should the request need another attempt (its handshake may be slow: the others first)."""
        self.pending.append(state)

    def close(self) -> None:
        """A non-failover error: no other candidate is tried or waited for."""
        self.pending.clear()
        self._blocked.clear()

    def _drop(self, state: BackendState) -> None:
        self.pending.remove(state)

    def _try(self, state: BackendState) -> Admitted | None:
        permit = state.breaker.acquire()
        if permit is None:
            self._skip(state, state.breaker.why_not(), _skip_kind(state.breaker))
            return None
        if state.try_enter():
            return Admitted(state, permit, wait=False)
        if state.queue:
            return Admitted(state, permit, wait=True)
        state.breaker.release(permit)
        self._skip(state, f"saturated: {state.in_flight}/{state.max_concurrency} in flight", "saturated")
        return None

    def _skip(self, state: BackendState, why: str, kind: SkipKind) -> None:
        # a backend listed twice (a single configured backend) is skipped once
        self.pending = [s for s in self.pending if s is not state]
        skip = Skip(state, why, kind)
        self._blocked.append(skip)
        self._on_skip(skip)

    def _forced(self) -> Admitted:
        by_breaker = [s for s in self._blocked if s.kind != "saturated"]
        pool = by_breaker or self._blocked
        chosen = min(pool, key=lambda s: s.state.breaker.remaining()).state
        self._blocked = [s for s in self._blocked if s.state is not chosen]
        self.admitted += 1
        return Admitted(chosen, chosen.breaker.force(), wait=not chosen.try_enter())

    def untried(self) -> list[BackendState]:
        """Candidates never reached (deadline or max_attempts), without repeats."""
        seen: list[BackendState] = []
        for s in self.pending:
            if s not in seen:
                seen.append(s)
        return seen


def _skip_kind(breaker: CircuitBreaker) -> SkipKind:
    state = breaker.state
    if state == "disabled":
        return "disabled"
    if breaker.trial_in_flight:
        return "half_open_busy"
    return "circuit_open"
