"""``cancel``: how long a cancel takes to reach the provider (goal: under 100 ms).

The A1111 emulator (a slow job: 150 steps of 20 ms) records the monotonic time its
``POST /sdapi/v1/interrupt`` arrived; imagegate's HTTP server and the client run in the same
process, so the clocks agree. Three ways to give up, each measured ``--runs`` times once the
webui is two steps into our job:

- ``job_cancel``: ``POST /v1/jobs/{id}/cancel`` sent -> interrupt at the emulator;
- ``client_gone``: a synchronous ``POST /v1/images/generations`` whose client closes its
  connection -> interrupt (aiohttp cancels the handler: ``handler_cancellation``);
- ``library``: ``task.cancel()`` on ``ImageService.generate`` -> interrupt.

Each interrupt must hit our own running task (the emulator records which task it hit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from imagegate import ImageRequest, ImageService
from imagegate.server import ServerOptions, create_app, running
from imagegate.testing import a1111 as a1111_emulator
from imagegate.testing import serve_app
from imagegate.testing.a1111_webui import Webui

from benchlib.common import a1111_backend, a1111_settings, machine, print_table, stats_ms

TARGET_MS = 100.0
BODY = {"prompt": "bench", "size": "64x64", "steps": 150}


def run_cancel(args: argparse.Namespace) -> dict[str, Any]:
    samples = asyncio.run(_measure(args.runs))
    worst = max(max(v) for v in samples.values())
    return {
        "scenario": "cancel",
        "machine": machine(),
        "config": {"runs": args.runs, "job": "150 steps of 20 ms"},
        "to_interrupt_ms": {name: stats_ms(values) for name, values in samples.items()},
        "target": f"every cancel reaches the emulator within {TARGET_MS:g} ms",
        "target_met": worst * 1000 < TARGET_MS,
    }


async def _measure(runs: int) -> dict[str, list[float]]:
    webui = Webui(step_s=0.02)
    out: dict[str, list[float]] = {"job_cancel": [], "client_gone": [], "library": []}
    with tempfile.TemporaryDirectory() as tmp:
        async with serve_app(a1111_emulator.create_app(webui=webui)) as url:
            settings = a1111_settings(a1111_backend("a1111", url, 0), output_dir=Path(tmp))
            async with running(create_app(settings, ServerOptions())) as base, \
                    aiohttp.ClientSession() as http, ImageService(settings) as service:
                for _ in range(runs):
                    out["job_cancel"].append(await _once(webui, lambda: _job_cancel(http, base)))
                    out["client_gone"].append(await _once(webui, lambda: _client_gone(http, base, webui)))
                    out["library"].append(await _once(webui, lambda: _library(service, webui)))
    return out


async def _once(webui: Webui, give_up: Callable[[], Awaitable[float]]) -> float:
    """Run one way of giving up; seconds from its act to the interrupt of our task."""
    before = len(webui.interrupts)
    sent = await give_up()
    for _ in range(500):
        if len(webui.interrupts) > before:
            break
        await asyncio.sleep(0.01)
    hit = webui.interrupts[before]
    if hit.task is None:
        raise RuntimeError("the interrupt hit no running task")
    while webui.current_task is not None:  # let the webui finish before the next run
        await asyncio.sleep(0.01)
    return hit.at - sent


async def _started(webui: Webui) -> None:
    while webui.sampling_step < 2 or webui.current_task is None:
        await asyncio.sleep(0.005)


async def _job_cancel(http: aiohttp.ClientSession, base: str) -> float:
    async with http.post(base + "/v1/images/generations", json=BODY,
                         headers={"Prefer": "respond-async"}) as resp:
        job = await resp.json()
    async with http.get(job["urls"]["events"]) as resp:  # wait until it makes progress
        async for raw in resp.content:
            if raw.startswith(b"event: progress"):
                break
    sent = time.monotonic()
    async with http.post(job["urls"]["cancel"]) as resp:
        await resp.read()
    return sent


async def _client_gone(http: aiohttp.ClientSession, base: str, webui: Webui) -> float:
    return await _give_up(asyncio.create_task(http.post(base + "/v1/images/generations", json=BODY)), webui)


async def _library(service: ImageService, webui: Webui) -> float:
    request = ImageRequest(prompt="bench", width=64, height=64, steps=150)
    return await _give_up(asyncio.create_task(service.generate(request)), webui)


async def _give_up(call: asyncio.Task[Any], webui: Webui) -> float:
    """Cancel ``call`` once the webui works on it; when that was."""
    await _started(webui)
    sent = time.monotonic()
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    return sent


def print_cancel(report: dict[str, Any]) -> None:
    print(f"cancel: {report['config']['runs']} runs each, A1111 emulator ({report['config']['job']}), "
          f"server and client in this process; load {report['machine']['loadavg_1m']}")
    print_table(report["to_interrupt_ms"])
    print(f"target ({report['target']}): {'met' if report['target_met'] else 'MISSED'}")


def cancel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=20)
