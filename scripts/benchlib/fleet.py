"""``fleet``: what sharing state through Redis costs and buys, on one machine.

- propagation: instance A's breaker opens (a refused port trips it); how long until instance
  B's local breaker reads open (two services in one process, each with its own Redis
  connections: the same clock on both sides). Goal < 50 ms.
- added latency: sequential generations against an instant A1111 emulator, with and without
  ``state_url``, interleaved so both see the same machine. Goal < 1 ms at p50.
- throughput: 1 vs 3 ``imagegate serve`` processes sharing one Redis, one client spreading
  ``--concurrency`` requests over them, for ``--duration`` seconds each.

Everything runs on 127.0.0.1, with its own redis-server (``imagegate.testing.redis``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from imagegate import ImageRequest, ImageService
from imagegate.config import ServiceSettings, Settings
from imagegate.routing.breaker import Transition
from imagegate.testing import Knobs
from imagegate.testing.redis import redis_available, redis_server

from benchlib.common import (
    a1111_backend,
    emulator,
    free_port,
    machine,
    print_table,
    process,
    stats_ms,
)

__all__ = ["fleet_arguments", "print_fleet", "run_fleet"]

GOAL_PROPAGATION_MS = 50.0
GOAL_ADDED_P50_MS = 1.0
REQUEST = ImageRequest(prompt="a lighthouse at dusk", width=64, height=64)


def _settings(url: str, refused: str, state_url: str | None) -> Settings:
    backends = (
        a1111_backend("refused", refused, 0, connect_timeout_s=1.0),
        a1111_backend("gpu", url, 1),
    )
    service = ServiceSettings(probe_interval_s=3600, deadline_s=30, state_url=state_url,
                              breaker_cooldown_s=0.05, breaker_max_cooldown_s=0.05)
    return Settings(service=service, backends=backends, secrets={}, source="bench")


def _closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def _propagation(state_url: str, url: str, rounds: int) -> list[float]:
    """Seconds from A's breaker opening to B's reading open, ``rounds`` times."""
    refused = _closed_url()
    seen: list[float] = []
    async with (
        ImageService(_settings(url, refused, state_url)) as a,
        ImageService(_settings(url, refused, state_url)) as b,
    ):
        await asyncio.sleep(0.2)  # both listeners subscribed
        opened_at: dict[str, float] = {}
        arrived = asyncio.Event()

        def on_a(t: Transition) -> None:
            if t.new == "open" and not t.remote:
                opened_at["t"] = time.perf_counter()

        def on_b(t: Transition) -> None:
            if t.new == "open" and t.remote:
                seen.append(time.perf_counter() - opened_at.get("t", time.perf_counter()))
                arrived.set()

        _watch(a, "refused", on_a)
        _watch(b, "refused", on_b)
        for _ in range(rounds):
            arrived.clear()
            await a.generate(REQUEST)  # refused -> trips -> fails over to gpu
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await arrived.wait()
            await asyncio.sleep(0.06)  # both cool down (0.05 s) before the next round
            for service in (a, b):
                service.breaker("refused").on_probe(True)
            await asyncio.sleep(0.02)
    return seen


def _watch(service: ImageService, name: str, callback: Any) -> None:
    breaker = service.breaker(name)
    previous = breaker._on_transition

    def both(t: Transition) -> None:
        if previous is not None:
            previous(t)
        callback(t)

    breaker._on_transition = both


async def _added_latency(state_url: str, url: str, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"in_process": [], "redis": []}
    only_gpu = Settings(service=ServiceSettings(probe_interval_s=3600, deadline_s=30),
                        backends=(a1111_backend("gpu", url, 0),), secrets={}, source="bench")
    shared = only_gpu.model_copy(update={"service": only_gpu.service.model_copy(update={"state_url": state_url})})
    async with ImageService(only_gpu) as plain, ImageService(shared) as fleet:
        for service in (plain, fleet):  # warm up
            for _ in range(20):
                await service.generate(REQUEST)
        for _ in range(runs):
            for key, service in (("in_process", plain), ("redis", fleet)):
                started = time.perf_counter()
                await service.generate(REQUEST)
                out[key].append(time.perf_counter() - started)
    return out


async def _throughput(config: Path, state_url: str, count: int, duration: float, concurrency: int,
                      workdir: Path) -> dict[str, Any]:
    ports = [free_port() for _ in range(count)]
    env = {"IMAGEGATE_STATE_URL": state_url}
    argv = [sys.executable, "-m", "imagegate", "serve", "--config", str(config), "--port"]
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(process([*argv, str(p)], p, env)) for p in ports]
        latencies: list[float] = []
        errors = 0
        stop = time.monotonic() + duration
        body = {"prompt": "a lighthouse", "size": "64x64"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def client(i: int) -> None:
                nonlocal errors
                url = urls[i % len(urls)] + "/v1/images/generations"
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    async with http.post(url, json=body) as r:
                        await r.read()
                        if r.status != 200:
                            errors += 1
                    latencies.append(time.perf_counter() - started)

            await asyncio.gather(*(client(i) for i in range(concurrency)))
    return {"instances": count, "requests": len(latencies), "errors": errors,
            "rps": round(len(latencies) / duration, 1), "latency_ms": stats_ms(latencies)}


def run_fleet(args: argparse.Namespace) -> dict[str, Any]:
    if not redis_available():
        return {"scenario": "fleet", "skipped": "redis-server is not installed (apt-get install -y redis-server)"}
    return asyncio.run(_fleet(args))


async def _fleet(args: argparse.Namespace) -> dict[str, Any]:
    with redis_server() as redis, tempfile.TemporaryDirectory() as tmp:
        async with emulator(Knobs()) as url:
            propagation = await _propagation(redis.url, url, args.rounds)
            added = await _added_latency(redis.url, url, args.runs)
            config = Path(tmp) / "imagegate.toml"
            config.write_text(
                f'[service]\noutput_dir = "{tmp}/out"\nprobe_interval_s = 3600\n\n'
                f'[[backend]]\nname = "gpu"\nkind = "a1111"\nbase_url = "{url}"\nmax_concurrency = 64\n'
            )
            levels = [await _throughput(config, redis.url, n, args.duration, args.concurrency, Path(tmp))
                      for n in (1, 3)]
    base, shared = stats_ms(added["in_process"]), stats_ms(added["redis"])
    prop = stats_ms(propagation) if propagation else {}
    return {
        "scenario": "fleet",
        "machine": machine(),
        "propagation_ms": prop,
        "propagation_rounds": {"asked": args.rounds, "seen": len(propagation)},
        "latency_ms": {"in_process": base, "redis": shared},
        "added_ms": {"p50": round(shared["p50"] - base["p50"], 3), "p99": round(shared["p99"] - base["p99"], 3)},
        "throughput": levels,
        "goals": {"propagation_p50_ms": GOAL_PROPAGATION_MS, "added_p50_ms": GOAL_ADDED_P50_MS},
        "goals_met": {
            "propagation": bool(prop) and prop["max"] < GOAL_PROPAGATION_MS,
            "added_latency": shared["p50"] - base["p50"] < GOAL_ADDED_P50_MS,
        },
    }


def print_fleet(report: dict[str, Any]) -> None:
    if "skipped" in report:
        print(f"fleet: skipped: {report['skipped']}")
        return
    p = report["propagation_ms"]
    rounds = report["propagation_rounds"]
    print(f"breaker propagation A -> B through Redis ({rounds['seen']}/{rounds['asked']} rounds seen): "
          f"p50 {p.get('p50')} ms, p99 {p.get('p99')} ms, max {p.get('max')} ms (goal < {GOAL_PROPAGATION_MS:g} ms)")
    print_table(report["latency_ms"])
    added = report["added_ms"]
    print(f"added by Redis: p50 {added['p50']} ms, p99 {added['p99']} ms (goal p50 < {GOAL_ADDED_P50_MS:g} ms)")
    for level in report["throughput"]:
        lat = level["latency_ms"]
        print(f"{level['instances']} instance(s): {level['rps']} req/s, p50 {lat['p50']} ms, "
              f"p99 {lat['p99']} ms, {level['errors']} errors")


def fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=50, help="breaker propagations measured")
    parser.add_argument("--runs", type=int, default=1000, help="sequential generations per variant")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per throughput level")
    parser.add_argument("--concurrency", type=int, default=16, help="client concurrency for throughput")
    parser.add_argument("--json", action="store_true")
