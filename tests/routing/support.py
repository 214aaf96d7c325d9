"""Helpers for the routing tests: a fake clock, A1111 backend tables, settings, waits."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from imagegate import ImageRequest
from imagegate.config import Settings
from imagegate.testing import FaultProxy, LocalCA

from tests.conftest import make_settings

REQUEST = ImageRequest(prompt="a lighthouse at dusk", width=64, height=64)
CONNECT_S = 0.3
# Generous bound for "small overhead" on a busy CI machine: a 0.3 s connect timeout once
# took 0.84 s under the full suite on 2 CPUs (loop starved), so 0.5 s was not. Every use
# stays at least 0.9 s below the time its failure would take (a 2 s slow primary, a 5-10 s
# connect budget, a stalled backend), so the checks can still fail.
SLACK_S = 1.0


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def a1111(name: str, url: str, priority: int = 0, **keys: Any) -> dict[str, Any]:
    table = {"name": name, "kind": "a1111", "base_url": url, "priority": priority}
    return {**table, "max_concurrency": 8, "queue": False, **keys}


def settings_for(tmp_path: Path, *backends: dict[str, Any], **service: Any) -> Settings:
    return make_settings(list(backends), service={"probe_interval_s": 3600, **service}, tmp_path=tmp_path)


def outcomes(attempts: list[Any]) -> list[tuple[str, str]]:
    return [(a.backend, a.outcome) for a in attempts]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0
) -> None:  # generous: returns at once when true
    """Until ``check()`` (a bool, or an awaitable of one) is true; fails after ``timeout``."""
    end = time.monotonic() + timeout
    while not await _holds(check()):
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _holds(value: bool | Awaitable[bool]) -> bool:
    return bool(await value) if inspect.isawaitable(value) else bool(value)


def attempt_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("imagegate-")]


def holed_primary(proxy: FaultProxy, local_ca: LocalCA) -> dict[str, Any]:
    return a1111("primary", proxy.url, 0, connect_timeout_s=CONNECT_S, ca_bundle=local_ca.ca_file)
