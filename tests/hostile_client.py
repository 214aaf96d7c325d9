"""The client half of the bounded-memory campaign test: a process of its own, so that its
peak RSS (``VmHWM``) is imagegate's alone, driven one step at a time over stdin/stdout.

    python tests/hostile_client.py CONFIG       # then, one JSON line per step on stdin:
    {"backend": "a1111", "action": "generate" | "probe"}
    -> {"error_kind": ..., "error": ..., "hwm_mb": ..., "rss_mb": ...}

The test arms the emulator (in its own process) before each step, so every step meets
exactly the hostile answer the test chose.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import structlog
from imagegate.backends.registry import load_settings
from imagegate.errors import BackendError
from imagegate.models import Deadline, ImageRequest
from imagegate.routing import ImageService

REQUEST = ImageRequest(prompt="a lighthouse", width=256, height=256)


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


async def step(service: ImageService, command: dict[str, str]) -> dict[str, object]:
    backend = service.backend(command["backend"])
    kind, error = None, None
    try:
        if command["action"] == "probe":
            health = await backend.probe(timeout=10)
            kind, error = health.last_error_kind, health.last_error
        else:
            await backend.generate(REQUEST, deadline=Deadline.after(10))
    except BackendError as exc:
        kind, error = exc.kind, str(exc)
    return {"error_kind": kind, "error": error, "hwm_mb": status_mb("VmHWM"), "rss_mb": status_mb("VmRSS")}


async def main(config: str) -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))  # stdout: steps
    settings = load_settings(config, environ=dict(os.environ), dotenv=False)
    loop = asyncio.get_running_loop()
    async with ImageService(settings) as service:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            print(json.dumps(await step(service, json.loads(line))), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
