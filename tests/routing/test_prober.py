"""The HealthProber's lifecycle: repeated jittered probes, faster while open, nudges, crashes."""

from __future__ import annotations

import asyncio
import random

from imagegate.routing.prober import HealthProber

from tests.routing.support import eventually

# -- the prober -------------------------------------------------------------------------------


async def test_prober_probes_every_backend_repeatedly_and_stops_cleanly() -> None:
    calls: list[str] = []

    async def probe(name: str) -> None:
        calls.append(name)

    prober = HealthProber(["a", "b"], probe, interval_s=0.02, rng=random.Random(1))
    prober.start()
    await eventually(lambda: calls.count("a") >= 3 and calls.count("b") >= 3)
    await prober.stop()
    assert not prober.running
    count = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == count
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("imagegate-probe")]


async def test_prober_interval_is_jittered_and_shorter_while_open() -> None:
    urgent = {"a": False}
    prober = HealthProber(
        ["a"], lambda name: asyncio.sleep(0), interval_s=10, urgent=lambda n: urgent[n],
        rng=random.Random(7), jitter=0.2, fast_factor=0.25,
    )
    delays = [prober.next_delay("a") for _ in range(200)]
    assert 8 <= min(delays) < max(delays) <= 12 and len(set(delays)) > 100
    urgent["a"] = True
    assert all(2 <= prober.next_delay("a") <= 3 for _ in range(50))


async def test_prober_nudge_recomputes_the_delay_at_once() -> None:
    calls: list[str] = []
    urgent = {"a": False}

    async def probe(name: str) -> None:
        calls.append(name)

    prober = HealthProber(["a"], probe, interval_s=1000, urgent=lambda n: urgent[n], fast_factor=1e-5)
    prober.start()
    await asyncio.sleep(0.02)
    assert calls == []
    urgent["a"] = True
    prober.nudge("a")
    await eventually(lambda: bool(calls))
    await prober.stop()


async def test_a_crashing_probe_does_not_end_the_loop() -> None:
    calls: list[str] = []

    async def probe(name: str) -> None:
        calls.append(name)
        raise RuntimeError("bug")

    prober = HealthProber(["a"], probe, interval_s=0.01)
    prober.start()
    await eventually(lambda: len(calls) >= 3)
    await prober.stop()
