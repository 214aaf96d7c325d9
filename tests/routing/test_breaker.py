"""CircuitBreaker as a pure state machine, on a fake clock."""

from __future__ import annotations

import math

import pytest
from imagegate.routing.breaker import BreakerPolicy, CircuitBreaker, Transition

from tests.routing.support import FakeClock


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
