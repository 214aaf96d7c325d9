"""What a listener hears of a request: started, failover (also a hedge), the slot queue, and
exactly one terminal event; ``ImageService.stream`` yields the same."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from imagegate import AllBackendsFailed, ImageService
from imagegate.events import (
    CancelledEvent,
    CompletedEvent,
    FailedEvent,
    FailoverEvent,
    QueuedEvent,
    StartedEvent,
)
from imagegate.testing import Knobs

from tests.routing.support import REQUEST, a1111, closed_port, eventually, settings_for


def kinds(events: list[Any]) -> list[str]:
    return [e.type for e in events]


async def test_a_plain_success_is_started_then_completed_with_the_result(
    a1111_url: str, tmp_path: Path
) -> None:
    seen: list[Any] = []
    async with ImageService(settings_for(tmp_path, a1111("only", a1111_url))) as service:
        result = await service.generate(REQUEST, on_event=seen.append)
    assert kinds(seen) == ["started", "completed"]
    started, completed = seen
    assert isinstance(started, StartedEvent) and (started.backend, started.attempt) == ("only", 1)
    assert isinstance(completed, CompletedEvent) and completed.result is result


async def test_a_failed_backend_shows_as_a_failover_to_the_next(a1111_url: str, tmp_path: Path) -> None:
    dead = a1111("dead", f"http://127.0.0.1:{closed_port()}", 0)
    settings = settings_for(tmp_path, dead, a1111("alive", a1111_url, 1), retry_backoff_s=0)
    seen: list[Any] = []
    async with ImageService(settings) as service:
        result = await service.generate(REQUEST, on_event=seen.append)
    assert result.backend == "alive"
    failovers = [e for e in seen if isinstance(e, FailoverEvent)]
    assert len(failovers) == 1
    (fo,) = failovers
    assert (fo.from_, fo.to, fo.error_kind, fo.hedge) == ("dead", "alive", "connect_failed", False)
    assert "refused" in fo.reason
    assert kinds(seen)[-2:] == ["started", "completed"]
    assert [e.backend for e in seen if isinstance(e, StartedEvent)][-1] == "alive"


async def test_a_hedge_is_a_failover_that_races(
    primary_url: str, p_knobs: Knobs, a1111_url: str, tmp_path: Path
) -> None:
    p_knobs.latency_s = 2.0
    settings = settings_for(
        tmp_path, a1111("slow", primary_url), a1111("fast", a1111_url, 1),
        hedge_after_s=0.1, hedge_budget=1.0,
    )
    seen: list[Any] = []
    async with ImageService(settings) as service:
        result = await service.generate(REQUEST, on_event=seen.append)
    assert result.backend == "fast"
    (fo,) = [e for e in seen if isinstance(e, FailoverEvent)]
    assert (fo.from_, fo.to, fo.hedge) == ("slow", "fast", True)
    started = [(e.backend, e.hedge) for e in seen if isinstance(e, StartedEvent)]
    assert started == [("slow", False), ("fast", True)]
    assert kinds(seen)[-1] == "completed"


async def test_when_every_backend_fails_the_last_event_is_failed_with_the_trail(tmp_path: Path) -> None:
    dead = a1111("dead", f"http://127.0.0.1:{closed_port()}")
    seen: list[Any] = []
    async with ImageService(settings_for(tmp_path, dead, max_retry_after_s=0)) as service:
        with pytest.raises(AllBackendsFailed):
            await service.generate(REQUEST, on_event=seen.append)
    last = seen[-1]
    assert isinstance(last, FailedEvent)
    assert last.error_kind == "all_backends_failed"
    assert last.attempts and all(a.backend == "dead" for a in last.attempts)
    assert sum(1 for e in seen if e.type in ("completed", "failed", "cancelled")) == 1


async def test_a_cancelled_generate_ends_with_cancelled_and_its_reason(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    knobs.latency_s = 5.0
    seen: list[Any] = []
    async with ImageService(settings_for(tmp_path, a1111("only", a1111_url))) as service:
        task = asyncio.create_task(service.generate(REQUEST, on_event=seen.append))
        await eventually(lambda: bool(seen))
        task.cancel("the user closed the tab")
        with pytest.raises(asyncio.CancelledError):
            await task
    assert isinstance(seen[-1], CancelledEvent)
    assert seen[-1].reason == "the user closed the tab"
    await eventually(lambda: knobs.cancelled == 1)  # the provider call was cancelled too


async def test_a_full_backend_with_a_queue_says_queued(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    knobs.latency_s = 0.3
    table = a1111("one", a1111_url, max_concurrency=1, queue=True)
    seen: list[Any] = []
    async with ImageService(settings_for(tmp_path, table)) as service:
        first = asyncio.create_task(service.generate(REQUEST))
        await eventually(lambda: any(r.path.endswith("txt2img") for r in knobs.requests))
        await service.generate(REQUEST, on_event=seen.append)
        await first
    queued = [e for e in seen if isinstance(e, QueuedEvent)]
    assert queued and queued[0].position == 1 and queued[0].backend == "one"
    assert kinds(seen)[-1] == "completed"


async def test_a_listener_that_raises_does_not_fail_the_generation(a1111_url: str, tmp_path: Path) -> None:
    def broken(event: Any) -> None:
        raise RuntimeError("listener bug")

    async with ImageService(settings_for(tmp_path, a1111("only", a1111_url))) as service:
        result = await service.generate(REQUEST, on_event=broken)
    assert result.backend == "only"


async def test_stream_yields_the_events_and_ends_with_the_terminal_one(
    a1111_url: str, tmp_path: Path
) -> None:
    async with ImageService(settings_for(tmp_path, a1111("only", a1111_url))) as service:
        events = [e async for e in service.stream(REQUEST)]
    assert kinds(events) == ["started", "completed"]


async def test_stream_of_a_failure_yields_failed_instead_of_raising(tmp_path: Path) -> None:
    dead = a1111("dead", f"http://127.0.0.1:{closed_port()}")
    async with ImageService(settings_for(tmp_path, dead, max_retry_after_s=0)) as service:
        events = [e async for e in service.stream(REQUEST)]
    assert kinds(events)[-1] == "failed"


async def test_leaving_the_stream_early_cancels_the_generation(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    knobs.latency_s = 5.0
    async with ImageService(settings_for(tmp_path, a1111("only", a1111_url))) as service:
        stream = service.stream(REQUEST)
        async for event in stream:
            assert event.type == "started"
            await eventually(lambda: bool(knobs.requests))  # the call reached the provider
            break
        await stream.aclose()
        await eventually(lambda: knobs.cancelled == 1)
        assert [h.in_flight for h in service.health()] == [0]


async def test_stream_of_an_unstarted_service_raises(tmp_path: Path) -> None:
    service = ImageService(settings_for(tmp_path, a1111("x", "http://127.0.0.1:9")))
    with pytest.raises(RuntimeError, match="not started"):
        async for _ in service.stream(REQUEST):
            pass
