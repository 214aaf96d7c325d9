"""Play a hostile provider and a hostile client against a real ``imagegate serve`` and print
what it costs: peak RSS, files written, connections held, secrets shown (issue 15's findings).

    python scripts/hostile_probe.py                    # this checkout's server
    python scripts/hostile_probe.py --code /tmp/old    # another checkout's server, same probes
    python scripts/hostile_probe.py --only rss leaks   # some groups only; --json for the figures

The emulators and their hostile modes (``imagegate.testing``) run in this process from this
checkout; the server runs in a subprocess from ``--code``'s ``backend/``, so the same probes
measure the code before and after a change. Everything listens on 127.0.0.1. The ``disk``
group mounts two small tmpfs file systems (root only; it says so where mounting is refused).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from imagegate.testing import Knobs, serve_app
from imagegate.testing import a1111 as a1111_emulator
from imagegate.testing import hf_inference as hf_emulator
from imagegate.testing import hub as hub_emulator
from imagegate.testing import novita as novita_emulator
from imagegate.testing import openai_images as openai_emulator
from imagegate.testing import stability as stability_emulator

GIB = 2**30
KEY = "sk-live+AbC/123=xyz-NOT-A-REAL-SECRET-42"
USER, PASSWORD = "webui-admin", "p@ss word+/=7"
PROMPT = {"prompt": "a lighthouse", "size": "512x512"}


class LogSink:
    """The server's stdout+stderr: the first 8 MiB kept, every byte counted."""

    KEEP = 8 * 2**20

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.kept = bytearray()
        self.total = 0
        self._task = asyncio.create_task(self._drain(stream))

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(1 << 16):
            self.total += len(chunk)
            if len(self.kept) < self.KEEP:
                self.kept += chunk[: self.KEEP - len(self.kept)]


@dataclass
class Served:
    url: str
    pid: int
    log: LogSink
    out: Path
    config: Path
    env: dict[str, str]

    def hwm_mb(self) -> float:
        return _status_kb(self.pid, "VmHWM") / 1024

    def logs(self) -> str:
        return self.log.kept.decode(errors="replace")


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Probe:
    code: Path

    @contextlib.asynccontextmanager
    async def server(
        self, backends: list[dict[str, Any]], *, service: dict[str, Any] | None = None,
        env: dict[str, str] | None = None, nofile: int | None = None, out: Path | None = None,
    ) -> AsyncIterator[Served]:
        with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
            root = Path(tmp)
            out = out or root / "outputs"
            table = {"output_dir": str(out), "probe_interval_s": 3600, "deadline_s": 20, **(service or {})}
            lines = ["[service]", *(f"{k} = {_toml(v)}" for k, v in table.items())]
            for table in backends:
                lines.append("[[backend]]")
                lines += [f"{k} = {_toml(v)}" for k, v in table.items()]
            config = root / "imagegate.toml"
            config.write_text("\n".join(lines) + "\n")
            port = _free_port()
            full_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", tmp),
                        "PYTHONPATH": str(self.code / "backend"), "HF_HUB_OFFLINE": "1",
                        "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
                        **(env or {})}
            proc = await asyncio.create_subprocess_exec(
                *serve_command(config, port, nofile), cwd=root, env=full_env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            assert proc.stdout is not None
            log = LogSink(proc.stdout)
            url = f"http://127.0.0.1:{port}"
            try:
                await _wait_up(url, proc)
                yield Served(url, proc.pid, log, out, config, full_env)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def serve_command(config: Path, port: int, nofile: int | None) -> list[str]:
    """``python -m imagegate serve``, under ``ulimit -n nofile`` when given (set by the child
    itself before imagegate starts)."""
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); " if nofile else ""
    start = "import runpy, sys; sys.argv[0] = 'imagegate'; runpy.run_module('imagegate', run_name='__main__')"
    return [sys.executable, "-c", limit + start, "serve", "--config", str(config), "--port", str(port)]


