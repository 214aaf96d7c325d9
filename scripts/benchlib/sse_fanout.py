"""``sse_fanout``: the events per second one server sustains to 100 SSE listeners of a job.

Two processes on loopback: the server (``benchlib/sse_server.py``: imagegate's real app,
real job store, real ``GET /v1/jobs/{id}/events``; its job fed by hand) and this client, 100
aiohttp connections reading the job's stream and parsing every event. Two rounds:

- flat out: N progress events appended as fast as the server's loop lets the listeners keep
  up; events/s = N / (first append -> the last listener's final event), and deliveries/s =
  listeners x that;
- steady: 100 events/s (a fast provider's progress), the delivery latency (from the event's
  ``at`` to its arrival at a listener, wall clock, one machine) at p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchlib.common import free_port, machine, print_table, stats_ms

TARGET_EVENTS_S = 100.0  # a fast provider reports ~10-100 times a second


def run_sse_fanout(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    scripts = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (scripts, os.environ.get("PYTHONPATH", "")) if p)
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchlib.sse_server", str(port), env={**os.environ, "PYTHONPATH": path},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready(base)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            flat = await _round(server, http, base, "job_flat", args.listeners, args.events, 0)
            steady = await _round(server, http, base, "job_steady", args.listeners,
                                  args.steady_events, args.steady_rate)
    finally:
        server.terminate()
        await server.wait()
    flat_s = flat["last_final"] - flat["t0"]
    events_s = args.events / flat_s
    return {
        "scenario": "sse_fanout",
        "machine": machine(),
        "config": {"listeners": args.listeners, "events": args.events,
                   "steady_rate": args.steady_rate, "steady_events": args.steady_events},
        "flat_out": {"events_per_s": round(events_s, 1),
                     "deliveries_per_s": round(events_s * args.listeners, 1),
                     "seconds": round(flat_s, 3), "server_cpu_s": flat["cpu"],
                     "deliveries_per_server_cpu_s": (
                         round(args.events * args.listeners / flat["cpu"]) if flat["cpu"] else None),
                     "every_listener_got_every_event": flat["complete"]},
        "steady": {"latency_ms": stats_ms(steady["latencies"]),
                   "every_listener_got_every_event": steady["complete"]},
        "target": f">= {TARGET_EVENTS_S:g} events/s to {args.listeners} listeners",
        "target_met": events_s >= TARGET_EVENTS_S and flat["complete"] and steady["complete"],
    }


async def _wait_ready(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(base + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the SSE bench server did not start")


async def _command(server: asyncio.subprocess.Process, line: str, answer: str) -> list[str]:
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write((line + "\n").encode())
    await server.stdin.drain()
    while True:
        words = (await server.stdout.readline()).decode().split()
        if not words:
            raise RuntimeError("the SSE bench server stopped")
        if words[0] == answer:
            return words


async def _round(
    server: asyncio.subprocess.Process, http: aiohttp.ClientSession, base: str, job: str,
    listeners: int, count: int, rate: float,
) -> dict[str, Any]:
    await _command(server, f"new {job}", "ready")
    connected = 0
    all_in = asyncio.Event()

    def on_first() -> None:
        nonlocal connected
        connected += 1
        if connected == listeners:
            all_in.set()

    url = f"{base}/v1/jobs/{job}/events"
    readers = [asyncio.create_task(_listen(http, url, on_first, timed=rate > 0))
               for _ in range(listeners)]
    await asyncio.wait_for(all_in.wait(), 60)
    _, t0, _, cpu = await _command(server, f"go {job} {count} {rate}", "done")
    got = await asyncio.gather(*readers)
    return {
        "t0": float(t0), "cpu": round(float(cpu), 2),
        "last_final": max(g["final_at"] for g in got),
        "latencies": [lat for g in got for lat in g["latencies"]],
        "complete": all(g["count"] == count + 2 for g in got),  # started + N + completed
    }


async def _listen(
    http: aiohttp.ClientSession, url: str, on_first: Any, *, timed: bool
) -> dict[str, Any]:
    """Count the events (the client must not be the bottleneck: JSON is parsed only when
    ``timed``, for the latency); note when the final one arrived."""
    count, latencies, final_at = 0, [], 0.0
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=300)) as resp:
        async for raw in resp.content:
            if raw.startswith(b"event: "):
                if raw == b"event: completed\n":
                    final_at = time.monotonic()
                continue
            if not raw.startswith(b"data: "):
                continue
            count += 1
            if count == 1:
                on_first()
            elif timed and raw.startswith(b'data: {"at"'):
                latencies.append(time.time() - json.loads(raw[6:])["at"])
    return {"count": count, "latencies": latencies, "final_at": final_at}


def print_sse_fanout(report: dict[str, Any]) -> None:
    cfg, flat = report["config"], report["flat_out"]
    print(f"sse_fanout: {cfg['listeners']} listeners of one job, server and client in their own "
          f"processes; load {report['machine']['loadavg_1m']}")
    print(f"  flat out: {cfg['events']} events in {flat['seconds']} s = {flat['events_per_s']} "
          f"events/s, {flat['deliveries_per_s']} deliveries/s; all delivered: "
          f"{flat['every_listener_got_every_event']}")
    print(f"  server CPU {flat['server_cpu_s']} s: {flat['deliveries_per_server_cpu_s']} deliveries per "
          "CPU second (the ceiling if the listeners kept up)")
    print(f"  steady {cfg['steady_rate']:g} events/s, delivery latency:")
    print_table({"event at -> listener": report["steady"]["latency_ms"]})
    print(f"target ({report['target']}): {'met' if report['target_met'] else 'MISSED'}")


def sse_fanout_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listeners", type=int, default=100)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--steady-rate", type=float, default=100.0, dest="steady_rate")
    parser.add_argument("--steady-events", type=int, default=300, dest="steady_events")

