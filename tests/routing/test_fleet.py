"""Two ImageServices in one process sharing a real redis-server: the routing side of the
fleet (a peer's breaker verdict adopted; exactly one half-open trial for the fleet; slots
counted across both; a Redis outage changes nothing for the requests)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from imagegate import ImageService
from imagegate.config import Settings
from imagegate.testing import FaultProxy, Knobs, serve_app
from imagegate.testing import a1111 as a1111_emulator

from tests.routing.support import REQUEST, a1111, eventually, settings_for

COOLDOWN_S = 0.3


def fleet_settings(
    tmp_path: Path, primary: str, secondary: str, redis_url: str, **primary_keys: float
) -> Settings:
    return settings_for(
        tmp_path, a1111("primary", primary, 0, **primary_keys), a1111("secondary", secondary, 1),
        state_url=redis_url, breaker_cooldown_s=COOLDOWN_S, breaker_max_cooldown_s=COOLDOWN_S,
    )


def txt2img(knobs: Knobs) -> int:
    return sum(1 for r in knobs.requests if r.path.endswith("txt2img"))


async def test_a_peer_s_open_breaker_is_adopted_and_only_one_instance_sends_the_trial(
    tmp_path: Path, redis_url: str
) -> None:
    p_knobs = Knobs()
    async with (
        serve_app(a1111_emulator.create_app(knobs=p_knobs)) as primary,
        FaultProxy(primary, mode="reset") as proxy,
        serve_app(a1111_emulator.create_app()) as secondary,
    ):
        settings = fleet_settings(tmp_path, proxy.url, secondary, redis_url)
        async with ImageService(settings) as a, ImageService(settings) as b:
            await asyncio.sleep(0.1)  # both listening
            first = await a.generate(REQUEST)  # reset -> connect_failed trips A's breaker
            assert first.backend == "secondary"
            await eventually(lambda: b.breaker("primary").state != "closed")  # B adopted it
            proxy.mode = "pass"
            await asyncio.sleep(COOLDOWN_S + 0.2)  # cool-down over on both: each would try
            p_knobs.latency_s = 1.0  # the trial is held at the provider while B asks
            trial = asyncio.create_task(a.generate(REQUEST))
            await eventually(lambda: txt2img(p_knobs) == 1)  # A's trial is in flight
            assert (await b.generate(REQUEST)).backend == "secondary"  # B does not send a second
            assert (await trial).backend == "primary"
            assert txt2img(p_knobs) == 1  # one trial for the fleet, not one per instance
            await eventually(lambda: a.breaker("primary").state == b.breaker("primary").state == "closed")


async def test_max_concurrency_counts_both_instances(tmp_path: Path, redis_url: str) -> None:
    slow = Knobs(latency_s=1.0)
    async with (
        serve_app(a1111_emulator.create_app(knobs=slow)) as primary,
        serve_app(a1111_emulator.create_app()) as secondary,
    ):
        settings = fleet_settings(tmp_path, primary, secondary, redis_url, max_concurrency=1)
        async with ImageService(settings) as a, ImageService(settings) as b:
            busy = asyncio.create_task(a.generate(REQUEST))
            await eventually(lambda: txt2img(slow) == 1)
            other = await b.generate(REQUEST)
            assert other.backend == "secondary"
            assert [row.outcome for row in other.attempts] == ["skipped", "ok"]
            assert "across the fleet" in (other.attempts[0].error or "")
            assert (await busy).backend == "primary"


async def test_without_redis_a_request_never_waits_on_it(tmp_path: Path) -> None:
    async with serve_app(a1111_emulator.create_app()) as primary, serve_app(a1111_emulator.create_app()) as secondary:
        settings = fleet_settings(tmp_path, primary, secondary, "redis://127.0.0.1:9/0")
        async with ImageService(settings) as service:
            started = time.monotonic()
            for _ in range(5):
                assert (await service.generate(REQUEST)).backend == "primary"
            assert time.monotonic() - started < 3.0  # nothing waited on the unreachable store
