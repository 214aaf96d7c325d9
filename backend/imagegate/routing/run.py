"""One request's journey: attempts in candidate order, retries, hedging, the deadline.
Before any I/O each candidate's plan (``adapt.py``) fits the request to it, or skips it.

``RequestRun`` runs each attempt on a backend as a task ("lane"), so that a hedge can race the
first attempt and the loser can be cancelled (closing its HTTP request). Everything that
changes a backend's breaker, slot or latency happens here, once per lane:

- success: ``breaker.on_success``, latency observed;
- failure: ``breaker.on_failure`` with the error's class attribute ``health``;
- cancelled (lost the race, or the caller gave up): ``breaker.release`` (no verdict);
- lost a handshake race (``race.py``): nothing was sent; the permit goes with the handshake,
  which finishes in the background and settles it there;
- and the concurrency slot is always given back by the task's done callback.

A skipped backend that comes back: once every candidate is tried or skipped, attempts remain
and a skipped backend's breaker lets a call through before the deadline, the request waits for
it (``waiting.py``) and calls it as the half-open trial. When every candidate is blocked at the
start, the forced call still goes at once; waiting applies only after it, to the rest.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from imagegate.backends.base import ImageBackend
from imagegate.backends.images import asked_only
from imagegate.capabilities import Adjustment
from imagegate.config import ServiceSettings
from imagegate.config.redact import Redactor
from imagegate.errors import BackendError, BadResponse, GenerationTimeout, ServerError
from imagegate.logging import get_logger
from imagegate.models import Deadline, GeneratedImage, ImageRequest, ImageResult, Outcome
from imagegate.routing.adapt import execute, plan_all, skip_rows
from imagegate.routing.announce import QUIET, Announcer
from imagegate.routing.breaker import Permit
from imagegate.routing.fleet import Fleet, FleetSaturated
from imagegate.routing.policy import (
    Admission,
    Admitted,
    BackendState,
    HedgeBudget,
    Skip,
    full_jitter,
)
from imagegate.routing.race import Handshakes, LostRace, Race
from imagegate.routing.trail import Trail
from imagegate.routing.waiting import wait_for

__all__ = ["RequestRun", "Runtime"]

log = get_logger(__name__)

GRACE_S = 0.05  # how long past the deadline a backend may take to notice it
BACKOFF_CAP_FACTOR = 16  # full-jitter cap = retry_backoff_s * this


@dataclass
class Runtime:
    """What every request of one service shares."""

    settings: ServiceSettings
    backends: dict[str, ImageBackend[Any]]
    budget: HedgeBudget
    rng: random.Random
    fleet: Fleet
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    # masks every configured secret in what leaves a backend (errors, the trail, logs)
    redact: Redactor = field(default_factory=Redactor)
    handshakes: Handshakes = field(default_factory=Handshakes)  # races' losers, still connecting


@dataclass(eq=False)
class _Lane:
    state: BackendState
    permit: Permit
    hedge: bool
    holds_slot: bool
    settled: bool = False
    started: float = field(default_factory=time.monotonic)
    fleet_slot: str | None = None  # the fleet-wide slot's token (shared state only)
    contender: bool = False  # connects before sending: a handshake race may be run
    handshake_s: float | None = None


class RequestRun:
    """Generate one request across ``candidates`` (already ordered by the policy)."""

    def __init__(
        self,
        rt: Runtime,
        request: ImageRequest,
        deadline: Deadline,
        candidates: list[BackendState],
        tell: Announcer = QUIET,
    ) -> None:
        self.rt = rt
        self.tell = tell  # what a listener hears: announce.py
        self.request = request
        self.deadline = deadline
        self.plans, refused = plan_all(request, candidates, rt.backends, rt.settings.adapt)
        self.trail = Trail(skip_rows(refused), tell)  # refused before any I/O: no breaker effect
        self._adjusted: dict[str, list[Adjustment]] = {}
        self.used = 0
        self._waited_s = 0.0
        self.admission = Admission([c for c in candidates if c.name in self.plans], self.trail.skipped)
        self._lanes: dict[asyncio.Task[list[GeneratedImage]], _Lane] = {}
        self._hedged = False
        self._hedge_at: float | None = None
        self._hedge_from = 0.0
        self._cancel_reason = "cancelled by the caller"
        self._started = time.monotonic()
        self.race = Race(rt.settings.race_after_s, rt.handshakes, self.trail, rt.redact)

    async def run(self) -> ImageResult:
        try:
            await self.rt.fleet.claim_trials(self.admission.pending)
            self._launch()
            while self._lanes or await self._wait_for_reopening():
                done = await self._wait()
                winners = [t for t in done if not t.cancelled() and t.exception() is None]
                if winners:
                    return await self._win(winners[0])
                for task in done:
                    lane = self._lanes.pop(task)
                    exc = None if task.cancelled() else task.exception()
                    self._after_failure(lane, exc)
            raise self.trail.exhausted(self.admission.untried(), self.deadline.expired,
                                       self.rt.settings.max_attempts, self._started)
        finally:
            await self._cancel_all()

    # -- the main loop's steps ----------------------------------------------------------

    async def _wait(self) -> set[asyncio.Task[list[GeneratedImage]]]:
        timeout = self.deadline.remaining() + GRACE_S
        for at in (self._hedge_at, self.race.at):
            if at is not None:
                timeout = min(timeout, max(0.0, at - time.monotonic()))
        done, _ = await asyncio.wait(self._lanes, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if done:
            return done
        if self.race.due():
            self._join_race()
        elif self._hedge_at is not None and time.monotonic() >= self._hedge_at:
            self._hedge_at = None
            await self._hedge()
        elif self.deadline.expired:
            self._cancel_reason = "the request deadline ran out"
            await self._cancel_all()
        return set()

    def _launch(self, *, hedge: bool = False) -> bool:
        s = self.rt.settings
        if self.used >= s.max_attempts or self.deadline.expired:
            return False
        if hedge:
            busy = {lane.state for lane in self._lanes.values()}
            cap = s.hedge_max_cost
            admitted = self.admission.next(accept=lambda st: st not in busy and (cap is None or st.cost <= cap))
        else:
            admitted = self.admission.next(force=True)
        if admitted is None:
            return False
        if admitted.permit == "forced":
            self.trail.unskip(admitted.state.name)
        self._start_lane(admitted, hedge=hedge)
        return True

    async def _wait_for_reopening(self) -> bool:
        """Nothing is in flight and no candidate is left: wait for a skipped backend whose
        breaker reopens before the deadline and start its attempt (True), or give up (False)."""
        while self.used < self.rt.settings.max_attempts:
            wait_budget = self.rt.settings.max_wait_s - self._waited_s
            plan = self.admission.reopening(min(self.deadline.remaining(), wait_budget))
            if plan is None:
                return False
            if plan.wait_s > 0:
                waited = await wait_for(plan, self.rt.sleep)
                self._waited_s += waited.elapsed_s
                self.trail.waited(waited)
            admitted = self.admission.readmit(plan)
            if admitted is not None:
                self._start_lane(admitted, hedge=False)
                return True
        return False

    def _join_race(self) -> None:
        """The chosen backend is still connecting after the race delay: the next candidate
        that can take the request now connects too; the first one ready gets it."""
        if self.used >= self.rt.settings.max_attempts or self.deadline.expired:
            return
        busy = {lane.state for lane in self._lanes.values()}
        admitted = self.admission.next(accept=lambda st: st not in busy and not st.saturated)
        if admitted is not None:
            self.race.joined = True
            log.info("race_started", backend=admitted.state.name, kind="race",
                     chosen=next(iter(busy)).name if busy else None, after_s=round(self.race.delay, 4))
            self._start_lane(admitted, hedge=False, racer=True)

    def _start_lane(self, admitted: Admitted, *, hedge: bool, racer: bool = False) -> None:
        st = admitted.state
        lane = _Lane(st, admitted.permit, hedge, holds_slot=not admitted.wait)
        others = any(c is not st for c in self.admission.pending)
        timeout = self.rt.backends[st.name].timeouts.connect
        lane.contender = racer or (not hedge and self.race.arm(st, timeout, others=others))
        self.tell.lane(st, hedge=hedge, waits=admitted.wait)
        self.used += 1
        log.debug("attempt_started", backend=st.name, kind="hedge" if hedge else "race" if racer else "attempt",
                  permit=admitted.permit, number=self.used)
        task = asyncio.create_task(self._lane_body(lane), name=f"imagegate-attempt-{st.name}")
        task.add_done_callback(lambda t: self._finish(lane))
        self._lanes[task] = lane
        if not self._hedged and not hedge and not racer:
            delay = self._hedge_delay(st)
            self._hedge_from = time.monotonic()
            self._hedge_at = None if delay is None else self._hedge_from + delay

    def _hedge_delay(self, st: BackendState) -> float | None:
        s = self.rt.settings
        if s.hedge == "p95":
            p95 = st.p95()
            if p95 is not None:
                return p95
        return s.hedge_after_s

    async def _hedge(self) -> None:
        """One hedge, paid from the budget (the fleet's when shared: a hedge the fleet paid for
        but no candidate could take is lost, which only makes hedging rarer)."""
        if self._hedged or not await self.rt.fleet.spend_hedge(self.rt.budget):
            return
        if self._launch(hedge=True):
            self._hedged = True
            lane = list(self._lanes.values())
            log.info("hedge_started", backend=lane[-1].state.name, kind="hedge", primary=lane[0].state.name,
                     after_s=round(time.monotonic() - self._hedge_from, 4))

    def _after_failure(self, lane: _Lane, exc: BaseException | None) -> None:
        if isinstance(exc, BackendError) and not exc.failover:
            self.admission.close()
        elif exc is not None and not isinstance(exc, BackendError | FleetSaturated | LostRace):
            log.error("attempt_crashed", backend=lane.state.name, kind=type(exc).__name__, error=str(exc))
        if not self._lanes:
            self._launch()

    async def _win(self, task: asyncio.Task[list[GeneratedImage]]) -> ImageResult:
        lane = self._lanes.pop(task)
        self._cancel_reason = "another attempt answered first"
        await self._cancel_all()
        elapsed = time.monotonic() - self._started
        log.info("image_generated", backend=lane.state.name, kind="ok", hedge=lane.hedge,
                 attempts=len(self.trail.attempts), elapsed_s=round(elapsed, 4))
        return ImageResult(
            images=task.result(), backend=lane.state.name, attempts=self.trail.attempts, elapsed_s=elapsed,
            adjustments=self._adjusted.get(lane.state.name, []),
        )

    async def _cancel_all(self) -> None:
        tasks = list(self._lanes)
        self._lanes.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:  # retrieve failures that raced the winner (recorded already)
            if not task.cancelled():
                task.exception()

    # -- one lane -----------------------------------------------------------------------

    async def _lane_body(self, lane: _Lane) -> list[GeneratedImage]:
        st = lane.state
        if not lane.holds_slot:
            await self._queue_for_slot(lane)
        try:
            lane.fleet_slot = await self.rt.fleet.enter(st, self.deadline)
        except FleetSaturated as exc:  # a skip, not an attempt: nothing was sent
            lane.settled = True
            st.breaker.release(lane.permit)
            self.used -= 1
            self.trail.skipped(Skip(st, str(exc), "saturated"))
            raise
        retry = 0
        while True:
            lane.started, lane.handshake_s = time.monotonic(), None
            self.tell.started(st.name, hedge=lane.hedge)
            try:
                if lane.contender or self.rt.handshakes.holds(st):
                    lane.handshake_s = await self._connect(lane)
                images, note = await self._call(st.name)
            except LostRace:  # nothing was sent; the handshake settles the permit later
                lane.settled = True
                self.used -= 1
                self.admission.give_back(st)
                raise
            except BackendError as exc:
                self._record(lane, exc.kind, error=str(exc), status=exc.status)
                delay = self._retry_delay(exc, retry)
                if delay is None:
                    lane.settled = True
                    st.breaker.on_failure(lane.permit, exc.health, retry_after=exc.retry_after, kind=exc.kind)
                    st.note_error(exc.kind, str(exc))
                    raise
                retry += 1
                self.used += 1
                log.info("backend_retry", backend=st.name, kind=exc.kind, after_s=round(delay, 4))
                await self.rt.sleep(delay)
                continue
            lane.settled = True
            st.breaker.on_success(lane.permit)
            st.observe_latency(time.monotonic() - lane.started)
            self._record(lane, "ok", note=note)
            return images

    async def _queue_for_slot(self, lane: _Lane) -> None:
        try:
            async with asyncio.timeout(self.deadline.remaining()):
                await lane.state.enter()
        except TimeoutError:
            lane.settled = True
            lane.state.breaker.release(lane.permit)
            exc = GenerationTimeout(
                f"no free slot (max_concurrency={lane.state.max_concurrency}) before the deadline",
                backend=lane.state.name,
            )
            self._record(lane, exc.kind, error=str(exc))
            raise exc from None
        lane.holds_slot = True

    async def _connect(self, lane: _Lane) -> float:
        """Connect before sending (racing, or to finish a handshake left in the background)."""
        st = lane.state
        ready = await self.race.connect(self.rt.backends[st.name], st, lane.permit, self.deadline,
                                        racing=lane.contender)
        lane.contender = False
        ready.info.release()  # into the pool now: the request sent next (nothing runs between) takes it
        return ready.info.handshake_s

    async def _call(self, name: str) -> tuple[list[GeneratedImage], str | None]:
        """One backend call: at most n images and the trail's note; errors leave redacted."""
        backend = self.rt.backends[name]
        try:
            async with asyncio.timeout(self.deadline.remaining() + GRACE_S):
                images, self._adjusted[name] = await execute(backend, self.plans[name], self.deadline)
        except BackendError as exc:
            raise self.rt.redact.error(exc)
        except TimeoutError as exc:
            raise GenerationTimeout("the request deadline ran out", backend=name) from exc
        except Exception as exc:  # a backend bug must not escape as a foreign type
            log.exception("backend_crashed", backend=name, kind=type(exc).__name__)
            message = self.rt.redact.text(f"backend raised {type(exc).__name__}: {exc}")
            raise ServerError(message, backend=name) from exc
        if not images:
            raise BadResponse("the backend answered with no image", backend=name)
        return asked_only(images, self.request.n)

    def _retry_delay(self, exc: BackendError, retry: int) -> float | None:
        """Backoff before retrying the same backend, or None: only errors with a retry hint
        (a refused connection; a 429 whose Retry-After is at most max_retry_after_s), inside
        max_attempts (keeping one for failover when
        other candidates remain or a skipped one reopens in time) and inside the deadline."""
        s = self.rt.settings
        later = self.admission.pending or self.admission.reopening(self.deadline.remaining())
        reserve = 1 if later else 0
        if self.used + reserve >= s.max_attempts:
            return None
        hint = exc.retry_hint  # the taxonomy says when the same backend is worth asking again
        if hint is None or hint > s.max_retry_after_s:
            return None
        delay = hint + self._backoff(retry)
        return delay if delay < self.deadline.remaining() else None

    def _backoff(self, n: int) -> float:
        base = self.rt.settings.retry_backoff_s
        return full_jitter(self.rt.rng, base, n, base * BACKOFF_CAP_FACTOR)

    def _finish(self, lane: _Lane) -> None:
        """Done callback of every lane task: give the slot back; settle a cancelled lane."""
        if lane.holds_slot:
            lane.holds_slot = False
            lane.state.leave()
        self.rt.fleet.leave(lane.state, lane.fleet_slot)
        lane.fleet_slot = None
        if lane.permit == "trial":
            self.rt.fleet.trial_done(lane.state)
        if not lane.settled:
            lane.settled = True
            lane.state.breaker.release(lane.permit)
            self._record(lane, "cancelled", error=self._cancel_reason)

    def _record(self, lane: _Lane, outcome: Outcome, *, error: str | None = None,
                status: int | None = None, note: str | None = None) -> None:
        self.trail.record(lane.state.name, outcome, started=lane.started, hedge=lane.hedge,
                          error=error, status=status, note=note, handshake_s=lane.handshake_s)
