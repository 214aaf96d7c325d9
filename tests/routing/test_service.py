"""ImageService as a whole: one event per attempt, skip and transition; lifecycle of probes."""

from __future__ import annotations

from pathlib import Path

import pytest
from imagegate import ImageService
from structlog.testing import capture_logs

from tests.routing.support import (
    REQUEST,
    a1111,
    attempt_tasks,
    eventually,
    settings_for,
)

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
