"""Waiting for a skipped backend whose breaker reopens before the request's deadline."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from imagegate import AllBackendsFailed, ImageService
from imagegate.config import Settings
from imagegate.testing import Knobs
from structlog.testing import capture_logs

from tests.routing.support import (
    REQUEST,
    SLACK_S,
    FakeClock,
    a1111,
    attempt_tasks,
    closed_port,
    eventually,
    outcomes,
    settings_for,
)

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
