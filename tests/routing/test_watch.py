"""Watching the whole service (what the operator page builds on): every breaker change and
probe is told, every request's events reach the watcher without changing what the caller
hears; and the health row's recent window: p50/p95, success rate (probes do not count), the
breaker's reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from imagegate import ImageService
from imagegate.errors import InvalidRequest
from imagegate.events import Event, EventSink, ProgressEvent, StartedEvent
from imagegate.models import ImageRequest
from imagegate.routing.breaker import CircuitBreaker
from imagegate.routing.policy import BackendState
from imagegate.routing.watch import fan_out
from structlog.testing import capture_logs

from tests.routing.support import REQUEST, a1111, closed_port, settings_for


class Recorder:
    """A watcher that keeps what it was told."""

    def __init__(self, *, previews: bool = True, listening: bool = True) -> None:
        self.previews = previews
        self.listening = listening
        self.changed: list[str] = []
        self.requests: list[tuple[ImageRequest, str | None]] = []
        self.events: list[Event] = []

    def backend_changed(self, name: str) -> None:
        self.changed.append(name)

    def request_started(self, request: ImageRequest, backend: str | None) -> EventSink | None:
        if not self.listening:
            return None
        self.requests.append((request, backend))
        return self.events.append


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


async def test_a_watcher_hears_every_request_with_previews_the_caller_did_not_ask_for(
    slow_a1111_url: str, tmp_path: Path
) -> None:
    watcher, caller = Recorder(), []
    settings = settings_for(tmp_path, a1111("local", slow_a1111_url, progress_interval_s=0.02))
    async with ImageService(settings) as service:
        service.watch(watcher)
        request = REQUEST.model_copy(update={"steps": 10})
        await service.generate(request, backend="local", on_event=caller.append)
        await service.generate(REQUEST)  # nobody else listens: the watcher still does
    assert watcher.requests == [(request, "local"), (REQUEST, None)]
    assert "preview" in types(watcher.events) and "progress" in types(watcher.events)
    assert "preview" not in types(caller)  # not asked for: not sent to the caller
    assert types(caller)[0] == "started" and types(caller)[-1] == "completed"
    assert types(watcher.events).count("completed") == 2


async def test_a_watcher_that_stays_out_costs_the_request_nothing(
    a1111_url: str, tmp_path: Path
) -> None:
    watcher = Recorder(listening=False)
    async with ImageService(settings_for(tmp_path, a1111("local", a1111_url))) as service:
        service.watch(watcher)
        result = await service.generate(REQUEST)
        service.watch(None)
        await service.generate(REQUEST)
    assert result.backend == "local" and watcher.events == [] and watcher.requests == []


async def test_breaker_transitions_and_probes_are_told_by_backend_name(
    a1111_url: str, tmp_path: Path
) -> None:
    watcher = Recorder()
    dead = a1111("dead", f"http://127.0.0.1:{closed_port()}", 0)
    async with ImageService(settings_for(tmp_path, dead, a1111("local", a1111_url, 1))) as service:
        service.watch(watcher)
        await service.generate(REQUEST)  # dead refuses: its breaker opens
        assert watcher.changed == ["dead"]
        assert service.health()[0].breaker_reason == "connect_failed"
        await service.probe_all()
    assert sorted(watcher.changed[1:]) == ["dead", "local"]


def test_fan_out_keeps_the_caller_and_the_watcher_apart() -> None:
    caller: list[Event] = []
    seen: list[Event] = []

    def broken(event: Event) -> None:
        seen.append(event)
        raise RuntimeError("a watcher bug")

    sink = fan_out(caller.append, False, broken)
    with capture_logs() as logs:
        sink(StartedEvent(backend="a", attempt=1))
        sink(ProgressEvent(fraction=0.5))
    assert types(caller) == types(seen) == ["started", "progress"]
    assert [e["event"] for e in logs] == ["watcher_failed", "watcher_failed"]


def _state() -> BackendState:
    return BackendState(name="b", kind="a1111", breaker=CircuitBreaker(), max_concurrency=3)


def test_the_health_row_has_percentiles_and_the_success_rate_of_recent_requests() -> None:
    state = _state()
    empty = state.health()
    assert (empty.latency_p50_s, empty.success_rate, empty.recent_requests) == (None, None, 0)
    for seconds in (1.0, 2.0, 3.0, 4.0, 10.0):
        state.observe_latency(seconds)
    state.note_error("server_error", "HTTP 500")
    state.note_error("connect_failed", "probe failed", request=False)  # a probe's: not counted
    row = state.health()
    assert (row.latency_p50_s, row.latency_p95_s) == (3.0, 10.0)
    assert row.recent_requests == 6 and row.success_rate == 5 / 6
    assert row.max_concurrency == 3 and row.last_error_kind == "connect_failed"


def test_the_health_row_says_why_the_breaker_is_not_closed() -> None:
    state = _state()
    assert state.health().breaker_reason is None
    state.breaker.on_failure("normal", "trip", kind="handshake_timeout")
    assert state.health().breaker_reason == "handshake_timeout"
    state.breaker.on_failure("normal", "disable", kind="auth_failed")
    assert state.health().breaker_reason == "auth_failed: until a probe succeeds"
    state.breaker.on_success("normal")
    assert state.health().breaker_reason is None


async def test_a_request_refused_before_routing_still_ends_for_the_watcher(
    a1111_url: str, tmp_path: Path
) -> None:
    """No backend can serve it (strict: an unknown sampler): the caller gets the exception as
    before, the watcher a ``failed`` event, so the page does not show it running forever."""
    watcher, caller = Recorder(), []
    async with ImageService(settings_for(tmp_path, a1111("sd", a1111_url), adapt="strict")) as service:
        await service.probe_all()  # the sampler list is known
        service.watch(watcher)
        with pytest.raises(InvalidRequest):
            await service.generate(REQUEST.model_copy(update={"sampler": "No Such"}), on_event=caller.append)
    assert caller == [] and types(watcher.events) == ["failed"]
    assert "sampler" in watcher.events[0].message  # type: ignore[union-attr]
