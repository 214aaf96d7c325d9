"""``race``: handshake racing (``[service] race_after_s``, routing/race.py), on against off.

1. Cold failover: the primary is a TLS black hole with ``connect_timeout_s`` = T (10 s), the
   secondary the OpenAI-compatible emulator; each run is a fresh service (fresh breakers,
   fresh pool, ``race_after_s = "auto"``: 0.5 s until a backend has handshake samples). Time
   to the first image, racing on and off; LiteLLM's Router with ``timeout`` = T beside them
   when litellm is installed (BENCHMARKS.md).
2. What racing costs on a healthy fleet: TCP connections the two backends accept per request
   (FaultProxy counts them) after a warm-up, racing on and off, each TLS handshake held 50 ms median
   (log-normal, sigma 0.35: FaultProxy ``slow_handshake`` with a drawn ``latency``), once
   with every request needing a new connection (the emulators close each one: the worst
   case) and once with keep-alive; LiteLLM's Router on the same fleet beside them.
3. What the connect step adds to a request on a healthy two-backend fleet (a pooled
   connection: no handshake, no race): racing on against off, interleaved call by call on two
   services, plain-HTTP A1111 emulators, the paired median difference.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from aiohttp import web
from imagegate import ImageRequest, ImageService
from imagegate.routing.policy import percentile
from imagegate.testing import FaultProxy, Knobs, LocalCA, black_hole, serve_app
from imagegate.testing import openai_images as openai_emulator

from benchlib import litellm_side
from benchlib.common import (
    API_KEY,
    a1111_backend,
    a1111_settings,
    emulator,
    machine,
    ms,
    openai_backend,
    print_table,
    service_settings,
    stats_ms,
    timed,
)

FLOOR_S = 0.5  # race_after_s = "auto" before a backend has its handshake samples (race.py)
MODES = {"racing_off": 0, "racing_on": "auto"}


def run_race(args: argparse.Namespace) -> dict[str, Any]:
    litellm = None if args.no_litellm else litellm_side.load_litellm()
    report = asyncio.run(_race(args, litellm))
    return {"scenario": "race", "machine": machine(), **report}


async def _race(args: argparse.Namespace, litellm: Any) -> dict[str, Any]:
    ca = LocalCA(tempfile.mkdtemp(prefix="imagegate-bench-"))
    request = ImageRequest(prompt="a lighthouse at dusk", width=256, height=256)  # dall-e-2 takes 256²
    if litellm is not None:
        litellm.ssl_verify = str(ca.ca_file)  # LiteLLM's own TLS setting, for the emulators' CA
    step = await _connect_step(args)
    cold = await _cold(args, ca, request, litellm)
    fleet = {
        "every_request_new_connection": await _fleet(args, ca, request, litellm, close=True),
        "keep_alive": await _fleet(args, ca, request, litellm, close=False),
    }
    over = cold["imagegate_racing_on"]["p50_s"] - FLOOR_S
    worst = max(f["extra_connections_per_request"] for f in fleet.values())
    return {
        "config": {"connect_timeout_s": args.connect_timeout, "cold_runs": args.cold_runs,
                   "requests": args.requests, "warmup": args.warmup, "concurrency": args.concurrency,
                   "handshake_median_ms": args.handshake_ms, "handshake_sigma": args.sigma,
                   "litellm": None if litellm is None else _version()},
        "cold_failover": cold,
        "healthy_fleet": fleet,
        "connect_step": step,
        "cold_over_race_after_ms": ms(over),
        "targets": {"cold_over_race_after_ms": 100, "extra_connections_per_request": 0.02},
        "target_met": over < 0.100 and worst < 0.02,
    }


def _version() -> str:
    from importlib.metadata import version

    return version("litellm")


@asynccontextmanager
async def _emulator(ca: LocalCA, *, close: bool = False) -> AsyncIterator[str]:
    """The OpenAI-compatible emulator over TLS; ``close``: it closes every connection after
    its answer (``Connection: close``), so each request needs a new one."""
    app = openai_emulator.create_app(api_key=API_KEY)
    if close:
        async def closing(request: web.Request, response: web.StreamResponse) -> None:
            response.force_close()

        app.on_response_prepare.append(closing)
    async with serve_app(app, tls=ca) as url:
        yield url


# -- 1. cold failover ---------------------------------------------------------------------------


async def _cold(args: argparse.Namespace, ca: LocalCA, request: ImageRequest, litellm: Any) -> dict[str, Any]:
    t = args.connect_timeout
    out: dict[str, Any] = {}
    async with black_hole() as (host, port), _emulator(ca) as url:
        hole = f"https://{host}:{port}"
        for name, racing in MODES.items():
            runs = []
            for _ in range(args.cold_runs):
                settings = service_settings(
                    openai_backend("primary", hole, 0, connect_timeout_s=t),
                    openai_backend("secondary", url, 1, ca_bundle=str(ca.ca_file)),
                    race_after_s=racing,
                )
                async with ImageService(settings) as service:  # fresh breakers, fresh pool
                    elapsed, result = await timed(service.generate(request))
                assert result.backend == "secondary", result.attempts
                runs.append(elapsed)
            out[f"imagegate_{name}"] = _seconds(runs)
        if litellm is not None and args.litellm_cold_requests:
            for name, config in litellm_side.failover_configs(hole, url, t).items():
                router = litellm.Router(**config)
                call = litellm_side.router_client(router, "primary", request)
                out[name] = _seconds([(await timed(call()))[0] for _ in range(args.litellm_cold_requests)])
    return out


def _seconds(values: list[float]) -> dict[str, Any]:
    return {"runs": len(values), "p50_s": round(percentile(values, 0.5), 4), "max_s": round(max(values), 4),
            "all_s": [round(v, 4) for v in values]}


# -- 2. what racing costs on a healthy fleet ----------------------------------------------------


async def _fleet(
    args: argparse.Namespace, ca: LocalCA, request: ImageRequest, litellm: Any, *, close: bool
) -> dict[str, Any]:
    rng = random.Random(22)
    median = args.handshake_ms / 1000

    def handshake() -> float:
        return median * math.exp(rng.gauss(0.0, args.sigma))

    rows: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(_emulator(ca, close=close)) for _ in range(2)]
        proxies = [await stack.enter_async_context(
            FaultProxy(url, mode="slow_handshake", latency=handshake)) for url in urls]
        for name, racing in MODES.items():
            settings = service_settings(
                *(openai_backend(n, p.url, i, ca_bundle=str(ca.ca_file), connect_timeout_s=10)
                  for i, (n, p) in enumerate(zip(("primary", "secondary"), proxies, strict=True))),
                race_after_s=racing,
            )
            async with ImageService(settings) as service:
                await _load(lambda: service.generate(request), args.warmup, args.concurrency)
                before = sum(p.connections for p in proxies)
                results = await _load(lambda: service.generate(request), args.requests, args.concurrency)
                await service.settled(timeout=5)
            rows[f"imagegate_{name}"] = _fleet_row(sum(p.connections for p in proxies) - before, args.requests, results)
        if litellm is not None:
            router = litellm.Router(**litellm_side.fleet_config(proxies[0].url, proxies[1].url))
            call = litellm_side.router_client(router, "primary", request)
            await _load(call, args.warmup, args.concurrency)
            before = sum(p.connections for p in proxies)
            await _load(call, args.requests, args.concurrency)
            rows["litellm_router"] = _fleet_row(sum(p.connections for p in proxies) - before, args.requests, [])
    on, off = rows["imagegate_racing_on"], rows["imagegate_racing_off"]
    extra = (on["connections"] - off["connections"]) / args.requests
    return {"rows": rows, "extra_connections_per_request": round(extra, 4)}


def _fleet_row(connections: int, requests: int, results: list[Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"connections": connections, "per_request": round(connections / requests, 4)}
    if results:
        row["races"] = sum(1 for r in results for a in r.attempts if a.outcome == "raced")
        row["served_by_secondary"] = sum(1 for r in results if r.backend == "secondary")
        row["latency_ms"] = stats_ms([r.elapsed_s for r in results])
    return row


async def _load(call: Callable[[], Awaitable[Any]], n: int, concurrency: int) -> list[Any]:
    todo = iter(range(n))
    out: list[Any] = []

    async def worker() -> None:
        for _ in todo:
            out.append(await call())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


# -- 3. what the connect step adds ---------------------------------------------------------------


async def _connect_step(args: argparse.Namespace) -> dict[str, Any]:
    request = ImageRequest(prompt="a lighthouse at dusk", width=64, height=64)
    async with emulator(Knobs()) as first, emulator(Knobs()) as second, AsyncExitStack() as stack:
        services = {}
        for name, racing in MODES.items():
            settings = a1111_settings(a1111_backend("primary", first, 0), a1111_backend("secondary", second, 1),
                                      race_after_s=racing)
            services[name] = await stack.enter_async_context(ImageService(settings))
        samples: dict[str, list[float]] = {name: [] for name in MODES}
        for i in range(args.step_runs + args.warmup):
            for name in (MODES if i % 2 else reversed(MODES)):
                elapsed, _ = await timed(services[name].generate(request))
                if i >= args.warmup:
                    samples[name].append(elapsed)
    diffs = [on - off for on, off in zip(samples["racing_on"], samples["racing_off"], strict=True)]
    return {"runs": args.step_runs, "latency_ms": {n: stats_ms(v) for n, v in samples.items()},
            "paired_median_added_ms": ms(percentile(diffs, 0.5))}


# -- the report ---------------------------------------------------------------------------------


def print_race(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(f"race: handshake racing on vs off; load {report['machine']['loadavg_1m']}"
          + (f"; LiteLLM {cfg['litellm']}" if cfg["litellm"] else "; LiteLLM not installed"))
    print(f"cold failover, primary a TLS black hole with connect_timeout_s = {cfg['connect_timeout_s']:g} s"
          " (fresh service each run):")
    print(f"  {'':<28}{'runs':>6}{'p50 s':>10}{'max s':>10}")
    for name, row in report["cold_failover"].items():
        print(f"  {name:<28}{row['runs']:>6}{row['p50_s']:>10.3f}{row['max_s']:>10.3f}")
    print(f"  racing on - race_after_s ({FLOOR_S:g} s): {report['cold_over_race_after_ms']:.1f} ms (target < 100 ms)")
    print(f"healthy fleet, {cfg['requests']} requests at concurrency {cfg['concurrency']} (after"
          f" {cfg['warmup']} not counted), TLS handshakes"
          f" {cfg['handshake_median_ms']:g} ms median (sigma {cfg['handshake_sigma']:g}):")
    for fleet, data in report["healthy_fleet"].items():
        print(f"  {fleet}: extra connections per request from racing:"
              f" {data['extra_connections_per_request']:.2%} (target < 2 %)")
        for name, row in data["rows"].items():
            extra = f", {row['races']} races, {row['served_by_secondary']} served by the secondary" if "races" in row else ""
            print(f"    {name:<22}{row['connections']:>6} connections ({row['per_request']:.3f} per request){extra}")
        latency = {n: r["latency_ms"] for n, r in data["rows"].items() if "latency_ms" in r}
        print_table(latency)
    step = report["connect_step"]
    print(f"the connect step on a healthy two-backend fleet ({step['runs']} interleaved calls, pooled"
          f" connections): {step['paired_median_added_ms']:.3f} ms added (paired median)")
    print_table(step["latency_ms"])
    print(f"targets: {'met' if report['target_met'] else 'MISSED'}")


def race_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="the primary's connect_timeout_s")
    parser.add_argument("--cold-runs", type=int, default=3, help="cold failovers per mode (off costs T each)")
    parser.add_argument("--requests", type=int, default=1000, help="healthy fleet: requests per mode")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=50, help="healthy fleet: requests before counting")
    parser.add_argument("--handshake-ms", type=float, default=50.0, help="median TLS handshake delay")
    parser.add_argument("--sigma", type=float, default=0.35, help="log-normal spread of the handshake delay")
    parser.add_argument("--litellm-cold-requests", type=int, default=1,
                        help="cold failover requests per LiteLLM set-up (each takes minutes at T = 10 s; 0: skip)")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out even when installed")
    parser.add_argument("--step-runs", type=int, default=2000, help="connect step: interleaved calls per mode")
