"""The routing layer's side of the shared state: what one request asks of the fleet.

Everything here is a no-op on the hot path while the state is in-process (one instance is
its own fleet: local breakers, slots and budget decide). With a shared store (Redis):

- a transition of a local breaker is published (in order, off the request path) and a
  peer's is adopted by the local breaker, so every instance reads a local breaker;
- before a request is admitted, each candidate whose breaker would let a half-open trial
  through takes the fleet's trial lease; an instance that does not get it holds that breaker
  open for the lease's length (the lease holder's verdict arrives as news);
- a call takes a fleet-wide slot of its backend (``max_concurrency`` across instances) after
  its local one; without one it spills over (or queues, with ``queue = true``);
- hedges are spent from the fleet's budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable, Mapping

from imagegate.logging import get_logger
from imagegate.models import BackendHealth, Deadline
from imagegate.routing.breaker import Transition
from imagegate.routing.policy import BackendState, HedgeBudget
from imagegate.state import BreakerNews, SharedState

__all__ = ["Fleet", "FleetSaturated"]

log = get_logger(__name__)

TRIAL_MARGIN_S = 5.0  # a trial lease outlives the call it covers by this much


class FleetSaturated(Exception):
    """Every slot of a backend is taken across the fleet (and it does not queue)."""


class Fleet:
    """One service's view of the fleet (see the module docstring)."""

    def __init__(self, state: SharedState, backends: Mapping[str, BackendState]) -> None:
        self.state = state
        self._backends = backends
        self._outbox: asyncio.Queue[BreakerNews] = asyncio.Queue()
        self._publisher: asyncio.Task[None] | None = None
        self.trial_ttl: dict[str, float] = {}

    @property
    def shared(self) -> bool:
        return self.state.shared

    async def start(self) -> None:
        if not self.state.distributed:
            return  # one instance: nothing to tell, nothing to hear
        await self.state.start(self._adopt, self._peer_probe)
        self._publisher = asyncio.create_task(self._publish_loop(), name="imagegate-fleet-publish")

    async def aclose(self) -> None:
        self.state.begin_close()
        if self._publisher is not None:
            with contextlib.suppress(asyncio.TimeoutError):  # what is queued goes out first
                async with asyncio.timeout(1.0):
                    await self._outbox.join()
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
        await self.state.aclose()

    # -- breakers -------------------------------------------------------------------------

    def transition(self, backend: str, t: Transition) -> None:
        """A local breaker changed (called synchronously by the breaker): tell the fleet."""
        if t.remote or not self.state.distributed:
            return
        until = None
        if t.new == "open" and t.open_for_s is not None and math.isfinite(t.open_for_s):
            until = time.time() + t.open_for_s
        elif t.new == "half_open":
            return  # a trial of ours: the lease says so; its verdict will be news
        self._outbox.put_nowait(BreakerNews(backend, t.new, until, t.reason, self.state.instance))

    async def _publish_loop(self) -> None:
        while True:
            news = await self._outbox.get()
            try:
                await self.state.publish_breaker(news)
            finally:
                self._outbox.task_done()

    def _adopt(self, news: BreakerNews) -> None:
        st = self._backends.get(news.backend)
        if st is None:
            return
        open_for = None if news.until is None else max(0.0, news.until - time.time())
        st.breaker.adopt(news.state, open_for, f"fleet ({news.origin}): {news.reason}")

    def _peer_probe(self, health: BackendHealth) -> None:
        st = self._backends.get(health.name)
        if st is not None:
            st.last_probe = health

    # -- trials ---------------------------------------------------------------------------

    async def claim_trials(self, candidates: Iterable[BackendState]) -> None:
        """Before admission: every candidate whose breaker would grant a half-open trial now
        takes the fleet's trial lease, or is held open while another instance sends it."""
        if not self.shared:
            return
        for st in candidates:
            breaker = st.breaker
            if breaker.state != "half_open" or breaker.trial_in_flight:
                continue
            ttl = self.trial_ttl.get(st.name, 60.0)
            if not await self.state.lease(f"trial:{st.name}", ttl):
                breaker.adopt("open", ttl, "another instance sends the half-open trial")

    def trial_done(self, st: BackendState) -> None:
        """The trial's call ended (from a done callback: the release runs as its own task)."""
        if self.shared:
            task = asyncio.get_running_loop().create_task(self.state.release(f"trial:{st.name}"))
            task.add_done_callback(_log_failure)

    # -- slots ----------------------------------------------------------------------------

    async def enter(self, st: BackendState, deadline: Deadline) -> str | None:
        """A fleet-wide slot of ``st`` (None while the state is in-process: the local slot is
        the whole fleet's). Queues until the deadline when the backend does; else raises
        FleetSaturated."""
        if not self.shared:
            return None
        while True:
            token = await self.state.acquire_slot(st.name, st.max_concurrency)
            if token is not None:
                return token
            if not st.queue or deadline.expired:
                raise FleetSaturated(
                    f"saturated across the fleet: {st.max_concurrency} in flight on all instances"
                )
            await self.state.slot_freed(st.name, min(1.0, deadline.remaining()))

    def leave(self, st: BackendState, token: str | None) -> None:
        """Give a fleet slot back (from a done callback: the release runs as its own task)."""
        if token is None:
            return
        task = asyncio.get_running_loop().create_task(self.state.release_slot(st.name, token))
        task.add_done_callback(_log_failure)

    # -- hedges and probes ----------------------------------------------------------------

    def on_request(self, budget: HedgeBudget) -> None:
        budget.on_request()
        if self.shared:
            self.state.hedge_earn(budget.ratio)

    async def spend_hedge(self, budget: HedgeBudget) -> bool:
        """One hedge from the fleet's budget when shared, else from this instance's."""
        if self.shared:
            if not await self.state.hedge_spend(budget.burst):
                return False
            budget.hedges += 1
            return True
        if not budget.available():
            return False
        budget.spend()
        return True

    async def lead_probe(self, backend: str, interval_s: float) -> bool:
        """Whether this instance probes ``backend`` this round (one instance per interval)."""
        if not self.shared:
            return True
        return await self.state.lease(f"probe:{backend}", interval_s * 0.9)

    async def probed(self, health: BackendHealth) -> None:
        if self.shared:
            await self.state.publish_probe(health)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("fleet_slot_release_failed", error=str(task.exception()))
