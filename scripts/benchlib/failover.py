"""``failover``: time to the first image with the primary black-holed in the TLS handshake
(cold, before its breaker opens) and warm (breaker open), against a direct call."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from contextlib import AsyncExitStack
from typing import Any

from imagegate import ImageRequest, ImageService
from imagegate.models import Deadline
from imagegate.routing.policy import percentile
from imagegate.testing import FaultProxy, Knobs, LocalCA

from benchlib.common import a1111_backend, a1111_settings, emulator, ms, stats_ms, timed


def run_failover(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_failover(args))


async def _failover(args: argparse.Namespace) -> dict[str, Any]:
    request = ImageRequest(prompt="a lighthouse at dusk", width=args.size, height=args.size)
    ca = LocalCA(tempfile.mkdtemp(prefix="imagegate-bench-"))
    async with AsyncExitStack() as stack:
        primary_url = await stack.enter_async_context(emulator(Knobs(), tls=ca))
        secondary_url = await stack.enter_async_context(emulator(Knobs()))
        proxy = await stack.enter_async_context(FaultProxy(primary_url, mode="tls_blackhole"))
        cfg = a1111_settings(
            a1111_backend("primary", proxy.url, 0, connect_timeout_s=args.connect_timeout, ca_bundle=ca.ca_file),
            a1111_backend("secondary", secondary_url, 1),
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
