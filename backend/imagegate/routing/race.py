"""Handshake racing: cold failover in the time of a normal handshake, at no extra generation cost.

RFC 8305 ("Happy Eyeballs") with backends for addresses. While ``[service] race_after_s`` is
on and another candidate waits, the chosen backend first *connects*
(``ImageBackend.connect``: TCP + TLS into the shared pool, or a Space's gradio client built)
and sends the generation only then. Still connecting after the race delay, it is joined by
the next candidate, which connects too; the first backend whose connection is ready gets
the request, and the other is told it lost before it sent anything billable.

The loser's handshake is not cancelled (RFC 8305 cancels its losers: addresses of one host;
ours are services whose health we track). It goes on in the background (:class:`Handshakes`)
within its own ``connect_timeout_s``: a connection that completes later is left idle in the
pool (never used for this request), a slow one feeds the backend's handshake statistics, and
one that fails feeds its breaker, so a black-holed primary opens its breaker one connect
timeout after the first request, as it did without racing, while that request and the ones
after it were served in about the race delay.

At most one race per request: once a second backend has joined, later attempts send at once.
The delay (:func:`race_delay`): a number of seconds, or ``"auto"``: the backend's 99th
percentile of recent real handshakes (a pooled connection is not one) once it has
``MIN_HANDSHAKE_SAMPLES``, never under RFC 8305's Minimum Connection Attempt Delay (100 ms,
section 8), and ``RACE_FLOOR_S`` until then. A delay not shorter than the backend's
``connect_timeout_s`` means no race: its timeout fails over first, as before.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from imagegate.backends.base import ConnectInfo, ImageBackend
from imagegate.config.redact import Redactor
from imagegate.errors import BackendError, ServerError
from imagegate.logging import get_logger
from imagegate.models import Deadline
from imagegate.routing.breaker import Permit
from imagegate.routing.policy import BackendState, percentile
from imagegate.routing.trail import Trail

__all__ = ["Contender", "Handshakes", "LostRace", "Race", "race_delay"]

log = get_logger(__name__)

RACE_FLOOR_S = 0.5  # "auto" until a backend has MIN_HANDSHAKE_SAMPLES handshakes
RACE_MIN_S = 0.1  # "auto" never races sooner: RFC 8305 section 8, Minimum Connection Attempt Delay
HANDSHAKE_QUANTILE = 0.99
MIN_HANDSHAKE_SAMPLES = 20


def race_delay(setting: float | str, state: BackendState, connect_timeout_s: float) -> float | None:
    """Seconds after which ``state``'s backend, still connecting, is raced; None: never."""
    if setting == "auto":
        if len(state.handshakes) < MIN_HANDSHAKE_SAMPLES:
            delay = RACE_FLOOR_S
        else:
            delay = max(RACE_MIN_S, percentile(state.handshakes, HANDSHAKE_QUANTILE))
    else:
        delay = float(setting)
    return delay if 0 < delay < connect_timeout_s else None


class LostRace(Exception):
    """Another backend's connection was ready first: nothing was sent on this lane."""


