"""Benchmark the HTTP API: requests/s and p50/p99 latency at several concurrencies.

Three processes on loopback, so that no two share an event loop: an instant A1111 emulator
(``python -m imagegate.testing a1111``), the real server (``python -m imagegate serve``), and
this client (aiohttp). Every request asks for one 512x512 PNG as ``b64_json``; every answer is
checked (status 200, base64 of a PNG). The server's RSS is read from /proc at the end.

    python scripts/bench.py http [--duration 5] [--concurrency 1,16,64] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from benchlib.common import free_port, stop_process

TARGET_RPS_AT_16 = 300.0
TARGET_P99_MS = 100.0
_PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()[:8]


@contextlib.contextmanager
def _process(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        yield proc
    finally:
        stop_process(proc, timeout=15)


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


async def _wait_ready(session: aiohttp.ClientSession, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready in {timeout:g} s")


async def _one(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    started = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        payload = await r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {payload[:300]!r}")
    elapsed = time.perf_counter() - started
    if not json.loads(payload)["data"][0]["b64_json"].startswith(_PNG):
        raise RuntimeError("the answer is not a base64 PNG")
    return elapsed


async def _level(
    session: aiohttp.ClientSession, url: str, concurrency: int, duration: float, size: int
) -> dict[str, Any]:
    """Closed loop: ``concurrency`` workers send back to back for ``duration`` seconds."""
    body = json.dumps({"prompt": "benchmark", "size": f"{size}x{size}", "seed": 1}).encode()
    for _ in range(min(20, 2 * concurrency)):  # warm the connection pools
        await _one(session, url, body)
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            latencies.append(await _one(session, url, body))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": len(ordered),
        "rps": round(len(ordered) / wall, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def _write_config(folder: Path, emulator_url: str) -> Path:
    config = folder / "bench.toml"
    config.write_text(
        f'[service]\noutput_dir = "{folder / "out"}"\nprobe_interval_s = 30.0\n\n'
        f'[[backend]]\nname = "emulator"\nkind = "a1111"\nbase_url = "{emulator_url}"\n'
        "max_concurrency = 256\nqueue = true\n"
    )
    return config


async def _measure(
    server_url: str, levels: list[int], duration: float, size: int
) -> list[dict[str, Any]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        await _wait_ready(session, server_url + "/readyz")
        return [
            await _level(session, server_url + "/v1/images/generations", c, duration, size)
            for c in levels
        ]


def run_http(args: Any) -> dict[str, Any]:
    """The ``http`` scenario: start emulator + server processes, measure, stop them."""
    duration = float(getattr(args, "duration", None) or 5.0)
    levels = [int(c) for c in str(getattr(args, "concurrency", None) or "1,16,64").split(",")]
    size = int(getattr(args, "size", None) or 512)
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp:
        folder = Path(tmp)
        emu_port, srv_port = free_port(), free_port()
        emulator = [sys.executable, "-m", "imagegate.testing", "a1111", "--port", str(emu_port)]
        config = _write_config(folder, f"http://127.0.0.1:{emu_port}")
        server = [
            sys.executable,
            "-m",
            "imagegate",
            "serve",
            "--config",
            str(config),
            "--port",
            str(srv_port),
        ]
        with (
            _process(emulator, folder / "emulator.log") as emu,
            _process(server, folder / "server.log") as srv,
        ):
            client_cpu = time.process_time()
            results = asyncio.run(_measure(f"http://127.0.0.1:{srv_port}", levels, duration, size))
            rss = _rss_mb(srv.pid)
            cpu = {
                "server": _cpu_s(srv.pid),
                "emulator": _cpu_s(emu.pid),
                "client": round(time.process_time() - client_cpu, 2),
            }
        log_lines = sum(1 for _ in (folder / "server.log").open("rb"))
    at16 = next((r for r in results if r["concurrency"] == 16), None)
    return {
        "scenario": "http",
        "image": f"{size}x{size} png, b64_json",
        "duration_s_per_level": duration,
        "levels": results,
        "server_rss_mb": rss,
        "cpu_s": cpu,
        "server_log_lines": log_lines,
        "cpus": os.cpu_count(),
        "target": f">= {TARGET_RPS_AT_16:g} req/s at concurrency 16, p99 < {TARGET_P99_MS:g} ms",
        "target_met": bool(
            at16 and at16["rps"] >= TARGET_RPS_AT_16 and at16["p99_ms"] < TARGET_P99_MS
        ),
    }


def print_http(report: dict[str, Any]) -> None:
    print(
        f"http: {report['image']}, {report['duration_s_per_level']:g} s per level, {report['cpus']} CPUs"
    )
    print(
        f"{'concurrency':>11} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for r in report["levels"]:
        print(
            f"{r['concurrency']:>11} {r['requests']:>9} {r['rps']:>8} {r['p50_ms']:>8} "
            f"{r['p99_ms']:>8} {r['max_ms']:>8}"
        )
    print(f"server RSS at the end: {report['server_rss_mb']} MB")
    cpu = report["cpu_s"]
    print(
        f"CPU seconds: server {cpu['server']}, emulator {cpu['emulator']}, client {cpu['client']}"
    )
    print(f"target ({report['target']}): {'met' if report['target_met'] else 'MISSED'}")


def http_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per concurrency level")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
