"""Several real ``imagegate serve`` processes (``python -m imagegate serve``) on free loopback
ports, for the multi-instance tests: started together, each ready when ``/healthz`` answers,
stopped (or killed with SIGKILL by the test) at the end; their stderr is kept for asserts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

__all__ = ["Instance", "serve_instances"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Instance:
    url: str
    proc: asyncio.subprocess.Process
    log: Path
    argv: list[str] = field(default_factory=list)

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye (what a crash looks like to the fleet)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


async def _healthy(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with asyncio.timeout(30), aiohttp.ClientSession() as http:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"imagegate serve exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def serve_instances(
    config: Path, count: int, workdir: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[list[Instance]]:
    """``count`` instances of ``imagegate serve --config config``, with ``env`` added."""
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
        **(env or {}),
    }
    instances: list[Instance] = []
    try:
        for i in range(count):
            port = _free_port()
            log = workdir / f"instance-{i}.log"
            argv = [sys.executable, "-m", "imagegate", "serve", "--config", str(config), "--port", str(port)]
            with log.open("wb") as fh:
                proc = await asyncio.create_subprocess_exec(*argv, stdout=fh, stderr=fh, env=environ)
            instances.append(Instance(f"http://127.0.0.1:{port}", proc, log, argv))
        await asyncio.gather(*(_healthy(i.url, i.proc, i.log) for i in instances))
        yield instances
    finally:
        for inst in instances:
            if inst.proc.returncode is None:
                inst.proc.send_signal(signal.SIGTERM)
        for inst in instances:
            try:
                async with asyncio.timeout(15):
                    await inst.proc.wait()
            except TimeoutError:
                inst.proc.kill()
                await inst.proc.wait()
