"""``memory``: 200 concurrent 1024x1024 generations in one service, five rounds.

The provider is ``noise_server.py`` in its own process (PNG of about 1.6 MB each, held 0.5 s so
that all 200 are in flight together), so that this process's RSS is the service's alone. Per
round: peak RSS (sampled every few ms, and the kernel's high-water mark when it can be reset),
RSS once the results are dropped, and RSS after ``malloc_trim(0)`` (the allocator giving freed
memory back: what is really still held). "No growth" compares the rounds' trimmed RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imagegate import ImageRequest, ImageService

from benchlib.common import (
    free_port,
    machine,
    malloc_trim,
    openai_backend,
    process,
    rss_mb,
    service_settings,
)

GROWTH_LIMIT_MB = 16.0


@contextlib.contextmanager
def noise_server(latency_s: float) -> Iterator[str]:
    port = free_port()
    script = Path(__file__).with_name("noise_server.py")
    with process(
        [sys.executable, str(script), "--port", str(port), "--latency", str(latency_s)], port
    ) as url:
        yield url


def _reset_peak() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to clear_refs); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _sample_peak(peak: list[float], every_s: float = 0.005) -> None:
    while True:
        peak[0] = max(peak[0], rss_mb())
        await asyncio.sleep(every_s)


async def _round(service: ImageService, request: ImageRequest, concurrency: int) -> dict[str, Any]:
    async def one() -> int:
        result = await service.generate(request)
        return len(result.images[0].data)  # the result itself is dropped at once

    gc.collect()
    malloc_trim()
    start = rss_mb()
    hwm = _reset_peak()
    peak = [start]
    sampler = asyncio.create_task(_sample_peak(peak))
    try:
        sizes = await asyncio.gather(*(one() for _ in range(concurrency)))
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    top = max(peak[0], _hwm_mb()) if hwm else peak[0]
    gc.collect()
    after = rss_mb()
    malloc_trim()
    trimmed = rss_mb()
    return {
        "start_mb": round(start, 1),
        "peak_mb": round(top, 1),
        "after_mb": round(after, 1),
        "after_trim_mb": round(trimmed, 1),
        "per_inflight_mb": round((top - start) / concurrency, 2),
        "image_mb": round(sum(sizes) / len(sizes) / 1024**2, 2),
    }


async def _measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    request = ImageRequest(prompt="memory", width=args.size, height=args.size, seed=1)
    settings = service_settings(
        openai_backend("noise", url, read_timeout_s=120.0), deadline_s=120.0
    )
    async with ImageService(settings) as service:
        await service.generate(request)  # the server encodes its image once; warm code paths
        gc.collect()
        malloc_trim()
        baseline = rss_mb()
        rounds = [await _round(service, request, args.concurrency) for _ in range(args.rounds)]
    return {"baseline_mb": round(baseline, 1), "rounds": rounds}


def run_memory(args: argparse.Namespace) -> dict[str, Any]:
    with noise_server(args.latency) as url:
        measured = asyncio.run(_measure(url, args))
    rounds = measured["rounds"]
    growth = rounds[-1]["after_trim_mb"] - rounds[0]["after_trim_mb"]
    image_mb = rounds[0]["image_mb"]
    per = max(r["per_inflight_mb"] for r in rounds)
    return {
        "scenario": "memory",
        "machine": machine(),
        "config": {
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "latency_s": args.latency,
            "image": f"{args.size}x{args.size} png, {image_mb} MB",
        },
        **measured,
        "peak_mb": max(r["peak_mb"] for r in rounds),
        "per_inflight_mb": per,
        "per_inflight_over_image_size": round(per / image_mb, 2) if image_mb else None,
        "growth_mb": round(growth, 1),
        "target": f"trimmed RSS after round {args.rounds} within {GROWTH_LIMIT_MB:g} MB of round 1",
        "target_met": growth < GROWTH_LIMIT_MB,
    }


def print_memory(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(
        f"memory: {cfg['concurrency']} concurrent generations of a {cfg['image']} "
        f"(held {cfg['latency_s']:g} s by the provider), {cfg['rounds']} rounds; "
        f"load {report['machine']['loadavg_1m']}"
    )
    print(f"  RSS before the first round: {report['baseline_mb']} MB")
    print(f"  {'round':<7}{'start':>9}{'peak':>9}{'after':>9}{'trimmed':>9}{'MB/in-flight':>14}")
    for i, r in enumerate(report["rounds"], 1):
        print(
            f"  {i:<7}{r['start_mb']:>9}{r['peak_mb']:>9}{r['after_mb']:>9}{r['after_trim_mb']:>9}"
            f"{r['per_inflight_mb']:>14}"
        )
    print(
        f"  per in-flight image: {report['per_inflight_mb']} MB = "
        f"{report['per_inflight_over_image_size']}x the encoded image"
    )
    print(f"  growth round 1 -> {cfg['rounds']} (trimmed): {report['growth_mb']} MB")
    print(f"target ({report['target']}): {'met' if report['target_met'] else 'MISSED'}")


def memory_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--latency", type=float, default=0.5, help="provider's answer delay, s")
