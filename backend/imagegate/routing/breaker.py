"""The circuit breaker: a small pure state machine with an injected clock::

    closed --trip-class failure / N counted failures--> open
    closed --auth/quota failure--> disabled            (until a probe succeeds)
    open --cool-down over, one caller acquires--> half_open (exactly one trial in flight)
    half_open --trial succeeds--> closed ; --trial fails--> open (longer cool-down)
    any --success (request or probe)--> closed

The cool-down grows with repeated openings (``cooldown_s`` × n, capped at
``max_cooldown_s``); a 429/503 that carried ``Retry-After`` holds the breaker open for exactly
that long instead (capped the same way), without counting as an opening.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from imagegate.errors import HealthEffect
from imagegate.models import BreakerState

__all__ = ["BreakerPolicy", "CircuitBreaker", "Permit", "Transition"]

Permit = Literal["normal", "trial", "forced"]
"""What ``acquire()``/``force()`` granted: a closed-circuit call, the one half-open trial, or a
call let through an open breaker because every backend was open ("never skip them all")."""

State = BreakerState
Clock = Callable[[], float]


@dataclass(frozen=True)
class BreakerPolicy:
    """How quickly a breaker opens and how long it stays open."""

    threshold: int = 3
    cooldown_s: float = 30.0
    max_cooldown_s: float = 300.0


@dataclass(frozen=True)
class Transition:
    """One state change, for the log and the health table; ``remote`` when it is another
    instance's verdict adopted here (so it is not published back to the fleet)."""

    old: State
    new: State
    reason: str
    open_for_s: float | None = None
    remote: bool = False


class CircuitBreaker:
    """Per-backend breaker; every method is synchronous and reads time only from ``clock``."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        clock: Clock = time.monotonic,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_transition = on_transition
        self._state: State = "closed"
        self._failures = 0
        self._openings = 0
        self._open_until = 0.0
        self._hold_until = 0.0  # a provider's Retry-After: probes do not shorten it
        self._disabled_by: str | None = None
        self._remote = False  # set while adopting another instance's verdict
        self.epoch = 0  # bumped on every transition; a probe started before one is stale
        self.reason: str | None = None  # why the last transition happened

    @property
    def state(self) -> State:
        """The state as reported: an open breaker whose cool-down is over reads half_open."""
        if self._state == "open" and self._clock() >= self._open_until:
            return "half_open"
        return self._state

    @property
    def trial_in_flight(self) -> bool:
        return self._state == "half_open"

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def remaining(self) -> float:
        """Seconds until a call may go through: 0 when closed, inf while disabled."""
        if self._state == "disabled":
            return math.inf
        if self._state == "open":
            return max(0.0, self._open_until - self._clock())
        return 0.0

    def acquire(self) -> Permit | None:
        """May a call go through now? None means skip this backend (no network call)."""
        if self._state == "closed":
            return "normal"
        if self._state == "open" and self._clock() >= self._open_until:
            self._set("half_open", "cool-down over: one trial request")
            return "trial"
        return None

    def force(self) -> Permit:
        """Let one call through regardless of state (every backend is open)."""
        return "forced"

    def why_not(self) -> str:
        """Why ``acquire()`` said no, for the attempt trail."""
        if self._state == "disabled":
            return f"disabled after {self._disabled_by or 'a failure'} until a probe succeeds"
        if self._state == "half_open":
            return "circuit half-open: a trial request is in flight"
        return f"circuit open for {self.remaining():.1f} s more"

    def on_success(self, permit: Permit) -> None:
        """A call (of any permit) produced a valid answer: the backend works."""
        self._close("request succeeded")

    def on_failure(
        self,
        permit: Permit,
        effect: HealthEffect,
        *,
        retry_after: float | None = None,
        kind: str = "failure",
    ) -> None:
        """A call failed with an error whose class attribute ``health`` is ``effect``."""
        if effect == "none":
            if permit == "trial" and self._state == "half_open":
                self._close(f"trial answered ({kind}): the backend is up")
            return
        if effect == "disable":
            self._disable(kind)
            return
        if effect == "cooldown" and retry_after is not None:
            self._hold(retry_after, kind)
            return
        if permit == "trial" and self._state == "half_open":
            self._open(f"trial failed: {kind}")
        elif self._state == "closed":
            self._failures += 1
            if effect == "trip":
                self._open(kind)
            elif self._failures >= self.policy.threshold:
                self._open(f"{self._failures} consecutive failures, last {kind}")
        # a stale or forced failure while already open changes nothing

    def release(self, permit: Permit) -> None:
        """A call ended without a verdict (cancelled): free the trial slot."""
        if permit == "trial" and self._state == "half_open":
            self._open_until = self._clock()
            self._set("open", "trial cancelled", 0.0)

    def on_probe(
        self, ok: bool, effect: HealthEffect = "count", *, kind: str = "failure", epoch: int | None = None
    ) -> None:
        """Feed a probe result; ``epoch`` is ``self.epoch`` read when the probe started."""
        if ok:
            stale = epoch is not None and epoch != self.epoch
            if not stale and self._clock() >= self._hold_until and self._state != "closed":
                self._close("probe succeeded")
            return
        if effect == "disable":
            self._disable(kind)
        elif self._state == "closed" and effect != "none":
            self.on_failure("normal", effect, kind=kind)

    def adopt(self, state: State, open_for_s: float | None, reason: str) -> None:
        """Take another instance's verdict as it is: open for ``open_for_s`` more seconds
        (a peer's half-open trial counts as open: that peer sends it), disabled, or closed.
        Nothing is counted; the transition is reported with ``remote=True``."""
        self._remote = True
        try:
            if state == "closed":
                self._close(reason)
            elif state == "disabled":
                self._disabled_by = reason.split(":")[0] or "another instance"
                self._set("disabled", reason, math.inf)
            else:
                hold = max(open_for_s or 0.0, 0.0)
                self._open_until = self._clock() + hold
                self._set("open", reason, hold)
        finally:
            self._remote = False

    # -- transitions --------------------------------------------------------------------

    def _cooldown(self) -> float:
        return min(self.policy.cooldown_s * max(self._openings, 1), self.policy.max_cooldown_s)

    def _open(self, reason: str) -> None:
        self._openings += 1
        cooldown = self._cooldown()
        self._open_until = self._clock() + cooldown
        self._set("open", reason, cooldown)

    def _hold(self, retry_after: float, kind: str) -> None:
        hold = min(max(retry_after, 0.0), self.policy.max_cooldown_s)
        until = self._clock() + hold
        self._hold_until = max(self._hold_until, until)
        if self._state == "disabled":
            return
        self._open_until = max(self._open_until if self._state == "open" else 0.0, until)
        self._set("open", f"{kind}: retry after {hold:g} s", hold)

    def _disable(self, kind: str) -> None:
        self._disabled_by = kind
        self._set("disabled", f"{kind}: until a probe succeeds", math.inf)

    def _close(self, reason: str) -> None:
        self._failures = 0
        self._openings = 0
        self._hold_until = 0.0
        self._disabled_by = None
        if self._state != "closed":
            self._set("closed", reason)

    def _set(self, new: State, reason: str, open_for: float | None = None) -> None:
        old = self._state
        self._state, self.reason = new, reason
        self.epoch += 1
        if self._on_transition is not None and (old != new or new == "open"):
            self._on_transition(Transition(old, new, reason, open_for, remote=self._remote))
