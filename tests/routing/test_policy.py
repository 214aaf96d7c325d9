"""The routing policy: concurrency slots (spill-over, queueing), candidate order, and
admission over several breakers (hypothesis)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imagegate import ImageService
from imagegate.routing.breaker import BreakerPolicy, CircuitBreaker, Permit
from imagegate.routing.policy import Admission, BackendState, Skip
from imagegate.testing import Knobs

from tests.routing.support import (
    REQUEST,
    FakeClock,
    a1111,
    attempt_tasks,
    eventually,
    settings_for,
)

# -- concurrency ------------------------------------------------------------------------------


async def test_saturated_backend_spills_over_to_the_next_candidate(
    primary_url: str, p_knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    p_knobs.latency_s = 0.3
    settings = settings_for(
        tmp_path, a1111("small", primary_url, 0, max_concurrency=1), a1111("big", a1111_url, 1)
    )
    async with ImageService(settings) as service:
        first = asyncio.create_task(service.generate(REQUEST))
        await eventually(lambda: service.health()[0].in_flight == 1)
        second = await service.generate(REQUEST)
        assert second.backend == "big"
        assert second.attempts[0].error == "saturated: 1/1 in flight"
        assert (await first).backend == "small"


async def test_queue_true_waits_for_a_slot_instead(
    primary_url: str, p_knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    p_knobs.latency_s = 0.2
    settings = settings_for(
        tmp_path, a1111("small", primary_url, 0, max_concurrency=1, queue=True), a1111("big", a1111_url, 1)
    )
    async with ImageService(settings) as service:
        results = await asyncio.gather(service.generate(REQUEST), service.generate(REQUEST))
    assert [r.backend for r in results] == ["small", "small"]
    assert max(r.elapsed_s for r in results) >= 0.4


async def test_caller_cancellation_leaves_no_pending_tasks(
    primary_url: str, p_knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    p_knobs.latency_s = 5.0
    settings = settings_for(
        tmp_path, a1111("slow", primary_url), a1111("fast", a1111_url, 1, max_concurrency=1),
        probe_interval_s=0.05,
    )
    async with ImageService(settings) as service:
        task = asyncio.create_task(service.generate(REQUEST))
        await eventually(lambda: service.health()[0].in_flight == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert {t.get_name() for t in attempt_tasks()} == {
            "imagegate-probe-slow", "imagegate-probe-fast"
        }  # no attempt task is left, only the service's own probe loop
        assert [h.in_flight for h in service.health()] == [0, 0]
        await eventually(lambda: p_knobs.cancelled == 1)
    assert attempt_tasks() == []  # the probe loop stopped too


# -- ordering ---------------------------------------------------------------------------------


async def test_round_robin_alternates_among_equal_priorities(
    primary_url: str, a1111_url: str, tmp_path: Path
) -> None:
    settings = settings_for(
        tmp_path, a1111("a", primary_url, 0), a1111("b", a1111_url, 0), a1111("z", a1111_url, 9),
        order="round_robin",
    )
    async with ImageService(settings) as service:
        served = [(await service.generate(REQUEST)).backend for _ in range(4)]
    assert sorted(served) == ["a", "a", "b", "b"] and served[0] != served[1]


async def test_latency_order_prefers_the_faster_backend(
    primary_url: str, p_knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    p_knobs.latency_s = 0.1
    settings = settings_for(tmp_path, a1111("slow", primary_url, 0), a1111("quick", a1111_url, 1), order="latency")
    async with ImageService(settings) as service:
        await service.generate(REQUEST, backend="slow")
        await service.generate(REQUEST, backend="quick")
        assert (await service.generate(REQUEST)).backend == "quick"
        row = {h.name: h for h in service.health()}
        assert row["slow"].latency_ewma_s > row["quick"].latency_ewma_s  # type: ignore[operator]


async def test_priority_order_with_unmeasured_backends(
    primary_url: str, a1111_url: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, a1111("second", a1111_url, 5), a1111("first", primary_url, 1))
    async with ImageService(settings) as service:
        assert (await service.generate(REQUEST)).backend == "first"


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
