"""One request's run over real loopback sockets: failover on a handshake black hole, cool-downs
(429, 503, auth), retries, the deadline, and never skipping every backend."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from imagegate import AllBackendsFailed, ImageService
from imagegate.testing import FaultProxy, Knobs, LocalCA

from tests.routing.support import (
    CONNECT_S,
    REQUEST,
    SLACK_S,
    FakeClock,
    a1111,
    closed_port,
    eventually,
    holed_primary,
    outcomes,
    settings_for,
)

# -- failover on a handshake black hole -------------------------------------------------------


async def test_handshake_blackhole_fails_over_opens_breaker_and_a_probe_brings_it_back(
    holed: FaultProxy, local_ca: LocalCA, a1111_url: str, tmp_path: Path
) -> None:
    settings = settings_for(
        tmp_path, holed_primary(holed, local_ca), a1111("secondary", a1111_url, 1),
        probe_interval_s=0.2, probe_timeout_s=0.5,
    )
    async with ImageService(settings) as service:
        start = time.monotonic()
        first = await service.generate(REQUEST)
        cold = time.monotonic() - start
        assert first.backend == "secondary"
        assert outcomes(first.attempts) == [("primary", "handshake_timeout"), ("secondary", "ok")]
        assert CONNECT_S * 0.9 < cold < CONNECT_S + SLACK_S
        assert service.breaker("primary").state == "open"

        connections = holed.connections
        second = await service.generate(REQUEST)  # no handshake wait at all: no network call
        assert second.backend == "secondary"
        skipped = second.attempts[0]
        assert (skipped.backend, skipped.outcome) == ("primary", "skipped")
        assert skipped.error and skipped.error.startswith("circuit open for ")
        assert holed.connections == connections  # skipped without a network call

        holed.mode = "pass"
        await eventually(lambda: service.breaker("primary").state == "closed", timeout=10.0)
        third = await service.generate(REQUEST)
        assert third.backend == "primary"
        (row,) = [h for h in service.health() if h.name == "primary"]
        assert row.ok is True and row.last_probe_at is not None and "connect_s" in row.timings


async def test_half_open_trial_request_closes_the_breaker_after_cooldown(
    holed: FaultProxy, local_ca: LocalCA, a1111_url: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    settings = settings_for(tmp_path, holed_primary(holed, local_ca), a1111("secondary", a1111_url, 1))
    async with ImageService(settings, clock=clock) as service:
        assert (await service.generate(REQUEST)).backend == "secondary"
        assert service.breaker("primary").remaining() == 30.0
        holed.mode = "pass"
        clock.now += 29.0
        assert (await service.generate(REQUEST)).backend == "secondary"
        clock.now += 1.0
        assert service.health()[0].state == "half_open"
        trial = await service.generate(REQUEST)
        assert (trial.backend, outcomes(trial.attempts)) == ("primary", [("primary", "ok")])
        assert service.breaker("primary").state == "closed"


async def test_failed_trial_reopens_for_twice_the_cooldown(
    holed: FaultProxy, local_ca: LocalCA, a1111_url: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    settings = settings_for(tmp_path, holed_primary(holed, local_ca), a1111("secondary", a1111_url, 1))
    async with ImageService(settings, clock=clock) as service:
        await service.generate(REQUEST)
        clock.now += 30.0
        result = await service.generate(REQUEST)
        assert outcomes(result.attempts)[0] == ("primary", "handshake_timeout")
        assert service.breaker("primary").remaining() == 60.0


# -- cool-downs: 429, 503, auth ---------------------------------------------------------------


async def test_rate_limited_with_long_retry_after_skips_the_backend_for_that_long(
    primary_url: str, p_knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    p_knobs.arm("status", status=429, headers={"Retry-After": "7"})
    settings = settings_for(tmp_path, a1111("primary", primary_url), a1111("secondary", a1111_url, 1))
    async with ImageService(settings, clock=clock) as service:
        first = await service.generate(REQUEST)
        assert outcomes(first.attempts) == [("primary", "rate_limited"), ("secondary", "ok")]
        clock.now += 6.9
        second = await service.generate(REQUEST)
        assert second.attempts[0].error == "circuit open for 0.1 s more"
        clock.now += 0.1
        assert (await service.generate(REQUEST)).backend == "primary"


async def test_rate_limited_with_short_retry_after_is_retried_on_the_same_backend(
    primary_url: str, p_knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    p_knobs.arm("status", status=429, headers={"Retry-After": "1"})
    settings = settings_for(
        tmp_path, a1111("primary", primary_url), a1111("secondary", a1111_url, 1),
        max_retry_after_s=2.0, retry_backoff_s=0.05,
    )
    async with ImageService(settings, sleep=sleep, rng=random.Random(3)) as service:
        result = await service.generate(REQUEST)
    assert outcomes(result.attempts) == [("primary", "rate_limited"), ("primary", "ok")]
    (delay,) = slept
    assert 1.0 <= delay <= 1.05  # Retry-After plus full jitter


async def test_refused_connection_is_retried_with_backoff_counted_in_max_attempts(
    primary_url: str, a1111_url: str, tmp_path: Path
) -> None:
    slept: list[float] = []
    async with FaultProxy(primary_url, mode="refuse") as proxy:

        async def sleep(seconds: float) -> None:  # the backend comes back during the backoff
            slept.append(seconds)
            proxy.mode = "pass"

        settings = settings_for(
            tmp_path, a1111("primary", proxy.url), a1111("secondary", a1111_url, 1), retry_backoff_s=0.05
        )
        async with ImageService(settings, sleep=sleep) as service:
            result = await service.generate(REQUEST)
    assert outcomes(result.attempts) == [("primary", "connect_failed"), ("primary", "ok")]
    assert len(slept) == 1 and 0 <= slept[0] <= 0.05


async def test_refused_everywhere_keeps_one_attempt_for_failover(
    a1111_url: str, tmp_path: Path
) -> None:
    async def sleep(seconds: float) -> None:
        pass

    url = f"http://127.0.0.1:{closed_port()}"
    settings = settings_for(
        tmp_path, a1111("primary", url), a1111("secondary", a1111_url, 1), max_attempts=2
    )
    async with ImageService(settings, sleep=sleep) as service:
        result = await service.generate(REQUEST)
    assert outcomes(result.attempts) == [("primary", "connect_failed"), ("secondary", "ok")]


async def test_unavailable_503_loading_fails_over_and_cools_down_for_retry_after(
    primary_url: str, p_knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    body = {"error": "Model is currently loading", "estimated_time": 20.0}
    p_knobs.arm("status", status=503, headers={"Retry-After": "20"}, body=body)
    settings = settings_for(tmp_path, a1111("primary", primary_url), a1111("secondary", a1111_url, 1))
    async with ImageService(settings, clock=clock) as service:
        result = await service.generate(REQUEST)
        assert outcomes(result.attempts) == [("primary", "unavailable"), ("secondary", "ok")]
        assert result.attempts[0].status == 503
        assert service.breaker("primary").remaining() == 20.0
        (row,) = [h for h in service.health() if h.name == "primary"]
        assert (row.state, row.last_error_kind) == ("open", "unavailable")
        assert row.open_until is not None and row.open_until > time.time() + 19


async def test_auth_failure_disables_the_backend_until_a_probe_succeeds(
    primary_url: str, p_knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    p_knobs.arm("status", status=401, path="/sdapi/v1/txt2img")  # the probe path still works
    settings = settings_for(tmp_path, a1111("primary", primary_url), a1111("secondary", a1111_url, 1))
    async with ImageService(settings) as service:
        first = await service.generate(REQUEST)
        assert outcomes(first.attempts) == [("primary", "auth_failed"), ("secondary", "ok")]
        second = await service.generate(REQUEST)
        assert second.attempts[0].error == "disabled after auth_failed until a probe succeeds"
        assert service.health()[0].state == "disabled"
        table = await service.probe_all()
        assert [h.state for h in table] == ["closed", "closed"]
        assert (await service.generate(REQUEST)).backend == "primary"


# -- all down, deadlines, never skipping everything -------------------------------------------


async def test_all_down_gives_all_backends_failed_with_the_whole_trail_within_the_deadline(
    blackhole_url: str, knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    knobs.arm("stall")
    refused = f"http://127.0.0.1:{closed_port()}"
    settings = settings_for(
        tmp_path,
        a1111("holed", blackhole_url, 0, connect_timeout_s=0.2),
        a1111("refused", refused, 1),
        a1111("stalled", a1111_url, 2),
        a1111("spare", a1111_url, 3),
    )
    async with ImageService(settings) as service:
        start = time.monotonic()
        with pytest.raises(AllBackendsFailed) as caught:
            await service.generate(REQUEST, deadline_s=1.0)
        elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 1.0 + SLACK_S
    exc = caught.value
    assert outcomes(exc.attempts) == [
        ("holed", "handshake_timeout"),
        ("refused", "connect_failed"),
        ("stalled", "generation_timeout"),
        ("spare", "skipped"),
    ]
    assert exc.attempts[-1].error in ("deadline spent", "max_attempts (3) reached")
    assert exc.deadline_exceeded is True


async def test_max_attempts_lists_untried_backends_as_skipped(
    primary_url: str, p_knobs: Knobs, knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    p_knobs.arm("status", status=500)
    knobs.arm("status", status=500)
    settings = settings_for(
        tmp_path, a1111("a", primary_url), a1111("b", a1111_url, 1), a1111("c", a1111_url, 2),
        max_attempts=2,
    )
    async with ImageService(settings) as service:
        with pytest.raises(AllBackendsFailed) as caught:
            await service.generate(REQUEST)
    assert outcomes(caught.value.attempts) == [("a", "server_error"), ("b", "server_error"), ("c", "skipped")]
    assert caught.value.attempts[-1].error == "max_attempts (2) reached"
    assert caught.value.deadline_exceeded is False


async def test_when_every_breaker_is_open_the_soonest_to_reopen_is_tried(
    blackhole_url: str, tmp_path: Path, primary_url: str, p_knobs: Knobs
) -> None:
    clock = FakeClock()
    settings = settings_for(
        tmp_path, a1111("holed", blackhole_url, 0, connect_timeout_s=0.2), a1111("flaky", primary_url, 1),
        breaker_threshold=1,
    )
    p_knobs.arm("not_image")
    async with ImageService(settings, clock=clock) as service:
        with pytest.raises(AllBackendsFailed):
            await service.generate(REQUEST, backend="flaky")  # bad_response: open until +30
        clock.now += 5
        with pytest.raises(AllBackendsFailed):
            await service.generate(REQUEST, backend="holed")  # open until +35
        clock.now += 1
        assert [h.state for h in service.health()] == ["open", "open"]
        result = await service.generate(REQUEST)
        assert service.breaker("flaky").state == "closed"
    assert outcomes(result.attempts) == [("holed", "skipped"), ("flaky", "ok")]


async def test_each_attempt_gets_only_what_is_left_of_the_deadline(
    primary_url: str, p_knobs: Knobs, tmp_path: Path
) -> None:
    p_knobs.latency_s = 5.0
    settings = settings_for(tmp_path, a1111("slow", primary_url, 0, read_timeout_s=60))
    async with ImageService(settings) as service:
        start = time.monotonic()
        with pytest.raises(AllBackendsFailed) as caught:
            await service.generate(REQUEST, deadline_s=0.4)
    assert time.monotonic() - start < 0.4 + SLACK_S
    assert outcomes(caught.value.attempts) == [("slow", "generation_timeout")]
    await eventually(lambda: p_knobs.cancelled == 1)


async def test_named_backend_is_tried_even_with_its_breaker_open(
    blackhole_url: str, a1111_url: str, tmp_path: Path
) -> None:
    settings = settings_for(
        tmp_path, a1111("holed", blackhole_url, 0, connect_timeout_s=0.2), a1111("ok", a1111_url, 1)
    )
    async with ImageService(settings) as service:
        await service.generate(REQUEST)
        assert service.breaker("holed").state == "open"
        with pytest.raises(AllBackendsFailed) as caught:
            await service.generate(REQUEST, backend="holed")
    assert outcomes(caught.value.attempts) == [("holed", "handshake_timeout")]
