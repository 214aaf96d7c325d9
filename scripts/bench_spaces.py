"""Benchmark: N concurrent requests through the Space backend to the local stand-in Space.

Starts ``python -m imagegate.testing.gradio_space`` in a subprocess (so the thread counts
below are the client side only), then fires N concurrent ``generate()`` calls through one
HFSpaceBackend with ``max_concurrency = C`` and reports wall time, peak thread count, and the
largest event-loop lag seen by a ticker task that wants to wake every 5 ms.

    python scripts/bench_spaces.py [--requests 50] [--concurrency 4] [--delay 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from typing import Any

import aiohttp
from imagegate.backends.hf_space import HFSpaceSettings
from imagegate.backends.hf_space.backend import HFSpaceBackend
from imagegate.models import Deadline, ImageRequest

TICK_S = 0.005


def start_space() -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegate.testing.gradio_space", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"the stand-in Space did not start: {line!r}")
    return proc, line.split("listening on ")[1].split()[0]


async def run(url: str, requests: int, concurrency: int, delay: float) -> dict[str, Any]:
    settings = HFSpaceSettings(
        name="bench",
        src=url,
        api_name="/slow" if delay > 0 else "/generate",
        inputs={"prompt": "text"},
        fixed={"delay": delay} if delay > 0 else {},
        max_concurrency=concurrency,
        read_timeout_s=60,
    )
    lags: list[float] = []
    peak_threads = threading.active_count()
    baseline = peak_threads

    async def ticker() -> None:
        nonlocal peak_threads
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK_S)
            lags.append(time.monotonic() - before - TICK_S)
            peak_threads = max(peak_threads, threading.active_count())

    async with aiohttp.ClientSession() as http:
        backend = HFSpaceBackend(settings, secrets={}, session=http)
        tick = asyncio.create_task(ticker())
        start = time.monotonic()
        results = await asyncio.gather(
            *(
                backend.generate(
                    ImageRequest(prompt=f"p{i}", width=64, height=64), deadline=Deadline.after(120)
                )
                for i in range(requests)
            ),
            return_exceptions=True,
        )
        wall = time.monotonic() - start
        tick.cancel()
        await backend.aclose()
    failures = [r for r in results if isinstance(r, BaseException)]
    return {
        "requests": requests,
        "max_concurrency": concurrency,
        "delay_s": delay,
        "ok": requests - len(failures),
        "failed": len(failures),
        "wall_s": round(wall, 3),
        "threads_before": baseline,
        "peak_threads": peak_threads,
        "max_loop_lag_ms": round(max(lags) * 1000, 2),
        "p99_loop_lag_ms": round(sorted(lags)[int(len(lags) * 0.99)] * 1000, 2),
        "errors": sorted({f"{type(f).__name__}: {f}" for f in failures})[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--delay", type=float, default=0.2, help="seconds each generation takes (0: /generate)"
    )
    args = parser.parse_args()
    proc, url = start_space()
    try:
        report = asyncio.run(run(url, args.requests, args.concurrency, args.delay))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    for key, value in report.items():
        print(f"{key:>18}: {value}")
    return 0 if report["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