async def _wait_up(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            if proc.returncode is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError("the server did not start")


async def post(url: str, body: dict[str, Any], timeout: float = 60) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.post(
        url + "/v1/images/generations", json=body, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as resp:
        return resp.status, await resp.text()


async def get_text(url: str, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url + path) as resp:
        return resp.status, await resp.text()


async def wait_probed(url: str, timeout: float = 15) -> str:
    """/v1/backends once every backend has been probed."""
    end = time.monotonic() + timeout
    text = ""
    while time.monotonic() < end:
        _, text = await get_text(url, "/v1/backends")
        if all(b.get("last_probe_at") for b in json.loads(text)["data"]):
            return text
        await asyncio.sleep(0.2)
    return text


# -- the backends, one emulator each ------------------------------------------------------------

EMULATORS: dict[str, Callable[..., web.Application]] = {
    "a1111": a1111_emulator.create_app, "novita": novita_emulator.create_app,
    "stability": stability_emulator.create_app, "hf_inference": hf_emulator.create_app,
    "openai": openai_emulator.create_app,
}
KEY_ENV = {"novita": "NOVITA_API_KEY", "stability": "STABILITY_API_KEY", "hf_inference": "HF_TOKEN",
           "openai": "OPENAI_API_KEY"}


@contextlib.asynccontextmanager
async def provider(kind: str, knobs: Knobs, **options: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The emulator of ``kind`` and the ``[[backend]]`` table pointing at it."""
    if kind != "a1111" and "api_key" not in options:
        options["api_key"] = KEY
    async with serve_app(EMULATORS[kind](knobs=knobs, **options)) as url:
        table: dict[str, Any] = {"name": kind, "kind": kind, "base_url": url, "max_image_bytes": 4 * 2**20}
        if kind == "novita":
            table["poll_interval_s"] = 0.05
        if kind == "openai":
            table["model"] = "dall-e-2"
        if kind == "hf_inference":
            table["model"] = "emulator/tiny"
        if kind == "a1111" and "username" in options:
            table.update(username_env="A1111_USER", password_env="A1111_PASSWORD")
        yield url, table


def secrets_env(kind: str) -> dict[str, str]:
    if kind == "a1111":
        return {"A1111_USER": USER, "A1111_PASSWORD": PASSWORD}
    return {KEY_ENV[kind]: KEY}


# -- groups ------------------------------------------------------------------------------------

RSS_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    # name, kind, arm(...) keywords, what triggers it
    ("a1111 txt2img 500", "a1111", {"status": 500}, "generate"),
    ("a1111 txt2img 200 JSON", "a1111", {"prefix": b'{"images": ["', "fill": b"A"}, "generate"),
    ("a1111 probe 200", "a1111", {"path": "/sdapi/v1/progress"}, "probe"),
    ("novita submit 200", "novita", {"path": "/v3/async/txt2img", "prefix": b'{"task_id": "'}, "generate"),
    ("novita poll 200", "novita", {"path": "/v3/async/task-result"}, "generate"),
    ("novita poll 500", "novita", {"path": "/v3/async/task-result", "status": 500}, "generate"),
    ("novita download 500", "novita", {"path": "/files/*", "status": 500}, "generate"),
    ("novita probe 200", "novita", {"path": "/v3/user"}, "probe"),
    ("stability generate 500", "stability", {"status": 500}, "generate"),
    ("stability probe 200", "stability", {"path": "/v1/user/balance"}, "probe"),
    ("hf_inference generate 500", "hf_inference", {"status": 500}, "generate"),
    ("hf_inference probe 200", "hf_inference", {"path": "/api/models/*"}, "probe"),
    ("openai generate 500", "openai", {"status": 500}, "generate"),
    ("openai probe 200", "openai", {"path": "/v1/models"}, "probe"),
    ("openai download 500", "openai", {"path": "/files/*", "status": 500}, "download"),
]


async def rss(probe: Probe) -> dict[str, Any]:
    """Peak RSS of the server after one 1 GiB answer on each path (control: a normal answer)."""
    out: dict[str, Any] = {}
    async with provider("a1111", Knobs()) as (_, table), probe.server([table]) as served:
        await post(served.url, PROMPT)
        out["control a1111 generate (MB)"] = round(served.hwm_mb(), 1)
    for name, kind, arm, trigger in RSS_CASES:
        knobs = Knobs()
        knobs.arm("huge_body", size=GIB, **arm)
        if trigger == "download":
            knobs.arm("url_answer")
        service = {"probe_interval_s": 0.5} if trigger == "probe" else {}
        async with provider(kind, knobs) as (_, table), probe.server(
            [table], env=secrets_env(kind), service=service
        ) as served:
            out.update(await _measured(name, served, knobs, trigger))
    for trigger in ("probe", "generate"):
        hub = hub_emulator.HubState()
        hub.set_space("owner/app")
        knobs = Knobs()
        knobs.arm("huge_body", size=GIB, status=500)
        async with serve_app(hub_emulator.create_app(knobs=knobs, hub=hub)) as hub_url:
            table = {"name": "space", "kind": "hf_space", "space": "owner/app", "hub_url": hub_url,
                     "src": "http://127.0.0.1:9"}
            service = {"probe_interval_s": 0.5} if trigger == "probe" else {}
            async with probe.server([table], service=service) as served:
                out.update(await _measured(f"hf_space hub runtime 500, {trigger}", served, knobs, trigger))
    return out


async def _measured(name: str, served: Served, knobs: Knobs, trigger: str) -> dict[str, float]:
    """Trigger the hostile answer (a probe, or a generation) and read the server's peak RSS."""
    if trigger == "probe":
        await wait_probed(served.url)
    else:
        await post(served.url, PROMPT)
    return {f"{name} (MB)": round(served.hwm_mb(), 1),
            f"{name} streamed (MB)": round(knobs.bytes_streamed / 2**20, 1)}


def forms() -> list[str]:
    """Every form of the configured secrets a provider may echo."""
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return [KEY, quote(KEY, safe=""), PASSWORD, quote(PASSWORD, safe=""), basic]


def hits(text: str) -> int:
    return sum(text.count(f) for f in forms())


async def leaks(probe: Probe) -> dict[str, Any]:
    """Occurrences of any secret form in what a user sees when providers echo credentials."""
    out: dict[str, Any] = {}
    for kind, path in (("novita", "/v3/user"), ("stability", "/v1/user/balance")):
        for status in (401, 403, 500):
            knobs = Knobs()
            knobs.arm("echo_auth", status=status, path=path, count=100)
            async with provider(kind, knobs) as (_, table), probe.server(
                [table], env=secrets_env(kind), service={"probe_interval_s": 0.5}
            ) as s:
                backends = await wait_probed(s.url)
                out[f"{kind} probe {status}: /v1/backends, logs"] = (hits(backends), hits(s.logs()))
    for kind in ("a1111", "novita", "stability", "hf_inference", "openai"):
        knobs = Knobs()
        knobs.arm("echo_auth", status=401, count=100)
        options = {"username": USER, "password": PASSWORD} if kind == "a1111" else {}
        async with provider(kind, knobs, **options) as (_, table), probe.server(
            [table], env=secrets_env(kind)
        ) as s:
            _, body = await post(s.url, PROMPT)
            _, backends = await get_text(s.url, "/v1/backends")
            out[f"{kind} generate 401: 502 body, /v1/backends, logs"] = (
                hits(body), hits(backends), hits(s.logs()))
            if kind == "a1111":
                knobs.arm("echo_auth", status=401, path="/sdapi/v1/progress", count=100)
                texts = [await diagnose(s, as_json) for as_json in (False, True)]
                out["a1111 diagnose 401: text, JSON"] = tuple(hits(t) for t in texts)
    return out


async def diagnose(served: Served, as_json: bool) -> str:
    args = [sys.executable, "-m", "imagegate", "diagnose", "--config", str(served.config), "--timeout", "3"]
    proc = await asyncio.create_subprocess_exec(
        *args, *(["--json"] if as_json else []), env=served.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return out.decode(errors="replace")


async def _open(port: int, first: bytes = b"") -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), 5.0)
    except (TimeoutError, OSError):
        sock.close()
        raise OSError("connect failed") from None
    if first:
        sock.send(first)
    return sock


def _alive(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server still holds open (what it sent is read and dropped)."""
    alive = 0
    for sock in socks:
        try:
            while sock.recv(65536):
                pass
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


async def connections(probe: Probe) -> dict[str, Any]:
    """Connections still open after 20 s (idle, trickling headers) and 65 s (trickling
    bodies; 300 of each kind, one server); then the server under ``ulimit -n 400`` with 600
    idle connections."""
    out: dict[str, Any] = {}
    async with provider("a1111", Knobs()) as (_, table), probe.server([table]) as served:
        port = int(served.url.rsplit(":", 1)[1])
        head = b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        bodies = [await _open(port, head + b"Content-Length: 1000\r\n\r\n{") for _ in range(150)]
        heads = [await _open(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") for _ in range(150)]
        idle = [await _open(port) for _ in range(150)]
        for second in range(65):
            await asyncio.sleep(1)
            for sock in heads + bodies:
                with contextlib.suppress(OSError):
                    sock.send(b"X" if sock in heads else b" ")
            if second == 19:
                out["idle held after 20 s (of 150)"] = _alive(idle)
                out["trickling headers held after 20 s (of 150)"] = _alive(heads)
        out["trickling bodies held after 65 s (of 150)"] = _alive(bodies)
        for sock in idle + heads + bodies:
            sock.close()
    async with provider("a1111", Knobs()) as (_, table), probe.server([table], nofile=400) as served:
        port = int(served.url.rsplit(":", 1)[1])
        before = served.log.total
        started = time.monotonic()
        opened = await asyncio.gather(*(_open(port) for _ in range(600)), return_exceptions=True)
        held = [sock for sock in opened if isinstance(sock, socket.socket)]
        await asyncio.sleep(max(0.0, 15 - (time.monotonic() - started)))
        out["ulimit -n 400, 600 idle: log bytes in 15 s"] = served.log.total - before
        try:
            status, _ = await asyncio.wait_for(get_text(served.url, "/healthz"), 5)
            out["ulimit -n 400: /healthz after 15 s"] = status
        except (TimeoutError, aiohttp.ClientError) as exc:
            out["ulimit -n 400: /healthz after 15 s"] = type(exc).__name__
        for sock in held:
            sock.close()
    return out


async def answers(probe: Probe) -> dict[str, Any]:
    """Files written for 3,000 images answered to n = 1; downloads for 300 Novita URLs."""
    out: dict[str, Any] = {}
    knobs = Knobs()
    knobs.arm("many_images", images=3000)
    async with provider("openai", knobs) as (_, table), probe.server([table], env=secrets_env("openai")) as s:
        status, _ = await post(s.url, {**PROMPT, "response_format": "url"})
        files = [p for p in s.out.rglob("*") if p.is_file()]
        out["openai 3000 images for n=1: status, files written"] = (status, len(files))
    for n in (1, 8):
        knobs = Knobs(latency_s=0.2)
        knobs.arm("many_images", images=300)
        async with provider("novita", knobs) as (_, table), probe.server(
            [table], env=secrets_env("novita")
        ) as s:
            status, _ = await post(s.url, {**PROMPT, "n": n})
            downloads = sum(1 for r in knobs.requests if r.path.startswith("/files/"))
            out[f"novita 300 URLs for n={n}: status, downloads, most at once"] = (
                status, downloads, knobs.peak_in_flight)
    return out


async def ssrf(probe: Probe) -> dict[str, Any]:
    """A provider's image URL pointing at another port on 127.0.0.1 (an 'internal' service)."""
    out: dict[str, Any] = {}
    fetched: list[str] = []

    async def metadata(request: web.Request) -> web.Response:
        fetched.append(request.path)
        return web.Response(text="INTERNAL-METADATA-iam-role-credentials")

    internal = web.Application()
    internal.router.add_get("/{tail:.*}", metadata)
    async with serve_app(internal) as internal_url:
        for kind, knob in (("openai", "url_answer"), ("novita", "image_url")):
            fetched.clear()
            knobs = Knobs()
            knobs.arm(knob, url=internal_url + "/latest/meta-data")
            async with provider(kind, knobs) as (_, table), probe.server([table], env=secrets_env(kind)) as s:
                status, body = await post(s.url, PROMPT)
                out[f"{kind}: status, internal fetches, internal text in the answer"] = (
                    status, len(fetched), "INTERNAL-METADATA" in body)
    return out


async def malformed(probe: Probe) -> dict[str, Any]:
    """Five requests to a backend whose response headers do not parse."""
    knobs = Knobs()
    knobs.arm("bad_headers", count=100)
    async with provider("a1111", knobs) as (_, table), probe.server([table]) as s:
        outcomes = []
        for _ in range(5):
            _, body = await post(s.url, PROMPT)
            doc = json.loads(body)
            outcomes.append([a["outcome"] for a in doc["error"].get("attempts", [])])
        _, backends = await get_text(s.url, "/v1/backends")
        state = json.loads(backends)["data"][0]["state"]
    calls = sum(1 for r in knobs.requests if r.path == "/sdapi/v1/txt2img")
    return {"attempt outcomes": outcomes, "breaker after 5": state, "provider calls for 5 requests": calls}


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(1 << 20), 30)
    finally:
        writer.close()


def _request(host: bytes, body: bytes, *extra: bytes, content_type: bytes = b"application/json") -> bytes:
    lines = [b"POST /v1/images/generations HTTP/1.1", b"Host: " + host, b"Content-Type: " + content_type,
             b"Content-Length: " + str(len(body)).encode(), b"Connection: close", *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def client(probe: Probe) -> dict[str, Any]:
    """A hostile client: bad Host headers, a bad Content-Encoding, an oversize header, a
    cross-origin text/plain POST with no API key."""
    out: dict[str, Any] = {}
    url_body = json.dumps({**PROMPT, "response_format": "url"}).encode()
    knobs = Knobs()
    async with provider("a1111", knobs) as (_, table), probe.server([table]) as s:
        port = int(s.url.rsplit(":", 1)[1])

        def paid() -> int:
            return sum(1 for r in knobs.requests if r.path == "/sdapi/v1/txt2img")

        for host in (b"127.0.0.1:99999", b"", b"evil.example"):
            before = paid()
            answer = await raw(port, _request(host, url_body))
            status = answer.split(b" ", 2)[1].decode() if answer else "no answer"
            out[f"Host {host.decode()!r}: status, paid, host in URLs"] = (
                status, paid() - before, b"evil.example" in answer if host == b"evil.example" else None)
        answer = await raw(port, _request(b"x", b"0123456789", b"Content-Encoding: gzip"))
        out["bad Content-Encoding: status, traceback in log"] = (
            answer.split(b" ", 2)[1].decode(), "Traceback" in s.logs())
        secret = b"Bearer sk-OVERSIZE-SECRET-" + b"A" * 9000
        answer = await raw(port, _request(b"x", url_body, b"Authorization: " + secret))
        out["oversize Authorization: status, key in answer, key in log"] = (
            answer.split(b" ", 2)[1].decode(), b"sk-OVERSIZE-SECRET" in answer,
            "sk-OVERSIZE-SECRET" in s.logs())
        before = paid()
        answer = await raw(port, _request(b"x", json.dumps(PROMPT).encode(), b"Origin: http://evil.example",
                                          content_type=b"text/plain"))
        out["cross-origin text/plain POST, no key: status, paid"] = (
            answer.split(b" ", 2)[1].decode(), paid() - before)
    return out


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Any:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=False,
                          capture_output=True)
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", str(path)], check=False)


async def disk(probe: Probe) -> dict[str, Any]:
    """A full and a read-only output disk; stale temporary files from a killed writer."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, options in (("full (4 KiB tmpfs)", "size=4k"), ("read-only tmpfs", "ro")):
            mount = Path(tmp) / label.split()[0]
            with tmpfs(mount, options) as mounted:
                if not mounted:
                    out[label] = "mount refused (not root?)"
                    continue
                knobs = Knobs()
                async with provider("a1111", knobs) as (_, table), probe.server([table], out=mount) as s:
                    ready, _ = await get_text(s.url, "/readyz")
                    status, body = await post(s.url, {**PROMPT, "response_format": "url"})
                    paid = sum(1 for r in knobs.requests if r.path == "/sdapi/v1/txt2img")
                    out[f"{label}: /readyz, status, paid, images returned"] = (
                        ready, status, paid, body.count('"b64_json"') + body.count('"url"'))
        stale = Path(tmp) / "stale"
        (stale / "2024-01-01").mkdir(parents=True)
        for i in range(5):
            leftover = stale / "2024-01-01" / f".tmp-{i}.png"
            leftover.write_bytes(b"partial")
            os.utime(leftover, (time.time() - 3600, time.time() - 3600))
        async with provider("a1111", Knobs()) as (_, table), probe.server([table], out=stale):
            await asyncio.sleep(1)
            out["stale .tmp-* files left after a start (of 5)"] = len(list(stale.rglob(".tmp-*")))
    return out


GROUPS: dict[str, Callable[[Probe], Awaitable[dict[str, Any]]]] = {
    "rss": rss, "leaks": leaks, "connections": connections, "answers": answers, "ssrf": ssrf,
    "malformed": malformed, "client": client, "disk": disk,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--only", nargs="*", choices=list(GROUPS), default=list(GROUPS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    probe = Probe(code=args.code.resolve())
    results: dict[str, Any] = {}
    for name in args.only:
        results[name] = asyncio.run(GROUPS[name](probe))
        if not args.json:
            print(f"== {name}")
            for key, value in results[name].items():
                print(f"  {key}: {value}")
            sys.stdout.flush()
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
