"""Handshake racing over real sockets: a TLS black hole or a slow handshake (FaultProxy) as the
primary, real A1111 emulators behind it; the generation is sent once, to the first backend
whose connection is ready. Every bound on time is generous: a lower bound that is exact
(the race delay) and an upper bound far from the connect timeout it beats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from imagegate import AllBackendsFailed, ImageService
from imagegate.events import Event, FailoverEvent
from imagegate.routing.breaker import CircuitBreaker
from imagegate.routing.policy import BackendState
from imagegate.routing.race import MIN_HANDSHAKE_SAMPLES, RACE_FLOOR_S, RACE_MIN_S, race_delay
from imagegate.server.metrics import ServerMetrics
from imagegate.testing import FaultProxy, Knobs, LocalCA, serve_app
from imagegate.testing import a1111 as a1111_emulator
from structlog.testing import capture_logs

from tests.routing.support import REQUEST, SLACK_S, a1111, outcomes, settings_for

RACE_S = 0.2
LONG_CONNECT_S = 10.0  # the cold case: a Space-like connect budget


def generations(knobs: Knobs) -> list[str]:
    return [r.path for r in knobs.requests if r.path == "/sdapi/v1/txt2img"]


def primary(url: str, local_ca: LocalCA, connect_s: float = LONG_CONNECT_S) -> dict[str, Any]:
    return a1111("primary", url, 0, connect_timeout_s=connect_s, ca_bundle=local_ca.ca_file)


@pytest.fixture
def s_knobs() -> Knobs:
    return Knobs()


@pytest.fixture
async def secondary_tls_url(s_knobs: Knobs, local_ca: LocalCA) -> AsyncIterator[str]:
    async with serve_app(a1111_emulator.create_app(knobs=s_knobs), tls=local_ca) as url:
        yield url


# -- the cold failover the issue is about -------------------------------------------------------


async def test_a_tls_black_hole_with_a_10_s_connect_timeout_is_bypassed_in_about_race_after_s(
    holed: FaultProxy, p_knobs: Knobs, local_ca: LocalCA, a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, primary(holed.url, local_ca), a1111("secondary", a1111_url, 1),
                            race_after_s=RACE_S)
    async with ImageService(settings) as service:
        start = time.monotonic()
        result = await service.generate(REQUEST)
        elapsed = time.monotonic() - start
        assert result.backend == "secondary"
        assert outcomes(result.attempts) == [("primary", "raced"), ("secondary", "ok")]
        assert RACE_S <= elapsed < RACE_S + SLACK_S * 2  # not 10 s: the race delay and a little
        raced = result.attempts[0]
        assert raced.timings["handshake_s"] >= RACE_S and raced.timings["race_after_s"] == RACE_S
        assert raced.timings["winner_handshake_s"] < SLACK_S
        assert raced.error and "secondary was ready first" in raced.error and "still connecting" in raced.error
        assert "handshake_s" in result.attempts[1].timings  # the winner's own, in its row
        assert holed.connections == 1 and p_knobs.requests == []  # connected, never sent to
        assert len(generations(knobs)) == 1
    metrics = ServerMetrics(list)  # what /metrics says of it
    metrics.observe_generation(result.backend, "ok", elapsed, result.attempts)
    text = metrics.render().decode()
    assert 'imagegate_backend_attempts_total{backend="primary",outcome="raced"} 1.0' in text
    assert 'imagegate_backend_handshake_seconds_count{backend="secondary"} 1.0' in text
    assert 'imagegate_backend_handshake_seconds_count{backend="primary"}' not in text


async def test_the_losers_failed_handshake_still_opens_its_breaker(
    holed: FaultProxy, local_ca: LocalCA, a1111_url: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, primary(holed.url, local_ca, connect_s=0.6),
                            a1111("secondary", a1111_url, 1), race_after_s=RACE_S)
    async with ImageService(settings) as service:
        with capture_logs() as logs:
            first = await service.generate(REQUEST)
            assert outcomes(first.attempts) == [("primary", "raced"), ("secondary", "ok")]
            assert service.breaker("primary").state == "closed"  # still connecting, no verdict yet
            assert await service.settled(timeout=5.0)
        assert service.breaker("primary").state == "open"
        (row,) = [h for h in service.health() if h.name == "primary"]
        assert row.last_error_kind == "handshake_timeout"
        failed = [e for e in logs if e["event"] == "race_loser_failed"]
        assert failed and failed[0]["kind"] == "handshake_timeout" and failed[0]["elapsed_s"] >= 0.6
        second = await service.generate(REQUEST)  # the breaker skips it now: no race, no wait
        assert outcomes(second.attempts) == [("primary", "skipped"), ("secondary", "ok")]
        assert holed.connections == 1


async def test_a_space_stuck_in_its_tls_handshake_is_bypassed_the_same_way(
    blackhole_url: str, a1111_url: str, tmp_path: Path
) -> None:
    space = {"name": "space", "kind": "hf_space", "src": blackhole_url, "api_name": "/generate",
             "connect_timeout_s": 2.0, "priority": 0}
    settings = settings_for(tmp_path, space, a1111("secondary", a1111_url, 1), race_after_s=RACE_S)
    async with ImageService(settings) as service:
        start = time.monotonic()
        result = await service.generate(REQUEST)
        assert time.monotonic() - start < 2.0  # the gradio client is still being built
        assert outcomes(result.attempts) == [("space", "raced"), ("secondary", "ok")]
        assert await service.settled(timeout=5.0)
        assert service.breaker("space").state == "open"  # its handshake timed out, in the background


async def test_a_slow_handshake_loses_to_a_ready_secondary_and_is_sent_no_generation(
    primary_tls_url: str, p_knobs: Knobs, local_ca: LocalCA, a1111_url: str, tmp_path: Path
) -> None:
    async with FaultProxy(primary_tls_url, mode="slow_handshake", latency_s=1.5) as slow:
        settings = settings_for(tmp_path, primary(slow.url, local_ca), a1111("secondary", a1111_url, 1),
                                race_after_s=RACE_S)
        async with ImageService(settings) as service:
            start = time.monotonic()
            result = await service.generate(REQUEST)
            assert time.monotonic() - start < 1.5  # served before the primary could have been
            assert outcomes(result.attempts) == [("primary", "raced"), ("secondary", "ok")]
            assert await service.settled(timeout=5.0)  # the primary's handshake completes later
            assert p_knobs.requests == []  # ... and nothing was sent on it
            assert service.breaker("primary").state == "closed"  # slow is not failed
            # the late connection went back to the pool: the next request takes it, at once
            again = await service.generate(REQUEST)
            assert outcomes(again.attempts) == [("primary", "ok")]
            assert again.attempts[0].timings["handshake_s"] < 1.0
            assert slow.connections == 1 and len(generations(p_knobs)) == 1


async def test_a_preferred_backend_that_finishes_its_handshake_first_still_wins(
    primary_tls_url: str, p_knobs: Knobs, secondary_tls_url: str, s_knobs: Knobs, local_ca: LocalCA,
    tmp_path: Path,
) -> None:
    async with (
        FaultProxy(primary_tls_url, mode="slow_handshake", latency_s=0.6) as first,
        FaultProxy(secondary_tls_url, mode="slow_handshake", latency_s=3.0) as second,
    ):
        backends = (primary(first.url, local_ca),
                    a1111("secondary", second.url, 1, connect_timeout_s=LONG_CONNECT_S, ca_bundle=str(local_ca.ca_file)))
        settings = settings_for(tmp_path, *backends, race_after_s=RACE_S)
        async with ImageService(settings) as service:
            result = await service.generate(REQUEST)
            assert result.backend == "primary"
            assert outcomes(result.attempts) == [("secondary", "raced"), ("primary", "ok")]
            assert second.connections == 1  # it did race: it was connecting
            assert s_knobs.requests == [] and len(generations(p_knobs)) == 1


async def test_when_the_winner_fails_the_loser_finishes_the_handshake_it_started(
    primary_tls_url: str, p_knobs: Knobs, local_ca: LocalCA, a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    knobs.arm("status", status=500)
    async with FaultProxy(primary_tls_url, mode="slow_handshake", latency_s=1.0) as slow:
        settings = settings_for(tmp_path, primary(slow.url, local_ca), a1111("secondary", a1111_url, 1),
                                race_after_s=RACE_S)
        async with ImageService(settings) as service:
            result = await service.generate(REQUEST)
            assert outcomes(result.attempts) == [
                ("primary", "raced"), ("secondary", "server_error"), ("primary", "ok"),
            ]
            assert slow.connections == 1  # the primary's first handshake was taken over, not redone
            assert len(generations(p_knobs)) == 1


# -- what does not change ------------------------------------------------------------------------


@pytest.mark.parametrize("off", [0, False])
async def test_racing_off_restores_waiting_for_the_connect_timeout(
    off: object, holed: FaultProxy, local_ca: LocalCA, a1111_url: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, primary(holed.url, local_ca, connect_s=0.4),
                            a1111("secondary", a1111_url, 1), race_after_s=off)
    async with ImageService(settings) as service:
        start = time.monotonic()
        result = await service.generate(REQUEST)
        assert time.monotonic() - start >= 0.4
        assert outcomes(result.attempts) == [("primary", "handshake_timeout"), ("secondary", "ok")]
        assert all("handshake_s" not in a.timings for a in result.attempts)  # no connect step at all


async def test_a_race_delay_not_shorter_than_the_connect_timeout_races_nothing(
    holed: FaultProxy, local_ca: LocalCA, a1111_url: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, primary(holed.url, local_ca, connect_s=0.3),
                            a1111("secondary", a1111_url, 1), race_after_s=0.3)
    async with ImageService(settings) as service:
        result = await service.generate(REQUEST)
        assert outcomes(result.attempts) == [("primary", "handshake_timeout"), ("secondary", "ok")]


async def test_with_one_backend_nothing_changes(
    holed: FaultProxy, local_ca: LocalCA, a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, primary(holed.url, local_ca, connect_s=0.4), race_after_s=0.05)
    async with ImageService(settings) as service:
        start = time.monotonic()
        with pytest.raises(AllBackendsFailed) as failed:
            await service.generate(REQUEST)
        assert time.monotonic() - start >= 0.4
        assert outcomes(failed.value.attempts) == [("primary", "handshake_timeout")]
    alone = settings_for(tmp_path, a1111("only", a1111_url), race_after_s=0.05)
    async with ImageService(alone) as service:
        result = await service.generate(REQUEST)
        assert outcomes(result.attempts) == [("only", "ok")]
        assert "handshake_s" not in result.attempts[0].timings


async def test_a_race_never_outlives_the_deadline(
    holed: FaultProxy, primary_tls_url: str, local_ca: LocalCA, tmp_path: Path
) -> None:
    async with FaultProxy(primary_tls_url, mode="tls_blackhole") as also_holed:
        backends = (primary(holed.url, local_ca),
                    a1111("secondary", also_holed.url, 1, connect_timeout_s=LONG_CONNECT_S,
                          ca_bundle=str(local_ca.ca_file)))
        settings = settings_for(tmp_path, *backends, race_after_s=RACE_S, deadline_s=1.0)
        async with ImageService(settings) as service:
            start = time.monotonic()
            with pytest.raises(AllBackendsFailed) as failed:
                await service.generate(REQUEST)
            assert 1.0 <= time.monotonic() - start < 1.0 + SLACK_S * 2
            assert failed.value.deadline_exceeded
            assert sorted(outcomes(failed.value.attempts)) == [  # both end at the deadline, in either order
                ("primary", "generation_timeout"), ("secondary", "generation_timeout"),
            ]
            assert all("deadline ran out while connecting" in (a.error or "") for a in failed.value.attempts)
            assert also_holed.connections == 1
            assert await service.settled(timeout=0.1)  # nothing was left connecting


async def test_a_listener_hears_the_race_as_a_failover(
    holed: FaultProxy, local_ca: LocalCA, a1111_url: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, primary(holed.url, local_ca), a1111("secondary", a1111_url, 1),
                            race_after_s=RACE_S)
    heard: list[Event] = []
    async with ImageService(settings) as service:
        await service.generate(REQUEST, on_event=heard.append)
    (failover,) = [e for e in heard if isinstance(e, FailoverEvent)]
    assert (failover.from_, failover.to, failover.hedge) == ("primary", "secondary", False)
    assert "ready first" in failover.reason
    assert [e.type for e in heard][-1] == "completed"


async def test_closing_the_service_cancels_the_losers_handshakes(
    holed: FaultProxy, local_ca: LocalCA, a1111_url: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, primary(holed.url, local_ca), a1111("secondary", a1111_url, 1),
                            race_after_s=RACE_S)
    async with ImageService(settings) as service:
        await service.generate(REQUEST)
        assert not await service.settled(timeout=0.05)  # the 10 s handshake is still going on
        breaker = service.breaker("primary")
    await asyncio.sleep(0)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("imagegate-connect-")]
    assert breaker.state == "closed"  # cancelled: no verdict


# -- the race delay ------------------------------------------------------------------------------


def _state(handshakes: list[float]) -> BackendState:
    state = BackendState("b", "a1111", CircuitBreaker())
    for seconds in handshakes:
        state.observe_handshake(seconds)
    return state


def test_auto_uses_the_floor_until_enough_handshakes_then_their_99th_percentile() -> None:
    few = _state([2.0] * (MIN_HANDSHAKE_SAMPLES - 1))
    assert race_delay("auto", few, 10.0) == RACE_FLOOR_S
    slow_space = _state([1.0] * 90 + [3.0] * 10)
    assert race_delay("auto", slow_space, 10.0) == 3.0  # a cold Space's normal is raced later
    fast = _state([0.002] * MIN_HANDSHAKE_SAMPLES)
    assert race_delay("auto", fast, 10.0) == RACE_MIN_S  # RFC 8305's minimum, not 2 ms


def test_a_delay_is_none_when_off_or_not_before_the_connect_timeout() -> None:
    state = _state([])
    assert race_delay(0.0, state, 10.0) is None
    assert race_delay(0.3, state, 0.3) is None
    assert race_delay("auto", state, 0.5) is None  # the floor is the connect timeout: no race
    assert race_delay(0.25, state, 10.0) == 0.25
