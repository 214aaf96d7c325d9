"""``hedge``: p50/p99 with a heavy-tailed primary, hedging off vs on, and what it costs."""

from __future__ import annotations

import argparse
import asyncio
import random
from typing import Any

from imagegate import ImageRequest, ImageService
from imagegate.testing import Knobs

from benchlib.common import a1111_backend, a1111_settings, emulator, ms, stats_ms, timed


def run_hedge(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_hedge(args))


async def _hedge(args: argparse.Namespace) -> dict[str, Any]:
    modes: dict[str, dict[str, Any]] = {
        "off": {},
        f"after_{ms(args.hedge_after):g}ms": {"hedge_after_s": args.hedge_after},
        "p95": {"hedge": "p95"},
    }
    rows = {}
    for name, keys in modes.items():
        rows[name] = await _hedge_mode(args, {"hedge_budget": args.budget, **keys})
    off = rows["off"]["latency_ms"]["p99"]
    for row in rows.values():
        row["p99_cut"] = round(off / row["latency_ms"]["p99"], 2)
    best = rows[next(iter(modes.keys() - {"off", "p95"}))]
    return {
        "scenario": "hedge",
        "config": {"requests": args.requests, "concurrency": args.concurrency, "base_ms": ms(args.base),
                   "slow_share": args.slow_share, "slow_factor": args.slow_factor,
                   "hedge_budget": args.budget, "image_size": args.size},
        "modes": rows,
        "targets": {"p99_cut": 2.0, "extra_request_share": 0.10},
        "target_met": best["p99_cut"] >= 2.0 and best["extra_request_share"] < 0.10,
    }


async def _hedge_mode(args: argparse.Namespace, service_keys: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    slow = args.base * args.slow_factor
    primary = Knobs(latency=lambda: slow if rng.random() < args.slow_share else args.base)
    secondary = Knobs(latency_s=args.base)
    request = ImageRequest(prompt="a lighthouse at dusk", width=args.size, height=args.size)
    async with emulator(primary) as p_url, emulator(secondary) as s_url:
        cfg = a1111_settings(a1111_backend("primary", p_url, 0), a1111_backend("secondary", s_url, 1), **service_keys)
        async with ImageService(cfg, rng=random.Random(args.seed)) as service:
            await _load(service, request, args.warmup, args.concurrency)
            generations, requests = _generations(primary, secondary), _requests(primary, secondary)
            latencies, hedged, served = await _load(service, request, args.requests, args.concurrency)
            sent = _generations(primary, secondary) - generations
            other = _requests(primary, secondary) - requests - sent
    return {
        "latency_ms": stats_ms(latencies),
        "hedges": hedged,
        # what hedging costs is generations; a cancelled loser's progress look and interrupt
        # (A1111: /internal/progress, /sdapi/v1/interrupt) cost nothing and are counted apart
        "extra_request_share": round(sent / args.requests - 1, 4),
        "control_requests": other,
        "served_by_secondary": served.get("secondary", 0),
        "primary_cancelled": primary.cancelled,
    }


def _generations(*knobs: Knobs) -> int:
    return sum(1 for k in knobs for r in k.requests if r.path == "/sdapi/v1/txt2img")


def _requests(*knobs: Knobs) -> int:
    return sum(len(k.requests) for k in knobs)


async def _load(
    service: ImageService, request: ImageRequest, total: int, concurrency: int
) -> tuple[list[float], int, dict[str, int]]:
    latencies: list[float] = []
    hedged = 0
    served: dict[str, int] = {}
    queue = iter(range(total))

    async def worker() -> None:
        nonlocal hedged
        for _ in queue:
            elapsed, result = await timed(service.generate(request))
            latencies.append(elapsed)
            hedged += any(a.hedge for a in result.attempts)
            served[result.backend] = served.get(result.backend, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, hedged, served


def print_hedge(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(f"hedge: {cfg['requests']} requests, {cfg['concurrency']} concurrent; primary "
          f"{cfg['base_ms']:g} ms, {cfg['slow_share']:.0%} of calls {cfg['slow_factor']:g}x slower; "
          f"secondary {cfg['base_ms']:g} ms; budget {cfg['hedge_budget']:.0%}")
    print(f"  {'mode':<16}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'p99 cut':>9}{'hedges':>8}"
          f"{'extra':>8}{'cancel':>8}")
    for name, row in report["modes"].items():
        lat = row["latency_ms"]
        print(f"  {name:<16}{lat['p50']:>9.1f}{lat['p90']:>9.1f}{lat['p99']:>9.1f}{lat['max']:>9.1f}"
              f"{row['p99_cut']:>8.2f}x{row['hedges']:>8}{row['extra_request_share']:>8.1%}"
              f"{row['primary_cancelled']:>8}")
    print(f"targets (p99 cut >= 2x, extra < 10%): {'met' if report['target_met'] else 'MISSED'}")


def hedge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--base", type=float, default=0.02, help="primary's usual latency, s")
    parser.add_argument("--slow-share", type=float, default=0.05)
    parser.add_argument("--slow-factor", type=float, default=20.0)
    parser.add_argument("--hedge-after", type=float, default=0.05, help="hedge_after_s")
    parser.add_argument("--budget", type=float, default=0.10, help="hedge_budget")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