@dataclass(eq=False)
class Contender:
    """One backend connecting for one request."""

    state: BackendState
    permit: Permit
    task: asyncio.Task[ConnectInfo]
    lost: asyncio.Future[None]
    started: float = field(default_factory=time.monotonic)

    @property
    def info(self) -> ConnectInfo:
        return self.task.result()

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Handshakes:
    """The service's losers' handshakes, left to finish in the background. Each settles its
    backend's breaker permit (a failure counts as a failure; a completed handshake gives no
    verdict on generating) and feeds its handshake statistics, unless a later attempt on that
    backend takes it over first (:meth:`reclaim`): it then waits for that handshake rather
    than opening another. ``aclose()`` cancels what is still connecting."""

    def __init__(self, redact: Redactor | None = None) -> None:
        self._redact = redact or Redactor()
        self._pending: dict[asyncio.Task[ConnectInfo], Contender] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def adopt(self, loser: Contender) -> None:
        if loser.task.done():
            self._settle(loser)
            return
        self._pending[loser.task] = loser
        self._idle.clear()
        loser.task.add_done_callback(self._settled)

    def holds(self, state: BackendState) -> bool:
        """A handshake of ``state``'s backend is still going on in the background."""
        return any(c.state is state for c in self._pending.values())

    def reclaim(self, state: BackendState) -> Contender | None:
        """Take over a background handshake of ``state``'s backend (its permit released: the
        attempt that takes it over holds its own), or None."""
        for task, loser in self._pending.items():
            if loser.state is state:
                self._forget(task)
                task.remove_done_callback(self._settled)
                state.breaker.release(loser.permit)
                return loser
        return None

    @property
    def pending(self) -> int:
        """Losers' handshakes still connecting."""
        return len(self._pending)

    async def settled(self, timeout: float | None = None) -> bool:
        """Wait until no loser's handshake is left (at most ``timeout`` s); whether none is."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        tasks = list(self._pending)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _forget(self, task: asyncio.Task[ConnectInfo]) -> Contender | None:
        loser = self._pending.pop(task, None)
        if not self._pending:
            self._idle.set()
        return loser

    def _settled(self, task: asyncio.Task[ConnectInfo]) -> None:
        loser = self._forget(task)
        if loser is not None:
            self._settle(loser)

    def _settle(self, loser: Contender) -> None:
        st, task = loser.state, loser.task
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, BackendError):
            message = self._redact.text(str(exc))
            log.warning("race_loser_failed", backend=st.name, kind=exc.kind,
                        elapsed_s=round(loser.elapsed(), 4), error=message)
            st.note_error(exc.kind, message)
            st.breaker.on_failure(loser.permit, exc.health, retry_after=exc.retry_after, kind=exc.kind)
            return
        st.breaker.release(loser.permit)  # connected (or cancelled): no verdict on generating
        if not task.cancelled() and exc is None:
            task.result().release()  # into the pool, for the next request
        if exc is not None:
            log.error("race_loser_crashed", backend=st.name, kind=type(exc).__name__)
        if task.cancelled() or exc is not None:
            return
        info = task.result()
        if not info.reused:
            st.observe_handshake(info.handshake_s)
        log.info("race_loser_connected", backend=st.name, kind="connected",
                 handshake_s=round(info.handshake_s, 4))


class Race:
    """One request's handshake race (see the module docstring)."""

    def __init__(self, setting: float | str, keeper: Handshakes, trail: Trail, redact: Redactor) -> None:
        self.setting = setting
        self.keeper = keeper
        self.trail = trail
        self.redact = redact
        self.at: float | None = None  # when the next candidate joins, if still connecting
        self.joined = False  # a second backend joined: this request's one race is run
        self.winner: Contender | None = None
        self.delay = 0.0
        self._contenders: list[Contender] = []

    def arm(self, state: BackendState, connect_timeout_s: float, *, others: bool) -> bool:
        """A lane starts on ``state``: whether it races (connects before sending, and the
        next candidate joins after the delay): racing is on, this request ran no race yet,
        ``others`` wait, the delay is shorter than ``connect_timeout_s``."""
        if self.joined or self.winner is not None or not others:
            return False
        delay = race_delay(self.setting, state, connect_timeout_s)
        if delay is None:
            return False
        self.delay, self.at = delay, time.monotonic() + delay
        return True

    def due(self) -> bool:
        """The timer went off while the chosen backend is still connecting (disarms it)."""
        if self.at is None or time.monotonic() < self.at:
            return False
        self.at = None
        return self.winner is None and any(not c.task.done() for c in self._contenders)

    async def connect(
        self,
        backend: ImageBackend[Any],
        state: BackendState,
        permit: Permit,
        deadline: Deadline,
        *,
        racing: bool,
    ) -> Contender:
        """Connect ``backend`` (or take over its handshake going on in the background) and
        return once it is ready, its connection held for the caller to ``info.release()``
        just before sending; ``racing``: only as the first of the contenders ready (else
        LostRace: send nothing, the connection goes to the pool). Raises the handshake's own
        error (redacted; a foreign one as ServerError)."""
        held = self.keeper.reclaim(state)
        if held is not None:
            task, started = held.task, held.started
        else:
            task = asyncio.create_task(backend.connect(deadline), name=f"imagegate-connect-{state.name}")
            task.add_done_callback(_retrieved)
            started = time.monotonic()
        me = Contender(state, permit, task, asyncio.get_running_loop().create_future(), started)
        if racing:
            self._contenders.append(me)
        either: list[asyncio.Future[Any]] = [task, me.lost]
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._drop(me)
            task.cancel()  # the request ended: its lane releases the permit
            task.add_done_callback(_let_go)  # connected all the same: the pool has it
            raise
        ready = task.done() and not task.cancelled() and task.exception() is None
        if racing and (me.lost.done() or (ready and self.winner is not None)):
            self._lose(me)
        self._drop(me)
        if not ready:
            if racing and not self._contenders:  # the chosen one failed: failover re-arms
                self.at = None
            raise self._error(state.name, task)
        if not me.info.reused:
            state.observe_handshake(me.info.handshake_s)
        if racing:
            self._win(me)
        return me

    def _drop(self, me: Contender) -> None:
        if me in self._contenders:
            self._contenders.remove(me)

    def _win(self, me: Contender) -> None:
        self.winner, self.at = me, None
        for other in self._contenders:
            if not other.lost.done():
                other.lost.set_result(None)

    def _lose(self, me: Contender) -> None:
        self._drop(me)
        winner = self.winner
        assert winner is not None
        done = me.task.done() and not me.task.cancelled() and me.task.exception() is None
        self.trail.raced(
            me.state.name,
            connecting_s=me.info.handshake_s if done else me.elapsed(),
            connected=done,
            winner=winner.state.name,
            winner_handshake_s=winner.info.handshake_s,
            race_after_s=self.delay,
        )
        self.keeper.adopt(me)
        raise LostRace(f"{winner.state.name} was ready first")

    def _error(self, name: str, task: asyncio.Task[ConnectInfo]) -> BackendError:
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, BackendError):
            self.redact.error(exc)
            return exc
        what = "was cancelled" if exc is None else f"raised {type(exc).__name__}: {exc}"
        log.error("connect_crashed", backend=name, kind=type(exc).__name__ if exc else "cancelled")
        return ServerError(self.redact.text(f"connecting {what}"), backend=name)


def _let_go(task: asyncio.Task[ConnectInfo]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().release()


def _retrieved(task: asyncio.Task[ConnectInfo]) -> None:
    """Mark a handshake's failure as seen (it is read where it matters, or not at all when the
    request ended first)."""
    if not task.cancelled():
        task.exception()
