"""Hedging: a second attempt after hedge_after_s (or p95), within the budget and max cost;
the losing request is cancelled on the emulator."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from imagegate import ImageService
from imagegate.testing import Knobs
from structlog.testing import capture_logs

from tests.routing.support import (
    REQUEST,
    SLACK_S,
    a1111,
    eventually,
    outcomes,
    settings_for,
)

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
