"""Benchmark the HTTP API: requests/s and p50/p99 latency at several concurrencies, for each
way of asking.

Three processes on loopback, so that no two share an event loop: an instant A1111 emulator
(``python -m imagegate.testing a1111``), the real server (``python -m imagegate serve``), and
this client (aiohttp). Every request asks for one 512x512 PNG; every answer is checked (a
base64 PNG in it). At each concurrency, one closed loop per mode, in turn:

- ``direct``: the same request sent to the emulator itself (``POST /sdapi/v1/txt2img``): the
  paired baseline, what the provider alone costs through the same client;
- ``sync``: ``POST /v1/images/generations``, the image in the JSON answer (``b64_json``);
- ``stream``: the same with ``"stream": true``, read until ``data: [DONE]`` (the image in the
  ``image_generation.completed`` event);
- ``jobs``: ``Prefer: respond-async`` (202), then the job's event stream read until its
  ``completed`` event, which carries the answer.

The server's RSS is read from /proc at the end.

    python scripts/bench.py http [--duration 5] [--concurrency 1,16,64] [--modes direct,sync,stream,jobs]
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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from benchlib.common import free_port, rss_mb, stop_process

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


async def _wait_ready(session: aiohttp.ClientSession, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready in {timeout:g} s")


MODES = ("direct", "sync", "stream", "jobs")
JSON = {"Content-Type": "application/json"}


def _png(b64: str) -> None:
    if not b64.startswith(_PNG):
        raise RuntimeError("the answer is not a base64 PNG")


async def _checked(r: aiohttp.ClientResponse, status: int = 200) -> None:
    if r.status != status:
        raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:300]!r}")


async def _sse(r: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) of each event of a stream (comments skipped)."""
    name, data = "message", []
    async for raw in r.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


async def _direct(session: aiohttp.ClientSession, url: str, size: int) -> None:
    body = {"prompt": "benchmark", "width": size, "height": size, "seed": 1}
    async with session.post(url + "/sdapi/v1/txt2img", json=body) as r:
        await _checked(r)
        _png((await r.json())["images"][0])


async def _sync(session: aiohttp.ClientSession, url: str, size: int) -> None:
    body = {"prompt": "benchmark", "size": f"{size}x{size}", "seed": 1}
    async with session.post(url + "/v1/images/generations", json=body) as r:
        await _checked(r)
        _png((await r.json())["data"][0]["b64_json"])


async def _stream(session: aiohttp.ClientSession, url: str, size: int) -> None:
    body = {"prompt": "benchmark", "size": f"{size}x{size}", "seed": 1, "stream": True}
    image = None
    async with session.post(url + "/v1/images/generations", json=body) as r:
        await _checked(r)
        async for _, data in _sse(r):
            if data == "[DONE]":
                break
            doc = json.loads(data)
            if doc.get("type") == "image_generation.completed":
                image = doc["b64_json"]
    _png(image or "")


async def _job(session: aiohttp.ClientSession, url: str, size: int) -> None:
    body = {"prompt": "benchmark", "size": f"{size}x{size}", "seed": 1}
    async with session.post(url + "/v1/images/generations", json=body,
                            headers={"Prefer": "respond-async"}) as r:
        await _checked(r, 202)
        events = (await r.json())["urls"]["events"]
    async with session.get(events) as r:
        await _checked(r)
        async for name, data in _sse(r):
            if name == "completed":
                _png(json.loads(data)["result"]["data"][0]["b64_json"])
                return
            if name in ("failed", "cancelled"):
                raise RuntimeError(f"job {name}: {data[:300]}")
    raise RuntimeError("the job's stream ended without its completed event")


CALLS = {"direct": _direct, "sync": _sync, "stream": _stream, "jobs": _job}


async def _one(session: aiohttp.ClientSession, mode: str, url: str, size: int) -> float:
    started = time.perf_counter()
    await CALLS[mode](session, url, size)
    return time.perf_counter() - started


async def _level(
    session: aiohttp.ClientSession, mode: str, url: str, concurrency: int, duration: float, size: int
) -> dict[str, Any]:
    """Closed loop: ``concurrency`` workers send back to back for ``duration`` seconds."""
    for _ in range(min(20, 2 * concurrency)):  # warm the connection pools
        await _one(session, mode, url, size)
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            latencies.append(await _one(session, mode, url, size))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "mode": mode,
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
    server_url: str, emulator_url: str, levels: list[int], modes: list[str], duration: float, size: int
) -> list[dict[str, Any]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        await _wait_ready(session, server_url + "/readyz")
        await _wait_ready(session, emulator_url + "/sdapi/v1/sd-models")  # "direct" calls it alone
        return [
            await _level(session, mode, emulator_url if mode == "direct" else server_url, c, duration, size)
            for c in levels
            for mode in modes
        ]


def run_http(args: Any) -> dict[str, Any]:
    """The ``http`` scenario: start emulator + server processes, measure, stop them."""
    duration = float(getattr(args, "duration", None) or 5.0)
    levels = [int(c) for c in str(getattr(args, "concurrency", None) or "1,16,64").split(",")]
    size = int(getattr(args, "size", None) or 512)
    modes = [m for m in str(getattr(args, "modes", None) or ",".join(MODES)).split(",") if m]
    if unknown := set(modes) - set(MODES):
        raise SystemExit(f"http: unknown mode(s) {sorted(unknown)}; choose from {', '.join(MODES)}")
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
            results = asyncio.run(_measure(f"http://127.0.0.1:{srv_port}", f"http://127.0.0.1:{emu_port}",
                                           levels, modes, duration, size))
            rss = round(rss_mb(srv.pid), 1)  # the server is still running here
            cpu = {
                "server": _cpu_s(srv.pid),
                "emulator": _cpu_s(emu.pid),
                "client": round(time.process_time() - client_cpu, 2),
            }
        log_lines = sum(1 for _ in (folder / "server.log").open("rb"))
    at16 = next((r for r in results if r["concurrency"] == 16 and r["mode"] == "sync"), None)
    direct = {r["concurrency"]: r for r in results if r["mode"] == "direct"}
    for r in results:  # what the gateway adds to the provider alone, at the same concurrency
        base = direct.get(r["concurrency"])
        if base is not None and r["mode"] != "direct":
            r["added_p50_ms"] = round(r["p50_ms"] - base["p50_ms"], 2)
            r["rps_ratio"] = round(r["rps"] / base["rps"], 3)
    return {
        "scenario": "http",
        "image": f"{size}x{size} png, base64",
        "modes": modes,
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
        f"{'concurrency':>11} {'mode':>7} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'+p50 ms':>8}"
    )
    for r in report["levels"]:
        plus = r.get("added_p50_ms", "")
        print(
            f"{r['concurrency']:>11} {r.get('mode', 'sync'):>7} {r['requests']:>9} {r['rps']:>8} "
            f"{r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8} {plus:>8}"
        )
    print("  +p50: over the same request sent to the emulator directly at that concurrency")
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
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated: direct (the emulator alone), sync, stream, jobs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
