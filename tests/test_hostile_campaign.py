"""Issue 15's campaign: a hostile provider and a hostile client against imagegate, one test per
finding, everything on 127.0.0.1, the providers being imagegate.testing's emulators switched
to their hostile modes (huge_body, echo_auth, bad_headers, many_images, url_answer url=,
image_url). Timeouts are fractions of a second, set through the same [service] keys users set.
``scripts/hostile_probe.py`` measures the same findings against a real ``imagegate serve``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from hostile_probe import serve_command
from imagegate.backends.download import DownloadPolicy, is_public_address
from imagegate.config import Settings
from imagegate.diagnose.render import write_report
from imagegate.diagnose.run import all_secrets, diagnose
from imagegate.errors import BadResponse
from imagegate.models import ImageRequest
from imagegate.routing import ImageService
from imagegate.server import ServerOptions
from imagegate.server.limits import Throttled, effective_max_connections
from imagegate.testing import Knobs, make_image, serve_app
from imagegate.testing import a1111 as a1111_emulator
from imagegate.testing import comfyui as comfyui_emulator
from imagegate.testing import fal as fal_emulator
from imagegate.testing import hf_inference as hf_emulator
from imagegate.testing import hub as hub_emulator
from imagegate.testing import novita as novita_emulator
from imagegate.testing import openai_images as openai_emulator
from imagegate.testing import replicate as replicate_emulator
from imagegate.testing import stability as stability_emulator
from imagegate.testing import together as together_emulator
from structlog.testing import capture_logs

from tests.conftest import make_settings, write_config
from tests.server.kit import closed_port_url, gateway

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
KEY = "sk-live+AbC/123=xyz-campaign-0042"
USER, PASSWORD = "webui-admin", "p@ss word+/=7"
SECRETS = {"HOSTILE_KEY": KEY, "HOSTILE_USER": USER, "HOSTILE_PASSWORD": PASSWORD}
FORMS = [KEY, quote(KEY, safe=""), PASSWORD, quote(PASSWORD, safe=""),
         base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()]
GEN = "/v1/images/generations"
PROMPT = {"prompt": "a lighthouse", "size": "256x256"}
HTTP_KINDS = ("a1111", "novita", "stability", "hf_inference", "openai", "comfyui", "fal", "replicate", "together")
EMULATORS: dict[str, Callable[..., web.Application]] = {
    "novita": novita_emulator.create_app, "stability": stability_emulator.create_app,
    "hf_inference": hf_emulator.create_app, "openai": openai_emulator.create_app,
    # issue 19 (ComfyUI's key: a reverse proxy's Bearer key in front of it)
    "comfyui": comfyui_emulator.create_app, "fal": fal_emulator.create_app,
    "replicate": replicate_emulator.create_app, "together": together_emulator.create_app,
}
MEMORY_BOUND_MB = 48.0  # caps here are 1-2 MiB: a read that held 1 GiB would show at once


def shown(text: str) -> list[str]:
    """The forms of the configured secrets found in ``text``."""
    return [form for form in FORMS if form in text]


def table(kind: str, url: str, **keys: Any) -> dict[str, Any]:
    """A [[backend]] table for ``kind`` at ``url`` with small caps and quick polling."""
    t: dict[str, Any] = {"name": kind, "kind": kind, "base_url": url, "max_image_bytes": 2**20}
    if kind == "a1111":
        t.update(username_env="HOSTILE_USER", password_env="HOSTILE_PASSWORD")
    else:
        t["api_key_env"] = "HOSTILE_KEY"
    t.update({"novita": {"poll_interval_s": 0.05}, "openai": {"model": "dall-e-2"},
              "hf_inference": {"model": "emulator/tiny"}, "fal": {"poll_interval_s": 0.05},
              "replicate": {"poll_interval_s": 0.05}, "comfyui": {"poll_interval_s": 0.05}}.get(kind, {}))
    return {**t, **keys}


@contextlib.asynccontextmanager
async def provider(kind: str, knobs: Knobs) -> AsyncIterator[str]:
    app = (a1111_emulator.create_app(knobs=knobs, username=USER, password=PASSWORD) if kind == "a1111"
           else EMULATORS[kind](knobs=knobs, api_key=KEY))
    async with serve_app(app) as url:
        yield url


@contextlib.asynccontextmanager
async def hub(knobs: Knobs) -> AsyncIterator[str]:
    state = hub_emulator.HubState()
    state.set_space("owner/app")
    async with serve_app(hub_emulator.create_app(knobs=knobs, hub=state)) as url:
        yield url


def space_tables(hub_url: str) -> list[dict[str, Any]]:
    """A hub Space (its app unreachable) and a Space given by ``src`` (the hub's server)."""
    return [
        {"name": "space", "kind": "hf_space", "space": "owner/app", "hub_url": hub_url,
         "src": closed_port_url(), "token_env": "HOSTILE_KEY", "connect_timeout_s": 0.5},
        {"name": "space-src", "kind": "hf_space", "src": hub_url, "token_env": "HOSTILE_KEY"},
    ]


def settings_for(tables: list[dict[str, Any]], tmp_path: Path, **service: Any) -> Settings:
    service = {"output_dir": tmp_path / "out", "probe_interval_s": 3600.0, "deadline_s": 10.0, **service}
    return make_settings(tables, service=service, environ=SECRETS, tmp_path=tmp_path)


async def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as http, http.post(
        url + GEN, data=json.dumps(body), headers={"Content-Type": "application/json", **(headers or {})}
    ) as resp:
        return resp.status, await resp.text(), resp.headers


async def get(url: str, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url + path) as resp:
        return resp.status, await resp.text()


async def healthz_once_free(url: str, timeout: float = 10.0) -> int:
    """``/healthz``'s status, polled until it is 200 or ``timeout`` passes (the server lets
    go of closed connections on its own time: longer on busy CPUs)."""
    end = time.monotonic() + timeout
    while True:
        status = 0  # no answer
        with contextlib.suppress(aiohttp.ClientError):
            status = (await get(url, "/healthz"))[0]
        if status == 200 or time.monotonic() > end:
            return status
        await asyncio.sleep(0.1)


async def raw(url: str, data: bytes, *, read_for: float = 5.0) -> bytes:
    """Send ``data`` on a new connection; everything answered until it closes (or ``read_for``)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(1 << 20), read_for)
    finally:
        writer.close()


def request_bytes(body: bytes, *headers: bytes, host: bytes = b"x", content_type: bytes = b"application/json") -> bytes:
    lines = [b"POST " + GEN.encode() + b" HTTP/1.1", b"Host: " + host, b"Content-Type: " + content_type,
             b"Content-Length: " + str(len(body)).encode(), b"Connection: close", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def paid(knobs: Knobs) -> int:
    return sum(1 for r in knobs.requests if r.path == "/sdapi/v1/txt2img")


# -- every read from a provider is bounded --------------------------------------------------------

# (backend, action, huge_body arm, the error that proves the path was taken or None)
Step = tuple[str, str, dict[str, Any] | None, str | None]
MEMORY_STEPS: dict[str, list[Step]] = {
    "a1111": [
        ("a1111", "generate", {"status": 500}, "server_error"),
        ("a1111", "generate", {"prefix": b'{"images": ["', "fill": b"A"}, "bad_response"),
        ("a1111", "probe", {"path": "/sdapi/v1/progress"}, "bad_response"),
        ("a1111", "probe", {"path": "/sdapi/v1/progress", "status": 500}, "server_error"),
    ],
    "novita": [
        ("novita", "generate", {"path": "/v3/async/txt2img", "prefix": b'{"task_id": "'}, "bad_response"),
        ("novita", "generate", {"path": "/v3/async/txt2img", "status": 500}, "server_error"),
        ("novita", "generate", {"path": "/v3/async/task-result"}, None),  # polled through
        ("novita", "generate", {"path": "/v3/async/task-result", "status": 500}, None),
        ("novita", "generate", {"path": "/files/*", "content_type": "image/png"}, "bad_response"),
        ("novita", "generate", {"path": "/files/*", "status": 500}, "server_error"),
        ("novita", "probe", {"path": "/v3/user"}, "bad_response"),
    ],
    "stability": [
        ("stability", "generate", {"status": 500}, "server_error"),
        ("stability", "generate", {"content_type": "image/png"}, "bad_response"),
        ("stability", "probe", {"path": "/v1/user/balance"}, "bad_response"),
    ],
    "hf_inference": [
        ("hf_inference", "generate", {"status": 500}, "server_error"),
        ("hf_inference", "generate", {"content_type": "image/png"}, "bad_response"),
        ("hf_inference", "probe", {"path": "/api/models/*"}, "bad_response"),
    ],
    "openai": [
        ("openai", "generate", {"status": 500}, "server_error"),
        ("openai", "generate", {"prefix": b'{"data": [{"b64_json": "', "fill": b"A"}, "bad_response"),
        ("openai", "download", {"path": "/files/*", "content_type": "image/png"}, "bad_response"),
        ("openai", "download", {"path": "/files/*", "status": 500}, "server_error"),
        ("openai", "probe", {"path": "/v1/models"}, "bad_response"),
    ],
    "comfyui": [
        ("comfyui", "generate", {"path": "/prompt", "status": 500}, "server_error"),
        ("comfyui", "generate", {"path": "/prompt", "prefix": b'{"prompt_id": "'}, "bad_response"),
        ("comfyui", "generate", {"path": "/history/*"}, "bad_response"),
        ("comfyui", "generate", {"path": "/view", "content_type": "image/png"}, "bad_response"),
        ("comfyui", "probe", {"path": "/system_stats"}, "bad_response"),
    ],
    "fal": [
        ("fal", "generate", {"path": "/fal-ai/flux/schnell", "status": 500}, "server_error"),
        ("fal", "generate", {"path": "/fal-ai/flux/schnell", "prefix": b'{"request_id": "'}, "bad_response"),
        ("fal", "generate", {"path": "/fal-ai/flux/requests/*"}, "bad_response"),
        ("fal", "generate", {"path": "/files/*", "content_type": "image/png"}, "bad_response"),
        ("fal", "probe", {"path": "/fal-ai/flux/requests/*"}, "bad_response"),
    ],
    "replicate": [
        ("replicate", "generate", {"path": "/v1/models/black-forest-labs/flux-schnell/predictions", "status": 500},
         "server_error"),
        ("replicate", "generate", {"path": "/v1/models/black-forest-labs/flux-schnell/predictions",
                                   "prefix": b'{"id": "'}, "bad_response"),
        ("replicate", "generate", {"path": "/delivery/*", "content_type": "image/webp"}, "bad_response"),
        ("replicate", "probe", {"path": "/v1/account"}, "bad_response"),
    ],
    "together": [
        ("together", "generate", {"status": 500}, "server_error"),
        ("together", "generate", {"prefix": b'{"data": [{"b64_json": "', "fill": b"A"}, "bad_response"),
        ("together", "probe", {"path": "/v1/models"}, "bad_response"),
    ],
    "hf_space": [
        ("space", "probe", {"status": 500}, "server_error"),
        ("space", "probe", {}, "bad_response"),
        ("space", "generate", {"status": 500}, "connect_failed"),  # the app itself is down
        ("space-src", "probe", {"path": "/config"}, "bad_response"),
    ],
}


async def _client_steps(config: Path, knobs: Knobs, steps: list[Step]) -> list[tuple[Step, dict[str, Any], int]]:
    """Run ``steps`` in a client process of their own, arming ``knobs`` before each."""
    env = {**os.environ, **SECRETS, "PYTHONPATH": os.pathsep.join([str(ROOT / "backend"), str(ROOT)])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "tests" / "hostile_client.py"), str(config),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    results = []
    try:
        for step in steps:
            backend, action, arm, _ = step
            if action == "download":
                knobs.arm("url_answer")
            if arm is not None:
                knobs.arm("huge_body", size=GIB, **arm)
            before = knobs.bytes_streamed
            command = {"backend": backend, "action": "probe" if action == "probe" else "generate"}
            proc.stdin.write(json.dumps(command).encode() + b"\n")
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            results.append((step, json.loads(line), knobs.bytes_streamed - before))
            knobs.clear()
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)
    return results


@pytest.mark.parametrize("kind", sorted(MEMORY_STEPS))
async def test_a_1_gib_body_on_every_path_leaves_peak_rss_bounded(kind: str, tmp_path: Path) -> None:
    knobs = Knobs()
    serving = hub(knobs) if kind == "hf_space" else provider(kind, knobs)
    async with serving as url:
        tables = space_tables(url) if kind == "hf_space" else [table(kind, url)]
        config = write_config(tmp_path, _toml_of(tables))
        name = tables[0]["name"]
        warm: list[Step] = [(name, "probe", None, None), (name, "generate", None, None)]
        if kind == "hf_space":
            warm = [(name, "probe", None, None)]
        results = await _client_steps(config, knobs, [*warm, *MEMORY_STEPS[kind]])
    baseline = results[len(warm) - 1][1]["hwm_mb"]
    for (backend, action, arm, expected), answer, streamed in results[len(warm):]:
        where = f"{kind}: {action} {arm} -> {answer}"
        assert streamed > 64 * 1024, f"the hostile body was not served: {where}"
        if expected is not None:
            assert answer["error_kind"] == expected, where
        assert answer["hwm_mb"] - baseline < MEMORY_BOUND_MB, where


def _toml_of(tables: list[dict[str, Any]]) -> str:
    lines = ["[service]", "probe_interval_s = 3600", "deadline_s = 10"]
    for t in tables:
        lines.append("[[backend]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in t.items()]
    return "\n".join(lines) + "\n"


# -- one redaction point: an echoed secret shows nowhere ------------------------------------------

PROBE_PATHS = {"a1111": "/sdapi/v1/progress", "novita": "/v3/user", "stability": "/v1/user/balance",
               "hf_inference": "/api/models/*", "openai": "/v1/models", "comfyui": "/system_stats",
               "fal": "/fal-ai/flux/requests/*", "replicate": "/v1/account", "together": "/v1/models"}


async def _probed(url: str, since: float = 0.0, timeout: float = 20.0) -> str:
    """/v1/backends once every backend has been probed after ``since`` (wall clock), so the
    probe's error is the one shown, not a request's from before it."""
    end = time.monotonic() + timeout
    while True:
        _, text = await get(url, "/v1/backends")
        if all((b.get("last_probe_at") or 0) > since for b in json.loads(text)["data"]) or time.monotonic() > end:
            return text
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind", [*HTTP_KINDS, "hf_space"])
async def test_a_provider_echoing_the_credentials_shows_them_nowhere(kind: str, tmp_path: Path) -> None:
    knobs = Knobs()
    if kind == "hf_space":  # the Hub quotes the token in a 500 on the runtime record
        knobs.arm("echo_auth", status=500, count=1000)
    else:
        knobs.arm("echo_auth", status=401, count=1000)
        knobs.arm("echo_auth", status=401, count=1000, path=PROBE_PATHS[kind])
    serving = hub(knobs) if kind == "hf_space" else provider(kind, knobs)
    async with serving as url:
        tables = space_tables(url)[:1] if kind == "hf_space" else [table(kind, url)]
        settings = settings_for(tables, tmp_path, probe_interval_s=0.2)
        with capture_logs() as logs:
            async with gateway(settings) as (gate, _app):
                status, answer, _ = await post(gate, PROMPT)
                backends = await _probed(gate, since=time.time())
            report = await diagnose(settings, timeout=2.0)
        texts = []
        for as_json in (False, True):
            out = io.StringIO()
            write_report(report, out, as_json=as_json, secrets=all_secrets(settings))
            texts.append(out.getvalue())
    assert status == 502
    assert "credentials not accepted" in backends, f"the echo reached /v1/backends (masked): {backends}"
    assert any(r.headers.get("Authorization") or r.headers.get("x-hf-authorization") for r in knobs.requests)
    for where, text in {"HTTP error": answer, "/v1/backends": backends, "logs": json.dumps(logs, default=str),
                        "diagnose text": texts[0], "diagnose JSON": texts[1]}.items():
        assert not shown(text), f"{kind}: {where} shows {shown(text)}"


# -- connection limits ------------------------------------------------------------------------------

LIMITS = {"header_timeout_s": 0.3, "keepalive_timeout_s": 0.3, "body_timeout_s": 0.3, "max_connections": 4}


@pytest.fixture
async def limited(a1111_url: str, tmp_path: Path) -> AsyncIterator[str]:
    tables = [{"name": "local", "kind": "a1111", "base_url": a1111_url}]
    async with gateway(settings_for(tables, tmp_path, **LIMITS)) as (url, _app):
        yield url


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sent before closing; fails if it is still open after ``seconds``."""
    return await asyncio.wait_for(reader.read(), seconds)


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def test_idle_and_trickling_connections_are_closed_with_a_408(limited: str) -> None:
    idle_reader, _ = await _connect(limited)
    head_reader, head_writer = await _connect(limited)
    head_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    body_reader, body_writer = await _connect(limited)  # a whole head, then a body that stops
    body_writer.write(b"POST " + GEN.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{")
    assert (await _closed_within(idle_reader, 2.0)).startswith(b"HTTP/1.1 408")
    assert (await _closed_within(head_reader, 2.0)).startswith(b"HTTP/1.1 408")
    answer = await _closed_within(body_reader, 4.0)
    assert b" 408 " in answer and b"body_timeout_s" not in answer.split(b"\r\n\r\n")[0]


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(limited: str) -> None:
    reader, writer = await _connect(limited)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    answer = await _closed_within(reader, 3.0)
    assert answer.startswith(b"HTTP/1.1 200") and time.monotonic() - started >= 0.25


async def test_connections_past_max_connections_get_a_clean_503(limited: str) -> None:
    held = [await _connect(limited) for _ in range(LIMITS["max_connections"])]
    await asyncio.sleep(0.05)
    reader, writer = await _connect(limited)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    refusal = await _closed_within(reader, 2.0)
    assert refusal.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in refusal
    assert b"too_many_connections" in refusal
    for _, w in held:
        w.close()
    assert await healthz_once_free(limited) == 200  # served again once they are gone


async def test_accept_errors_are_logged_once_per_interval(a1111_url: str, tmp_path: Path) -> None:
    """asyncio reports a failed accept() through the loop's exception handler, once per
    retry (hundreds a second); the runner turns that into one line per interval."""
    tables = [{"name": "local", "kind": "a1111", "base_url": a1111_url}]
    async with gateway(settings_for(tables, tmp_path)) as (_url, _app):
        loop = asyncio.get_running_loop()
        with capture_logs() as logs:
            for _ in range(500):  # what asyncio's _accept_connection hands the handler on EMFILE
                loop.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"),
                })
    lines = [e for e in logs if e["event"] == "accept_failed"]
    assert len(lines) == 1 and "Too many open files" in lines[0]["error"]
    clock = iter([0.0, 1.0, 10.5, 11.0]).__next__
    throttled = Throttled("x", interval_s=10.0, clock=clock)
    for _ in range(4):
        throttled.hit()
    assert throttled.logged == 2 and throttled.count == 1


async def test_a_low_ulimit_serve_refuses_instead_of_flooding_its_log(a1111_url: str, tmp_path: Path) -> None:
    """The finding as found: ``imagegate serve`` under ``ulimit -n 400`` and 600 connections."""
    assert effective_max_connections(512, fd_limit=400) == 400 - 320
    tables = [{"name": "local", "kind": "a1111", "base_url": a1111_url}]
    config = write_config(tmp_path, _toml_of(tables).replace("[service]", "[service]\nheader_timeout_s = 0.5"))
    with socket.socket() as probe_sock:
        probe_sock.bind(("127.0.0.1", 0))
        port = probe_sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "backend")}
    proc = await asyncio.create_subprocess_exec(
        *serve_command(config, port, nofile=400), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env, cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert await healthz_once_free(url) == 200  # up
        opened = await asyncio.gather(*(asyncio.wait_for(_connect(url), 3) for _ in range(600)),
                                      return_exceptions=True)
        # the held ones time out (0.5 s), the rest were refused: the server serves again
        assert await healthz_once_free(url) == 200
        for conn in opened:
            if isinstance(conn, tuple):
                conn[1].close()
    finally:
        proc.terminate()
        output, _ = await asyncio.wait_for(proc.communicate(), 15)
    assert b"Traceback" not in output and len(output) < 20_000, output[-2000:]
    assert b"max_connections_lowered" in output and b"connections_refused" in output


# -- provider answers are checked against the request ---------------------------------------------


async def test_3000_images_for_n_1_keep_one_and_say_so_in_the_trail(tmp_path: Path) -> None:
    knobs = Knobs()
    knobs.arm("many_images", images=3000)
    knobs.arm("url_answer")  # URLs: 3,000 base64 images would not fit the JSON cap for n = 1
    async with provider("openai", knobs) as url:
        settings = settings_for([table("openai", url)], tmp_path)
        async with gateway(settings) as (gate, _app):
            status, answer, _ = await post(gate, {**PROMPT, "response_format": "url"})
        knobs.arm("many_images", images=3000)
        knobs.arm("url_answer")
        async with ImageService(settings) as service:
            result = await service.generate(ImageRequest(prompt="x", width=64, height=64))
    assert status == 200 and len(json.loads(answer)["data"]) == 1
    assert len([p for p in (tmp_path / "out").rglob("*") if p.is_file()]) == 1
    assert len(result.images) == 1
    assert result.attempts[-1].note == "2999 extra images dropped (asked for 1)"


async def test_downloads_of_one_request_run_at_most_four_at_once(tmp_path: Path) -> None:
    knobs = Knobs(latency_s=0.05)
    knobs.arm("many_images", images=300)
    async with provider("novita", knobs) as url, ImageService(
        settings_for([table("novita", url)], tmp_path)
    ) as service:
        result = await service.generate(ImageRequest(prompt="x", width=256, height=256, n=8))
    downloads = [r for r in knobs.requests if r.path.startswith("/files/")]
    assert len(result.images) == 8 and len(downloads) == 8
    assert knobs.peak_in_flight <= 4


# -- the download policy ---------------------------------------------------------------------------

INTERNAL_SECRET = "INTERNAL-METADATA-iam-role-credentials"


@contextlib.asynccontextmanager
async def internal_service(hits: list[str]) -> AsyncIterator[str]:
    """Another service on another loopback port: metadata, an image, a redirect, a 500."""

    async def handle(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        if request.path == "/image.png":
            return web.Response(body=make_image(64, 64), content_type="image/png")
        if request.path.startswith("/redirect"):
            raise web.HTTPFound(request.query["to"])
        if request.path == "/broken":
            return web.Response(status=500, text=INTERNAL_SECRET)
        return web.Response(text=INTERNAL_SECRET)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    async with serve_app(app) as url:
        yield url


async def _generate_with_url(tmp_path: Path, image_url: str, **keys: Any) -> tuple[Any, Knobs]:
    """Generate through an OpenAI-compatible backend whose answer names ``image_url``."""
    knobs = Knobs()
    knobs.arm("url_answer", url=image_url)
    async with provider("openai", knobs) as url, ImageService(
        settings_for([table("openai", url, **keys)], tmp_path)
    ) as service:
        try:
            return await service.generate(ImageRequest(prompt="x", width=64, height=64)), knobs
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            return exc, knobs


async def test_a_url_to_another_private_port_is_refused_unless_listed(tmp_path: Path) -> None:
    hits: list[str] = []
    async with internal_service(hits) as internal:
        refused, _ = await _generate_with_url(tmp_path, internal + "/latest/meta-data")
        port = internal.rsplit(":", 1)[1]
        allowed, _ = await _generate_with_url(tmp_path, internal + "/image.png",
                                              download_hosts=[f"127.0.0.1:{port}"])
    (attempt,) = refused.attempts
    assert attempt.outcome == "bad_response" and "not a public address" in (attempt.error or "")
    assert INTERNAL_SECRET not in str(refused.attempts)
    assert hits == ["/image.png"], "the unlisted URL was never fetched"
    assert allowed.images[0].width == 64


async def test_redirects_are_judged_at_every_hop_and_failed_bodies_never_shown(tmp_path: Path) -> None:
    hits: list[str] = []
    async with internal_service(hits) as internal, internal_service([]) as other:
        port = internal.rsplit(":", 1)[1]
        listed = {"download_hosts": [f"127.0.0.1:{port}"]}
        hop, _ = await _generate_with_url(tmp_path, f"{internal}/redirect?to={other}/latest", **listed)
        broken, _ = await _generate_with_url(tmp_path, f"{internal}/broken", **listed)
        junk, _ = await _generate_with_url(tmp_path, f"{internal}/latest", **listed)
    assert "not a public address" in (hop.attempts[0].error or "")
    assert broken.attempts[0].outcome == "server_error" and junk.attempts[0].outcome == "bad_response"
    for failed in (hop, broken, junk):
        assert INTERNAL_SECRET not in str(failed) + str(failed.attempts)


def test_the_policy_judges_addresses_not_names() -> None:
    policy = DownloadPolicy("https://api.example.com", ("cdn.example.net", "*.storage.example"))
    assert policy.judge("https://api.example.com/x.png", backend="b") == "trusted"
    assert policy.judge("https://a.storage.example/x.png", backend="b") == "trusted"
    assert policy.judge("https://images.example.org/x.png", backend="b") == "public"  # resolved later
    for url in ("file:///etc/passwd", "ftp://x/y", "http://10.0.0.8/x", "http://169.254.169.254/",
                "http://[::1]/x", "http://user:pw@images.example.org/x", "http://127.0.0.1:99999/x"):
        with pytest.raises(BadResponse):
            policy.judge(url, backend="b")
    for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                    "224.0.0.1", "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "ff02::1"):
        assert not is_public_address(address), address
    assert is_public_address("93.184.216.34") and is_public_address("2606:4700::1111")


# -- malformed answers count against health --------------------------------------------------------


async def test_unparseable_response_headers_are_bad_response_and_open_the_breaker(tmp_path: Path) -> None:
    knobs = Knobs()
    knobs.arm("bad_headers", count=100)
    async with serve_app(a1111_emulator.create_app(knobs=knobs)) as url:
        tables = [{"name": "local", "kind": "a1111", "base_url": url}]
        async with ImageService(settings_for(tables, tmp_path, breaker_threshold=2)) as service:
            for _ in range(2):
                with pytest.raises(Exception) as caught:
                    await service.generate(ImageRequest(prompt="x", width=64, height=64))
                assert [a.outcome for a in caught.value.attempts] == ["bad_response"]  # type: ignore[attr-defined]
            assert service.breaker("local").state == "open"


# -- what a hostile client sends ---------------------------------------------------------------------


@pytest.fixture
async def open_gateway(a1111_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """The API with no key, one A1111 backend (``a1111_url``'s knobs count what is paid)."""
    tables = [{"name": "local", "kind": "a1111", "base_url": a1111_url}]
    async with gateway(settings_for(tables, tmp_path, cors_origins=["https://app.example"])) as (url, _):
        yield url


@pytest.mark.parametrize("host", [b"127.0.0.1:99999", b"", b"exa mple", b"[::1", b"x:"])
async def test_a_bad_host_is_400_before_anything_is_paid(open_gateway: str, knobs: Knobs, host: bytes) -> None:
    body = json.dumps({**PROMPT, "response_format": "url"}).encode()
    answer = await raw(open_gateway, request_bytes(body, host=host))
    assert answer.startswith(b"HTTP/1.1 400") and b"invalid_host" in answer
    assert paid(knobs) == 0


async def test_url_answers_use_public_url_from_service_or_environment(a1111_url: str, tmp_path: Path) -> None:
    tables = [{"name": "local", "kind": "a1111", "base_url": a1111_url}]
    body = json.dumps({**PROMPT, "response_format": "url"}).encode()
    configured = settings_for(tables, tmp_path, public_url="https://images.example.com/gw")
    async with gateway(configured) as (url, _):
        answer = await raw(url, request_bytes(body, host=b"evil.example"))
    assert b'"url": "https://images.example.com/gw/v1/files/' in answer and b"evil.example" not in answer
    from_env = ServerOptions.from_environ({"IMAGEGATE_PUBLIC_URL": "https://env.example/"})
    async with gateway(configured, from_env) as (url, _):
        answer = await raw(url, request_bytes(body, host=b"evil.example"))
    assert b'"url": "https://env.example/v1/files/' in answer


async def test_a_bad_content_encoding_is_400_without_a_traceback(open_gateway: str, knobs: Knobs) -> None:
    with capture_logs() as logs:
        answer = await raw(open_gateway, request_bytes(b"0123456789", b"Content-Encoding: gzip"))
    assert answer.startswith(b"HTTP/1.1 400") and b"bad_content_encoding" in answer
    assert "Traceback" not in json.dumps(logs, default=str) and paid(knobs) == 0


async def test_an_oversize_header_is_refused_without_echoing_it(open_gateway: str) -> None:
    secret = b"sk-OVERSIZE-" + b"S" * 9000
    with capture_logs() as logs:
        answer = await raw(open_gateway, request_bytes(b"{}", b"Authorization: Bearer " + secret))
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")) and b"sk-OVERSIZE" not in answer
    assert "sk-OVERSIZE" not in json.dumps(logs, default=str)


async def test_without_a_key_browsers_need_json_and_an_allowed_origin(open_gateway: str, knobs: Knobs) -> None:
    body = json.dumps(PROMPT).encode()
    plain = await raw(open_gateway, request_bytes(body, content_type=b"text/plain"))
    foreign = await raw(open_gateway, request_bytes(body, b"Origin: https://evil.example"))
    assert plain.startswith(b"HTTP/1.1 415") and foreign.startswith(b"HTTP/1.1 403")
    assert paid(knobs) == 0
    preflight = await raw(open_gateway, b"OPTIONS " + GEN.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                          b"Origin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n"
                          b"Connection: close\r\n\r\n")
    assert preflight.startswith(b"HTTP/1.1 204")
    assert b"Access-Control-Allow-Origin: https://app.example" in preflight
    allowed = await raw(open_gateway, request_bytes(body, b"Origin: https://app.example"))
    assert allowed.startswith(b"HTTP/1.1 200") and b"Access-Control-Allow-Origin: https://app.example" in allowed


# -- the output disk -----------------------------------------------------------------------------------


async def test_a_full_disk_is_refused_before_paying_and_reported_by_readyz(a1111_url: str, knobs: Knobs,
                                                                            tmp_path: Path) -> None:
    tables = [{"name": "local", "kind": "a1111", "base_url": a1111_url}]
    async with gateway(settings_for(tables, tmp_path, min_free_mb=1e12)) as (url, _):
        await asyncio.sleep(0)
        status, answer, _ = await post(url, {**PROMPT, "response_format": "url"})
        ready, why = await get(url, "/readyz")
        b64, _, _ = await post(url, PROMPT)
    assert status == 507 and "insufficient_storage" in answer and paid(knobs) == 1  # only the b64 one
    assert ready == 503 and json.loads(why)["status"] == "output_unavailable"
    assert b64 == 200


async def test_a_failed_save_after_paying_returns_the_images_as_b64(a1111_url: str, tmp_path: Path) -> None:
    tables = [{"name": "local", "kind": "a1111", "base_url": a1111_url}]
    out = tmp_path / "out"
    out.mkdir()
    for day in (datetime.now(UTC).astimezone(), datetime.now(UTC).astimezone() + timedelta(days=1)):
        (out / day.strftime("%Y-%m-%d")).write_text("a file where the day's folder goes")
    async with gateway(settings_for(tables, tmp_path)) as (url, _):
        status, answer, headers = await post(url, {**PROMPT, "response_format": "url"})
    doc = json.loads(answer)
    assert status == 200 and "b64_json" in doc["data"][0] and "could not be saved" in doc["warnings"][0]
    assert "could not be saved" in headers["x-imagegate-warning"]


async def test_stale_temporary_files_are_removed_at_start(a1111_url: str, tmp_path: Path) -> None:
    day = tmp_path / "out" / "2024-01-01"
    day.mkdir(parents=True)
    stale, fresh = day / ".tmp-abc.png", day / ".tmp-def.png"
    for path in (stale, fresh):
        path.write_bytes(b"half an image")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    tables = [{"name": "local", "kind": "a1111", "base_url": a1111_url}]
    async with gateway(settings_for(tables, tmp_path)):
        pass
    assert not stale.exists() and fresh.exists()  # another writer's file in progress is kept
