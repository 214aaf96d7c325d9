"""Graceful shutdown: in-flight generations finish within the grace period, the rest get 503,
sessions close cleanly; the real ``imagegate serve`` process on SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from imagegate.server import ServerOptions, create_app, running
from imagegate.server.state import SERVICE, STATE
from imagegate.testing import Knobs

from tests.conftest import write_config
from tests.server.kit import a1111_settings, closed_port_url, gateway

GEN = "/v1/images/generations"
BODY = {"prompt": "x", "size": "64x64"}


async def _post(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.post(url + GEN, json=BODY) as r:
        return r.status, await r.json()


async def _until_generating(knobs: Knobs, count: int = 1) -> None:
    """Wait until the emulator has received ``count`` txt2img calls."""
    async with asyncio.timeout(10):
        while sum(r.path == "/sdapi/v1/txt2img" for r in knobs.requests) < count:
            await asyncio.sleep(0.01)


async def test_shutdown_lets_an_in_flight_generation_finish(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    knobs.latency_s = 0.5
    app = create_app(a1111_settings(a1111_url, tmp_path), ServerOptions(shutdown_grace_s=10))
    server = running(app)
    url = await server.__aenter__()
    request = asyncio.create_task(_post(url))
    await _until_generating(knobs)
    await server.__aexit__(None, None, None)  # the same cleanup a signal triggers
    status, body = await request
    assert status == 200, body
    assert body["data"][0]["b64_json"]
    assert app[SERVICE].backends == []  # the service (and its session) is closed


async def test_generations_past_the_grace_period_are_cancelled_with_503(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    knobs.latency_s = 5.0
    app = create_app(a1111_settings(a1111_url, tmp_path), ServerOptions(shutdown_grace_s=0.2))
    server = running(app)
    url = await server.__aenter__()
    request = asyncio.create_task(_post(url))
    await _until_generating(knobs)
    started = time.monotonic()
    await server.__aexit__(None, None, None)
    status, body = await request
    assert time.monotonic() - started < 0.2 + 2.0
    assert status == 503
    assert body["error"]["code"] == "shutting_down"
    async with asyncio.timeout(2):  # the provider call was cancelled, not left running
        while knobs.cancelled == 0:
            await asyncio.sleep(0.01)


async def test_while_draining_new_generations_and_readiness_answer_503(
    a1111_url: str, tmp_path: Path
) -> None:
    async with gateway(a1111_settings(a1111_url, tmp_path)) as (url, app):
        app[STATE].closing = True  # what the shutdown hook sets once the listener is closed
        status, body = await _post(url)
        assert status == 503 and body["error"]["code"] == "shutting_down"
        async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as r:
            assert r.status == 503
        async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as r:
            assert r.status == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_imagegate_serve_drains_on_signal_and_closes_cleanly(
    a1111_url: str, knobs: Knobs, tmp_path: Path, sig: signal.Signals
) -> None:
    knobs.latency_s = 1.0
    config = write_config(
        tmp_path,
        f'[service]\noutput_dir = "{tmp_path / "out"}"\n\n'
        f'[[backend]]\nname = "local"\nkind = "a1111"\nbase_url = "{a1111_url}"\n',
    )
    url = closed_port_url()
    port = url.rsplit(":", 1)[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-X",
        "dev",
        "-m",
        "imagegate",
        "serve",
        "--config",
        str(config),
        "--port",
        port,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={
            "PATH": "/usr/bin:/bin",
            "IMAGEGATE_SHUTDOWN_GRACE_S": "10",
            "PYTHONWARNINGS": "always",
        },
    )
    try:
        await _wait_healthy(url)
        request = asyncio.create_task(_post(url))
        await _until_generating(knobs)
        proc.send_signal(sig)
        status, body = await request
        assert status == 200, body
        async with asyncio.timeout(10):
            _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = stderr.decode()
    assert proc.returncode == 0, log
    assert "Unclosed" not in log and "Traceback" not in log, log
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert (
        events.index("server_stopping")
        < events.index("service_stopped")
        < events.index("server_stopped")
    )
    assert "http_request" in events


async def _wait_healthy(url: str) -> None:
    async with asyncio.timeout(20), aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
