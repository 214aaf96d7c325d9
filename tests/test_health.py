"""CircuitBreaker as a pure state machine (fake clock), admission over breakers (hypothesis),
and the HealthProber's lifecycle."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imagegate.routing.breaker import BreakerPolicy, CircuitBreaker, Permit, Transition
from imagegate.routing.prober import HealthProber
from imagegate.routing.policy import Admission, BackendState, Skip


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_breaker(clock: FakeClock, **policy: float) -> tuple[CircuitBreaker, list[Transition]]:
    seen: list[Transition] = []
    breaker = CircuitBreaker(BreakerPolicy(**policy), clock=clock, on_transition=seen.append)  # type: ignore[arg-type]
    return breaker, seen


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    """A breaker with the default policy, on ``clock``."""
    return make_breaker(clock)[0]


def test_trip_class_failure_opens_at_once_and_skips_until_cooldown(clock: FakeClock) -> None:
    breaker, seen = make_breaker(clock)
    breaker.on_failure(breaker.acquire() or "normal", "trip", kind="handshake_timeout")
    assert breaker.state == "open"
    assert breaker.acquire() is None
    assert breaker.why_not() == "circuit open for 30.0 s more"
    clock.advance(29.9)
    assert breaker.acquire() is None
    clock.advance(0.1)
    assert breaker.state == "half_open"
    assert [(t.old, t.new) for t in seen] == [("closed", "open")]
    assert seen[0].reason == "handshake_timeout" and seen[0].open_for_s == 30.0


def test_counted_failures_open_after_threshold_consecutive(clock: FakeClock) -> None:
    breaker, _ = make_breaker(clock, threshold=3)
    for _ in range(2):
        breaker.on_failure("normal", "count", kind="server_error")
    assert breaker.state == "closed"
    breaker.on_success("normal")  # a success in between resets the count
    for _ in range(2):
        breaker.on_failure("normal", "count", kind="server_error")
    assert breaker.state == "closed"
    breaker.on_failure("normal", "count", kind="server_error")
    assert breaker.state == "open"


def test_half_open_lets_exactly_one_trial_through(clock: FakeClock, breaker: CircuitBreaker) -> None:
    breaker.on_failure("normal", "trip", kind="connect_failed")
    clock.advance(30)
    assert breaker.acquire() == "trial"
    assert breaker.acquire() is None
    assert breaker.why_not() == "circuit half-open: a trial request is in flight"
    breaker.on_success("trial")
    assert breaker.state == "closed" and breaker.acquire() == "normal"


def test_failed_trial_reopens_with_a_longer_cooldown_capped(clock: FakeClock) -> None:
    breaker, seen = make_breaker(clock, cooldown_s=30, max_cooldown_s=100)
    breaker.on_failure("normal", "trip", kind="handshake_timeout")
    for expected in (60, 90, 100, 100):
        clock.advance(breaker.remaining())
        assert breaker.acquire() == "trial"
        breaker.on_failure("trial", "count", kind="server_error")
        assert breaker.remaining() == expected
    assert [t.open_for_s for t in seen if t.new == "open"] == [30, 60, 90, 100, 100]


def test_cancelled_trial_frees_the_trial_slot(clock: FakeClock, breaker: CircuitBreaker) -> None:
    breaker.on_failure("normal", "trip", kind="handshake_timeout")
    clock.advance(30)
    permit = breaker.acquire()
    assert permit == "trial"
    breaker.release(permit)
    assert breaker.acquire() == "trial"


def test_retry_after_holds_the_breaker_for_exactly_that_long_without_growing(clock: FakeClock, breaker: CircuitBreaker) -> None:
    breaker.on_failure("normal", "cooldown", retry_after=7, kind="rate_limited")
    assert breaker.state == "open" and breaker.remaining() == 7
    breaker.on_probe(True)  # the provider said 7 s: a good probe does not cut it short
    assert breaker.state == "open"
    clock.advance(7)
    assert breaker.acquire() == "trial"
    breaker.on_success("trial")
    breaker.on_failure("normal", "trip", kind="handshake_timeout")
    assert breaker.remaining() == 30  # the hold was no opening: the first cool-down is 30 s


def test_retry_after_is_capped_by_max_cooldown() -> None:
    breaker, _ = make_breaker(FakeClock(), max_cooldown_s=300)
    breaker.on_failure("normal", "cooldown", retry_after=86400, kind="rate_limited")
    assert breaker.remaining() == 300


def test_cooldown_class_without_retry_after_counts() -> None:
    breaker, _ = make_breaker(FakeClock(), threshold=2)
    breaker.on_failure("normal", "cooldown", kind="unavailable")
    assert breaker.state == "closed"
    breaker.on_failure("normal", "cooldown", kind="unavailable")
    assert breaker.state == "open"


def test_auth_failure_disables_until_a_probe_succeeds(clock: FakeClock, breaker: CircuitBreaker) -> None:
    breaker.on_failure("normal", "disable", kind="auth_failed")
    clock.advance(10_000)
    assert breaker.state == "disabled" and breaker.acquire() is None
    assert breaker.remaining() == math.inf
    assert breaker.why_not() == "disabled after auth_failed until a probe succeeds"
    breaker.on_probe(False, "disable", kind="auth_failed")
    assert breaker.state == "disabled"
    breaker.on_probe(True)
    assert breaker.state == "closed"


def test_probe_started_before_a_failure_cannot_close_it(breaker: CircuitBreaker) -> None:
    epoch = breaker.epoch
    breaker.on_failure("normal", "trip", kind="handshake_timeout")
    breaker.on_probe(True, epoch=epoch)
    assert breaker.state == "open"
    breaker.on_probe(True, epoch=breaker.epoch)
    assert breaker.state == "closed"


def test_failed_probe_trips_a_closed_breaker_but_does_not_extend_an_open_one(clock: FakeClock, breaker: CircuitBreaker) -> None:
    breaker.on_probe(False, "trip", kind="handshake_timeout")
    assert breaker.state == "open" and breaker.remaining() == 30
    clock.advance(10)
    breaker.on_probe(False, "trip", kind="handshake_timeout")
    assert breaker.remaining() == 20


def test_rejected_neither_counts_nor_trips_but_a_rejected_trial_closes(clock: FakeClock) -> None:
    breaker, _ = make_breaker(clock, threshold=1)
    breaker.on_failure("normal", "none", kind="rejected")
    assert breaker.state == "closed"
    breaker.on_failure("normal", "trip", kind="connect_failed")
    clock.advance(30)
    breaker.on_failure(breaker.acquire() or "normal", "none", kind="content_filtered")
    assert breaker.state == "closed"


def test_stale_failure_while_open_changes_nothing(clock: FakeClock) -> None:
    breaker, seen = make_breaker(clock)
    breaker.on_failure("normal", "trip", kind="handshake_timeout")
    clock.advance(5)
    breaker.on_failure("normal", "count", kind="server_error")  # a call admitted before it opened
    assert breaker.remaining() == 25 and len(seen) == 1


# -- hypothesis: admission over several breakers ----------------------------------------------

OUTCOMES = ["ok", "trip", "count", "cooldown", "disable", "none", "cancel", "keep"]
step = st.tuples(
    st.sampled_from(OUTCOMES),
    st.floats(min_value=0, max_value=400, allow_nan=False),
    st.booleans(),
    st.floats(min_value=0, max_value=60, allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(min_value=1, max_value=4), steps=st.lists(step, min_size=1, max_size=60))
def test_admission_never_skips_every_backend_nor_admits_two_trials(
    n: int, steps: list[tuple[str, float, bool, float]]
) -> None:
    clock = FakeClock()
    policy = BreakerPolicy(threshold=2, cooldown_s=30, max_cooldown_s=300)
    states = [
        BackendState(name=f"b{i}", kind="a1111", breaker=CircuitBreaker(policy, clock=clock))
        for i in range(n)
    ]
    in_flight: list[tuple[BackendState, Permit, int]] = []  # (backend, permit, breaker epoch)
    for outcome, advance, probe_ok, retry_after in steps:
        clock.advance(advance)
        if probe_ok:
            states[int(advance) % n].breaker.on_probe(True)
        skips: list[Skip] = []
        admitted = Admission(states, skips.append).next(force=True)
        assert admitted is not None, "a request skipped every backend"
        assert admitted.permit == "forced" or admitted.state not in {s.state for s in skips}
        admitted.state.leave() if not admitted.wait else None
        b = admitted.state.breaker
        if outcome == "keep":
            in_flight.append((admitted.state, admitted.permit, b.epoch))
        elif outcome == "cancel":
            b.release(admitted.permit)
        elif outcome == "ok":
            b.on_success(admitted.permit)
        else:
            b.on_failure(admitted.permit, outcome, retry_after=retry_after or None, kind=outcome)  # type: ignore[arg-type]
        # a trial belongs to the half-open episode it opened (the epoch right after acquire)
        episodes = [(id(s), epoch) for s, permit, epoch in in_flight if permit == "trial"]
        assert len(episodes) == len(set(episodes)), "two trials in one half-open episode"
        for s in states:
            if s.breaker.trial_in_flight:
                assert s.breaker.acquire() is None, "a second trial while one is in flight"


# -- the prober -------------------------------------------------------------------------------


async def test_prober_probes_every_backend_repeatedly_and_stops_cleanly() -> None:
    calls: list[str] = []

    async def probe(name: str) -> None:
        calls.append(name)

    prober = HealthProber(["a", "b"], probe, interval_s=0.02, rng=random.Random(1))
    prober.start()
    await asyncio.sleep(0.15)
    await prober.stop()
    assert calls.count("a") >= 3 and calls.count("b") >= 3
    assert not prober.running
    count = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == count
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("imagegate-probe")]


async def test_prober_interval_is_jittered_and_shorter_while_open() -> None:
    urgent = {"a": False}
    prober = HealthProber(
        ["a"], lambda name: asyncio.sleep(0), interval_s=10, urgent=lambda n: urgent[n],
        rng=random.Random(7), jitter=0.2, fast_factor=0.25,
    )
    delays = [prober.next_delay("a") for _ in range(200)]
    assert 8 <= min(delays) < max(delays) <= 12 and len(set(delays)) > 100
    urgent["a"] = True
    assert all(2 <= prober.next_delay("a") <= 3 for _ in range(50))


async def test_prober_nudge_recomputes_the_delay_at_once() -> None:
    calls: list[str] = []
    urgent = {"a": False}

    async def probe(name: str) -> None:
        calls.append(name)

    prober = HealthProber(["a"], probe, interval_s=1000, urgent=lambda n: urgent[n], fast_factor=1e-5)
    prober.start()
    await asyncio.sleep(0.02)
    assert calls == []
    urgent["a"] = True
    prober.nudge("a")
    await asyncio.sleep(0.1)
    await prober.stop()
    assert calls


async def test_a_crashing_probe_does_not_end_the_loop() -> None:
    calls: list[str] = []

    async def probe(name: str) -> None:
        calls.append(name)
        raise RuntimeError("bug")

    prober = HealthProber(["a"], probe, interval_s=0.01)
    prober.start()
    await asyncio.sleep(0.1)
    await prober.stop()
    assert len(calls) >= 3
