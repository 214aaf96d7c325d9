"""Benchmarks of imagegate against local emulators (and a fault proxy) on loopback.

    python scripts/bench.py failover [--connect-timeout 0.3] [--runs 200]
    python scripts/bench.py hedge [--requests 500] [--concurrency 10]
    python scripts/bench.py http [...]                      (scripts/bench_http.py)
    python scripts/bench.py overhead|memory|compare|soak     (scripts/benchlib/)
    python scripts/bench.py all [--skip NAME]                every scenario, defaults

Every scenario starts its own emulators on 127.0.0.1, warms up, measures, prints a table,
writes ``outputs/bench/<scenario>.json`` and compares with a baseline measured in the same run.
Add a scenario: write ``run_x(args) -> dict`` and ``print_x(report)``, register a ``Scenario``
in ``SCENARIOS``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegate import ImageRequest, ImageService
from imagegate.models import Deadline
from imagegate.backends.a1111 import A1111Settings
from imagegate.config import ServiceSettings, Settings
from imagegate.logging import configure_logging
from imagegate.routing.policy import percentile
from imagegate.testing import FaultProxy, Knobs, LocalCA, serve_app
from imagegate.testing import a1111 as a1111_emulator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib.common import ms, stats_ms

OUT_DIR = Path("outputs/bench")


@dataclass(frozen=True)
class Scenario:
    help: str
    run: Callable[[argparse.Namespace], dict[str, Any]]
    print: Callable[[dict[str, Any]], None]
    add_arguments: Callable[[argparse.ArgumentParser], None]


# -- shared helpers -----------------------------------------------------------------------------


def backend(name: str, url: str, priority: int, **keys: Any) -> A1111Settings:
    return A1111Settings(
        name=name, base_url=url, priority=priority, max_concurrency=256, queue=False, **keys
    )


def settings(*backends: A1111Settings, **service: Any) -> Settings:
    svc = ServiceSettings(probe_interval_s=3600, deadline_s=30, **service)
    return Settings(service=svc, backends=backends, secrets={}, source="bench")


@asynccontextmanager
async def emulator(knobs: Knobs, tls: LocalCA | None = None) -> AsyncIterator[str]:
    async with serve_app(a1111_emulator.create_app(knobs=knobs), tls=tls) as url:
        yield url


async def timed(coro: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await coro
    return time.perf_counter() - start, result


# -- failover -----------------------------------------------------------------------------------


def run_failover(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_failover(args))


async def _failover(args: argparse.Namespace) -> dict[str, Any]:
    request = ImageRequest(prompt="a lighthouse at dusk", width=args.size, height=args.size)
    ca = LocalCA(tempfile.mkdtemp(prefix="imagegate-bench-"))
    async with AsyncExitStack() as stack:
        primary_url = await stack.enter_async_context(emulator(Knobs(), tls=ca))
        secondary_url = await stack.enter_async_context(emulator(Knobs()))
        proxy = await stack.enter_async_context(FaultProxy(primary_url, mode="tls_blackhole"))
        cfg = settings(
            backend("primary", proxy.url, 0, connect_timeout_s=args.connect_timeout, ca_bundle=ca.ca_file),
            backend("secondary", secondary_url, 1),
        )
        cold, cold_direct = [], []
        for _ in range(args.cold_runs):
            async with ImageService(cfg) as service:  # fresh breakers, fresh connection pool
                elapsed, result = await timed(service.generate(request))
                assert result.backend == "secondary", result.attempts
                cold.append(elapsed)
            async with ImageService(cfg) as service:
                elapsed, _ = await timed(service.generate(request, backend="secondary"))
                cold_direct.append(elapsed)
        async with ImageService(cfg) as service:
            await service.generate(request)  # opens the primary's breaker
            warm = await _interleaved(service, request, args.runs)
    return _failover_report(args, cold, cold_direct, warm)


async def _interleaved(service: ImageService, request: ImageRequest, runs: int) -> dict[str, list[float]]:
    """Open-breaker failover, the routed direct call and the bare backend call, interleaved."""
    secondary = service.backend("secondary")
    out: dict[str, list[float]] = {"open_breaker": [], "direct_routed": [], "direct_backend": []}
    for i in range(runs + 20):
        t_open, result = await timed(service.generate(request))
        assert result.backend == "secondary" and result.attempts[0].outcome == "skipped"
        t_routed, _ = await timed(service.generate(request, backend="secondary"))
        t_bare, _ = await timed(secondary.generate(request, deadline=Deadline.after(10)))
        if i >= 20:  # warm-up
            out["open_breaker"].append(t_open)
            out["direct_routed"].append(t_routed)
            out["direct_backend"].append(t_bare)
    return out


def _failover_report(
    args: argparse.Namespace, cold: list[float], cold_direct: list[float], warm: dict[str, list[float]]
) -> dict[str, Any]:
    table = {name: stats_ms(values) for name, values in warm.items()}
    table["cold_failover"] = stats_ms(cold)
    table["cold_direct"] = stats_ms(cold_direct)
    cold_over = percentile(cold, 0.5) - args.connect_timeout
    open_over = percentile(warm["open_breaker"], 0.5) - percentile(warm["direct_backend"], 0.5)
    routed_over = percentile(warm["open_breaker"], 0.5) - percentile(warm["direct_routed"], 0.5)
    return {
        "scenario": "failover",
        "config": {"connect_timeout_s": args.connect_timeout, "runs": args.runs,
                   "cold_runs": args.cold_runs, "image_size": args.size},
        "latency_ms": table,
        "cold_failover_over_connect_timeout_ms": ms(cold_over),
        "open_breaker_over_direct_backend_ms": ms(open_over),
        "open_breaker_over_direct_routed_ms": ms(routed_over),
        "targets": {"cold_over_connect_timeout_ms": 50, "open_breaker_over_direct_ms": 1},
        "target_met": cold_over < 0.050 and open_over < 0.001,
    }


def print_failover(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(f"failover: primary black-holed in the TLS handshake (connect_timeout "
          f"{cfg['connect_timeout_s']} s), secondary healthy; {cfg['image_size']}px images")
    _print_table(report["latency_ms"])
    print(f"cold failover - connect timeout:          {report['cold_failover_over_connect_timeout_ms']:8.3f} ms"
          "  (target < 50 ms)")
    print(f"open-breaker failover - direct backend:   {report['open_breaker_over_direct_backend_ms']:8.3f} ms"
          "  (target < 1 ms)")
    print(f"open-breaker failover - routed direct:    {report['open_breaker_over_direct_routed_ms']:8.3f} ms")
    print(f"targets: {'met' if report['target_met'] else 'MISSED'}")


def _print_table(rows: dict[str, dict[str, float]]) -> None:
    print(f"  {'ms':<16}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}{'mean':>10}")
    for name, row in rows.items():
        cells = "".join(f"{row[k]:>10.3f}" for k in ("p50", "p90", "p99", "max", "mean"))
        print(f"  {name:<16}{cells}")


def failover_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect-timeout", type=float, default=0.3)
    parser.add_argument("--runs", type=int, default=200, help="warm interleaved rounds")
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")


# -- hedge --------------------------------------------------------------------------------------


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
        cfg = settings(backend("primary", p_url, 0), backend("secondary", s_url, 1), **service_keys)
        async with ImageService(cfg, rng=random.Random(args.seed)) as service:
            await _load(service, request, args.warmup, args.concurrency)
            before = len(primary.requests) + len(secondary.requests)
            latencies, hedged, served = await _load(service, request, args.requests, args.concurrency)
            sent = len(primary.requests) + len(secondary.requests) - before
    return {
        "latency_ms": stats_ms(latencies),
        "hedges": hedged,
        "extra_request_share": round(sent / args.requests - 1, 4),
        "served_by_secondary": served.get("secondary", 0),
        "primary_cancelled": primary.cancelled,
    }


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


# -- http (scripts/bench_http.py) ---------------------------------------------------------------


def _http_module() -> Any:
    import bench_http

    return bench_http


def http_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        _http_module().add_arguments(parser)
    except ImportError:
        pass


SCENARIOS: dict[str, Scenario] = {
    "failover": Scenario("time to first image with the primary black-holed", run_failover,
                         print_failover, failover_arguments),
    "hedge": Scenario("p50/p99 with a heavy-tailed primary, hedging off vs on", run_hedge,
                      print_hedge, hedge_arguments),
    "http": Scenario("HTTP API throughput and latency (scripts/bench_http.py)",
                     lambda args: _http_module().run_http(args),
                     lambda report: _http_module()._print(report), http_arguments),
}


def _benchlib_scenarios() -> dict[str, Scenario]:
    """overhead, memory, compare, soak (scripts/benchlib/), then ``all`` of them."""
    from benchlib import scenarios
    from benchlib.run_all import all_arguments, print_all, run_all

    found = {name: Scenario(*spec) for name, spec in scenarios().items()}
    found["all"] = Scenario("every scenario in turn, with its defaults", lambda args: run_all(
        SCENARIOS, OUT_DIR, args.skip), print_all, all_arguments)
    return found


SCENARIOS.update(_benchlib_scenarios())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="scenario", required=True)
    for name, scenario in SCENARIOS.items():
        scenario.add_arguments(sub.add_parser(name, help=scenario.help))
    args = parser.parse_args(argv)
    configure_logging(level="error")
    scenario = SCENARIOS[args.scenario]
    report = scenario.run(args)
    if getattr(args, "json", False):
        print(json.dumps(report))
    else:
        scenario.print(report)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{args.scenario}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
