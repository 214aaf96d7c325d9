"""ImageService routing over real loopback sockets: A1111 emulators, a FaultProxy, black holes.

Fault timeouts are fractions of a second, set through the same config keys users set; the
breakers' clock and the retry sleep are injected where a test would otherwise wait.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from imagegate import AllBackendsFailed, ImageRequest, ImageService
from imagegate.config import Settings
from imagegate.testing import FaultProxy, Knobs, LocalCA, serve_app
from imagegate.testing import a1111 as a1111_emulator
from structlog.testing import capture_logs

from tests.conftest import make_settings

REQUEST = ImageRequest(prompt="a lighthouse at dusk", width=64, height=64)
CONNECT_S = 0.3
SLACK_S = 0.5  # generous bound for "small overhead" on a busy CI machine


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def a1111(name: str, url: str, priority: int = 0, **keys: Any) -> dict[str, Any]:
    table = {"name": name, "kind": "a1111", "base_url": url, "priority": priority}
    return {**table, "max_concurrency": 8, "queue": False, **keys}


def settings_for(tmp_path: Path, *backends: dict[str, Any], **service: Any) -> Settings:
    return make_settings(list(backends), service={"probe_interval_s": 3600, **service}, tmp_path=tmp_path)


def outcomes(attempts: list[Any]) -> list[tuple[str, str]]:
    return [(a.backend, a.outcome) for a in attempts]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(check: Callable[[], bool], timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def attempt_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("imagegate-")]


@pytest.fixture
def p_knobs() -> Knobs:
    return Knobs()


@pytest.fixture
async def primary_url(p_knobs: Knobs) -> AsyncIterator[str]:
    async with serve_app(a1111_emulator.create_app(knobs=p_knobs)) as url:
        yield url


@pytest.fixture
async def primary_tls_url(p_knobs: Knobs, local_ca: LocalCA) -> AsyncIterator[str]:
    async with serve_app(a1111_emulator.create_app(knobs=p_knobs), tls=local_ca) as url:
        yield url


@pytest.fixture
async def holed(primary_tls_url: str) -> AsyncIterator[FaultProxy]:
    """The TLS primary behind a proxy that black-holes the handshake."""
    async with FaultProxy(primary_tls_url, mode="tls_blackhole") as proxy:
        yield proxy


def holed_primary(proxy: FaultProxy, local_ca: LocalCA) -> dict[str, Any]:
    return a1111("primary", proxy.url, 0, connect_timeout_s=CONNECT_S, ca_bundle=local_ca.ca_file)


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
        start = time.monotonic()
        second = await service.generate(REQUEST)
        assert time.monotonic() - start < 0.2  # no handshake wait at all
        assert second.backend == "secondary"
        skipped = second.attempts[0]
        assert (skipped.backend, skipped.outcome) == ("primary", "skipped")
        assert skipped.error and skipped.error.startswith("circuit open for ")
        assert holed.connections == connections  # skipped without a network call

        holed.mode = "pass"
        await eventually(lambda: service.breaker("primary").state == "closed", timeout=3.0)
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


# -- waiting for a skipped backend that comes back before the deadline ------------------------


def refused_then_reopening(tmp_path: Path, secondary_url: str, **service: Any) -> Settings:
    """A refused primary, and a secondary whose breaker opens on its first 500."""
    refused = f"http://127.0.0.1:{closed_port()}"
    return settings_for(
        tmp_path, a1111("primary", refused, 0), a1111("secondary", secondary_url, 1),
        breaker_threshold=1, max_attempts=2, **service,
    )


async def open_secondary(service: ImageService, knobs: Knobs) -> None:
    knobs.arm("status", status=500)
    with pytest.raises(AllBackendsFailed):
        await service.generate(REQUEST, backend="secondary")
    assert service.breaker("secondary").state == "open"


def permits(logs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["backend"], e["permit"]) for e in logs if e["event"] == "attempt_started"]


async def test_request_waits_for_a_skipped_backend_whose_cooldown_ends_before_the_deadline(
    knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    clock, slept = FakeClock(), []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    async with ImageService(refused_then_reopening(tmp_path, a1111_url), clock=clock, sleep=sleep) as service:
        await open_secondary(service, knobs)
        clock.now += 29.7  # 0.3 s of the 30 s cool-down left
        with capture_logs() as logs:
            result = await service.generate(REQUEST, deadline_s=2.0)
        assert service.breaker("secondary").state == "closed"
    assert result.backend == "secondary"
    assert outcomes(result.attempts) == [
        ("primary", "connect_failed"), ("secondary", "skipped"), ("secondary", "waited"), ("secondary", "ok")
    ]
    assert slept == [pytest.approx(0.3)]
    assert result.attempts[2].error == "waited for its breaker: circuit open for 0.3 s more"
    (event,) = [e for e in logs if e["event"] == "waiting_for_backend"]
    assert (event["backend"], event["wait_s"]) == ("secondary", pytest.approx(0.3))
    assert permits(logs) == [("primary", "normal"), ("secondary", "trial")]


@pytest.mark.parametrize(("max_wait_s", "waits"), [(0.0, False), (0.2, False), (0.5, True)])
async def test_max_wait_s_caps_how_long_a_request_waits_for_a_reopening_backend(
    knobs: Knobs, a1111_url: str, tmp_path: Path, max_wait_s: float, waits: bool
) -> None:
    clock, slept = FakeClock(), []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    settings = refused_then_reopening(tmp_path, a1111_url, max_wait_s=max_wait_s)
    async with ImageService(settings, clock=clock, sleep=sleep) as service:
        await open_secondary(service, knobs)
        clock.now += 29.7  # 0.3 s of the cool-down left: more than 0.2 s of waiting allows
        if waits:
            result = await service.generate(REQUEST, deadline_s=2.0)
            assert result.backend == "secondary"
        else:
            with pytest.raises(AllBackendsFailed):
                await service.generate(REQUEST, deadline_s=2.0)
    assert slept == ([pytest.approx(0.3)] if waits else [])


@pytest.mark.parametrize("left_s", [3.0, 1.95])  # past the deadline; inside it but not its margin
async def test_cooldown_ending_after_the_deadline_fails_at_once_without_waiting(
    knobs: Knobs, a1111_url: str, tmp_path: Path, left_s: float
) -> None:
    clock, slept = FakeClock(), []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    async with ImageService(refused_then_reopening(tmp_path, a1111_url), clock=clock, sleep=sleep) as service:
        await open_secondary(service, knobs)
        clock.now += 30.0 - left_s
        start = time.monotonic()
        with capture_logs() as logs, pytest.raises(AllBackendsFailed) as caught:
            await service.generate(REQUEST, deadline_s=2.0)
    assert time.monotonic() - start < SLACK_S
    assert slept == []
    assert outcomes(caught.value.attempts) == [("primary", "connect_failed"), ("secondary", "skipped")]
    assert caught.value.deadline_exceeded is False
    assert not [e for e in logs if e["event"] == "waiting_for_backend"]


async def test_a_backend_disabled_by_auth_is_not_waited_for(
    knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    knobs.arm("status", status=401, path="/sdapi/v1/txt2img")
    async with ImageService(refused_then_reopening(tmp_path, a1111_url), sleep=sleep) as service:
        with pytest.raises(AllBackendsFailed):
            await service.generate(REQUEST, backend="secondary")
        assert service.breaker("secondary").state == "disabled"
        start = time.monotonic()
        with pytest.raises(AllBackendsFailed) as caught:
            await service.generate(REQUEST, deadline_s=2.0)
    assert time.monotonic() - start < SLACK_S and slept == []
    assert outcomes(caught.value.attempts) == [("primary", "connect_failed"), ("secondary", "skipped")]
    assert caught.value.attempts[1].error == "disabled after auth_failed until a probe succeeds"


async def test_a_probe_that_closes_the_breaker_wakes_the_waiting_request_at_once(
    knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    clock, never = FakeClock(), asyncio.Event()

    async def sleep(seconds: float) -> None:
        await never.wait()  # only a breaker transition can end this wait

    async with ImageService(refused_then_reopening(tmp_path, a1111_url), clock=clock, sleep=sleep) as service:
        await open_secondary(service, knobs)
        clock.now += 29.0
        task = asyncio.create_task(service.generate(REQUEST, deadline_s=5.0))
        await eventually(lambda: "imagegate-wait-secondary" in {t.get_name() for t in attempt_tasks()})
        await service.probe_all()
        result = await asyncio.wait_for(task, timeout=2.0)
    assert result.backend == "secondary"
    assert outcomes(result.attempts)[-2:] == [("secondary", "waited"), ("secondary", "ok")]


async def test_while_another_request_holds_the_trial_a_waiting_request_waits_for_its_verdict(
    knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    settings = refused_then_reopening(tmp_path, a1111_url, breaker_cooldown_s=0.3)
    async with ImageService(settings) as service:
        await open_secondary(service, knobs)
        knobs.latency_s = 0.1  # the trial is still in flight when the second request looks
        start = time.monotonic()
        with capture_logs() as logs:
            results = await asyncio.gather(*(service.generate(REQUEST, deadline_s=3.0) for _ in range(2)))
        elapsed = time.monotonic() - start
    assert [r.backend for r in results] == ["secondary", "secondary"]
    assert sorted(p for b, p in permits(logs) if b == "secondary") == ["normal", "trial"]
    assert 0.3 * 0.9 < elapsed < 0.3 + 0.2 + SLACK_S
    second = max(results, key=lambda r: len(r.attempts))
    assert [a.error for a in second.attempts if a.outcome == "waited"][-1] == (
        "waited for its breaker: circuit half-open: a trial request is in flight"
    )


async def test_caller_cancellation_while_waiting_for_a_backend_leaves_no_pending_task(
    knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    clock, never = FakeClock(), asyncio.Event()

    async def sleep(seconds: float) -> None:
        await never.wait()

    async with ImageService(refused_then_reopening(tmp_path, a1111_url), clock=clock, sleep=sleep) as service:
        await open_secondary(service, knobs)
        clock.now += 29.0
        task = asyncio.create_task(service.generate(REQUEST, deadline_s=5.0))
        await eventually(lambda: "imagegate-wait-secondary" in {t.get_name() for t in attempt_tasks()})
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert {t.get_name() for t in attempt_tasks()} == {"imagegate-probe-primary", "imagegate-probe-secondary"}
        assert service.breaker("secondary").state == "open"  # no trial was taken
        assert [h.in_flight for h in service.health()] == [0, 0]
        clock.now += 1.0
        never.set()
        assert (await service.generate(REQUEST, deadline_s=2.0)).backend == "secondary"  # the trial
    assert attempt_tasks() == []


# -- hedging ----------------------------------------------------------------------------------


async def test_hedge_serves_from_the_fast_backend_and_cancels_the_slow_request(
    primary_url: str, p_knobs: Knobs, knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    p_knobs.latency_s = 2.0
    settings = settings_for(
        tmp_path, a1111("slow", primary_url), a1111("fast", a1111_url, 1),
        hedge_after_s=0.1, hedge_budget=1.0,
    )
    with capture_logs() as logs:
        async with ImageService(settings) as service:
            start = time.monotonic()
            result = await service.generate(REQUEST)
            elapsed = time.monotonic() - start
            await eventually(lambda: p_knobs.cancelled == 1)
            assert [h.in_flight for h in service.health()] == [0, 0]
    assert result.backend == "fast"
    assert 0.09 <= elapsed < 0.1 + SLACK_S
    assert sorted((a.backend, a.outcome, a.hedge) for a in result.attempts) == [
        ("fast", "ok", True), ("slow", "cancelled", False)
    ]
    (hedge,) = [e for e in logs if e["event"] == "hedge_started"]
    assert (hedge["backend"], hedge["kind"], hedge["primary"]) == ("fast", "hedge", "slow")
    assert hedge["after_s"] >= 0.09  # the event loop's timer may fire a hair early
    assert knobs.cancelled == 0


async def test_hedge_with_p95_uses_the_observed_latency(
    primary_url: str, p_knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    settings = settings_for(
        tmp_path, a1111("slow", primary_url), a1111("fast", a1111_url, 1), hedge="p95", hedge_budget=1.0
    )
    async with ImageService(settings) as service:
        for _ in range(20):  # 20 samples of a fast primary: p95 is a few ms
            assert (await service.generate(REQUEST)).backend == "slow"
        p_knobs.latency_s = 2.0
        start = time.monotonic()
        result = await service.generate(REQUEST)
    assert result.backend == "fast" and time.monotonic() - start < SLACK_S


async def test_hedges_respect_the_budget_and_the_max_cost(
    primary_url: str, p_knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    p_knobs.latency_s = 0.3
    for service_keys, fast_cost in (({"hedge_budget": 0.0}, 0.0), ({"hedge_max_cost": 1.0}, 5.0)):
        settings = settings_for(
            tmp_path, a1111("slow", primary_url), a1111("fast", a1111_url, 1, cost=fast_cost),
            hedge_after_s=0.05, **{"hedge_budget": 1.0, **service_keys},
        )
        async with ImageService(settings) as service:
            result = await service.generate(REQUEST)
        assert outcomes(result.attempts) == [("slow", "ok")]


async def test_hedge_budget_caps_hedges_at_a_share_of_requests(
    primary_url: str, p_knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    p_knobs.latency_s = 0.15
    settings = settings_for(
        tmp_path, a1111("slow", primary_url), a1111("fast", a1111_url, 1),
        hedge_after_s=0.01, hedge_budget=0.25,
    )
    async with ImageService(settings) as service:
        results = await asyncio.gather(*(service.generate(REQUEST) for _ in range(12)))
    hedged = sum(any(a.hedge for a in r.attempts) for r in results)
    assert hedged == 3  # 12 requests x 0.25


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


# -- events and lifecycle ---------------------------------------------------------------------


async def test_every_attempt_skip_and_transition_is_one_event(
    blackhole_url: str, a1111_url: str, tmp_path: Path
) -> None:
    settings = settings_for(
        tmp_path, a1111("holed", blackhole_url, 0, connect_timeout_s=0.2), a1111("ok", a1111_url, 1)
    )
    with capture_logs() as logs:
        async with ImageService(settings) as service:
            await service.generate(REQUEST)
            await service.generate(REQUEST)
    events = [(e["event"], e.get("backend"), e.get("kind")) for e in logs]
    assert ("backend_attempt", "holed", "handshake_timeout") in events
    assert ("breaker_transition", "holed", "closed_to_open") in events
    assert ("backend_skipped", "holed", "circuit_open") in events
    assert events.count(("backend_attempt", "ok", "ok")) == 2
    for e in logs:
        if e["event"] in ("backend_attempt", "image_generated"):
            assert isinstance(e["elapsed_s"], float)


async def test_service_lifecycle_starts_and_stops_probes(
    a1111_url: str, tmp_path: Path
) -> None:
    service = ImageService(settings_for(tmp_path, a1111("a", a1111_url), probe_interval_s=0.02))
    await service.start()
    await service.start()  # idempotent
    await eventually(lambda: service.health()[0].last_probe_at is not None)
    await service.aclose()
    assert attempt_tasks() == []
    with pytest.raises(RuntimeError, match="not started"):
        await service.generate(REQUEST)
