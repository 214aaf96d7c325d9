"""``first_event``: how soon a listener hears of a request, and what listening costs.

- submit -> ``started``: routing's own first event, from ``ImageService.generate`` with a
  listener (A1111 emulator in this process, instant steps).
- provider report -> ``progress`` event: the A1111 emulator (``step_s`` per step, in this
  process, same monotonic clock) records when it *served* its first progress answer with
  work done for a task; the listener records when the ``progress`` event reached it. That
  difference is what imagegate adds to the provider's own report (goal: under 50 ms), for a
  library listener and for an HTTP client reading the job's SSE stream (imagegate's server
  on loopback, same process).
- first step -> ``progress`` event: how stale the news is end to end; it is bounded by
  ``progress_interval_s`` (the A1111 poll), so it is shown for two intervals.
- listening cost: 300 generations from the instant OpenAI-compatible emulator (its own
  process), interleaved: a raw aiohttp POST, ``generate`` with nobody listening, and with a
  listener; what each adds over the raw POST at p50 (the ``overhead`` scenario measures the
  first two with 1,000 calls).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from imagegate import ImageRequest, ImageService
from imagegate.events import ProgressEvent, StartedEvent
from imagegate.server import ServerOptions, create_app, running
from imagegate.testing import a1111 as a1111_emulator
from imagegate.testing import serve_app
from imagegate.testing.a1111_webui import Webui

from benchlib.common import (
    a1111_backend,
    a1111_settings,
    machine,
    ms,
    openai_backend,
    openai_emulator,
    print_table,
    service_settings,
    stats_ms,
)
from benchlib.overhead import added, bench_request, interleaved, raw_client

TARGET_ADDED_MS = 50.0
INTERVALS = (0.05, 0.5)


def run_first_event(args: argparse.Namespace) -> dict[str, Any]:
    measured = asyncio.run(_measure(args))
    with openai_emulator() as url:
        listening = asyncio.run(_listening_cost(url, args.cost_runs))
    report_ms = measured["report_to_event"]
    worst = max(report_ms["library"]["p99"], report_ms["http_sse"]["p99"])
    return {
        "scenario": "first_event",
        "machine": machine(),
        "config": {"requests": args.requests, "steps": args.steps, "step_s": args.step_s,
                   "intervals_s": list(INTERVALS), "cost_runs": args.cost_runs},
        **measured,
        "listening_added_ms": listening,
        "target": f"provider report -> event p99 < {TARGET_ADDED_MS:g} ms (library and SSE)",
        "target_met": worst < TARGET_ADDED_MS,
    }


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    webui = Webui(step_s=args.step_s)
    request = ImageRequest(prompt="bench", width=64, height=64, steps=args.steps)
    started: list[float] = []
    report: dict[str, list[float]] = {"library": [], "http_sse": []}
    staleness: dict[str, list[float]] = {}
    async with serve_app(a1111_emulator.create_app(webui=webui)) as url:
        for interval in INTERVALS:
            settings = a1111_settings(a1111_backend("a1111", url, 0, progress_interval_s=interval))
            async with ImageService(settings) as service:
                for _ in range(args.requests):
                    t0 = time.monotonic()
                    seen = await _first_events(service, request)
                    task = next(reversed(webui.first_progress_at))
                    started.append(seen["started"] - t0)
                    staleness.setdefault(f"interval {interval:g} s", []).append(
                        seen["progress"] - webui.first_step_at[task])
                    if interval == INTERVALS[0]:
                        report["library"].append(seen["progress"] - webui.first_progress_at[task])
        report["http_sse"] = await _over_http(url, webui, args)
    return {
        "submit_to_started_ms": stats_ms(started),
        "report_to_event": {k: stats_ms(v) for k, v in report.items()},
        "first_step_to_event": {k: stats_ms(v) for k, v in staleness.items()},
    }


async def _first_events(service: ImageService, request: ImageRequest) -> dict[str, float]:
    seen: dict[str, float] = {}

    def listen(event: Any) -> None:
        now = time.monotonic()
        if isinstance(event, StartedEvent):
            seen.setdefault("started", now)
        elif isinstance(event, ProgressEvent) and event.fraction:
            seen.setdefault("progress", now)

    await service.generate(request, on_event=listen)
    return seen


async def _over_http(url: str, webui: Webui, args: argparse.Namespace) -> list[float]:
    """A job through imagegate's HTTP API; its SSE stream read by an aiohttp client."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = a1111_settings(
            a1111_backend("a1111", url, 0, progress_interval_s=INTERVALS[0]),
            output_dir=Path(tmp),
        )
        out: list[float] = []
        async with running(create_app(settings, ServerOptions())) as base, aiohttp.ClientSession() as http:
            body = {"prompt": "bench", "size": "64x64", "steps": args.steps}
            for _ in range(args.requests):
                async with http.post(base + "/v1/images/generations", json=body,
                                     headers={"Prefer": "respond-async"}) as resp:
                    job = await resp.json()
                arrived = await _first_progress(http, job["urls"]["events"])
                task = next(reversed(webui.first_progress_at))
                out.append(arrived - webui.first_progress_at[task])
        return out


async def _first_progress(http: aiohttp.ClientSession, url: str) -> float:
    arrived = 0.0
    async with http.get(url) as resp:
        async for raw in resp.content:
            line = raw.decode()
            if line.startswith("data: ") and not arrived:
                data = json.loads(line[6:])
                if data["type"] == "progress" and data.get("fraction"):
                    arrived = time.monotonic()
    return arrived


async def _listening_cost(url: str, runs: int) -> dict[str, dict[str, float]]:
    request = bench_request(512)
    settings = service_settings(openai_backend("emulator", url))
    async with aiohttp.ClientSession() as session, ImageService(settings) as service:
        heard: list[Any] = []

        async def quiet() -> Any:
            return await service.generate(request)

        async def listening() -> Any:
            heard.clear()
            return await service.generate(request, on_event=heard.append)

        clients = {"raw_aiohttp": raw_client(session, url, request), "nobody_listening": quiet,
                   "listening": listening}
        samples = await interleaved(clients, runs, warmup=50)
    return {name: added(samples, name, "raw_aiohttp") for name in ("nobody_listening", "listening")}


def print_first_event(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(f"first_event: {cfg['requests']} requests per measure, {cfg['steps']} steps of "
          f"{ms(cfg['step_s']):g} ms, A1111 emulator in this process; load "
          f"{report['machine']['loadavg_1m']}")
    print_table({"submit -> started": report["submit_to_started_ms"]})
    print("  provider's first report -> progress event (what imagegate adds):")
    print_table({f"  {k}": v for k, v in report["report_to_event"].items()})
    print("  provider's first step -> progress event (bounded by progress_interval_s):")
    print_table({f"  {k}": v for k, v in report["first_step_to_event"].items()})
    print("  added over a raw aiohttp POST, p50 / paired p50 (ms):")
    for name, row in report["listening_added_ms"].items():
        print(f"    {name:<20}{row['p50']:>8.3f}{row['paired_median']:>10.3f}")
    print(f"target ({report['target']}): {'met' if report['target_met'] else 'MISSED'}")


def first_event_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--step-s", type=float, default=0.02, dest="step_s")
    parser.add_argument("--cost-runs", type=int, default=300, dest="cost_runs")
