"""Helpers every scenario of this package shares: settings, emulator processes, statistics,
process gauges (RSS, fds, threads) and the machine description."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from imagegate.backends.a1111 import A1111Settings
from imagegate.backends.openai_images import OpenAISettings
from imagegate.config import ServiceSettings, Settings
from imagegate.routing.policy import percentile
from imagegate.testing import Knobs, LocalCA, serve_app
from imagegate.testing import a1111 as a1111_emulator

OUT_DIR = Path("outputs/bench")
API_KEY = "sk-bench-not-a-secret"
KEY_ENV = "IMAGEGATE_BENCH_KEY"


# -- settings -----------------------------------------------------------------------------------


def a1111_backend(name: str, url: str, priority: int, **keys: Any) -> A1111Settings:
    return A1111Settings(
        name=name, base_url=url, priority=priority, max_concurrency=256, queue=False, **keys
    )


def a1111_settings(*backends: A1111Settings, **service: Any) -> Settings:
    svc = ServiceSettings(probe_interval_s=3600, deadline_s=30, **service)
    return Settings(service=svc, backends=backends, secrets={}, source="bench")


@asynccontextmanager
async def emulator(knobs: Knobs, tls: LocalCA | None = None) -> AsyncIterator[str]:
    async with serve_app(a1111_emulator.create_app(knobs=knobs), tls=tls) as url:
        yield url


async def timed(coro: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await coro
    return time.perf_counter() - start, result



def openai_backend(name: str, url: str, priority: int = 0, **keys: Any) -> OpenAISettings:
    """An OpenAI-compatible backend at ``url`` (many slots, no queue: the emulator is the limit)."""
    table: dict[str, Any] = {"max_concurrency": 512, "queue": False, "model": "emulator-image", **keys}
    return OpenAISettings(name=name, base_url=url, priority=priority, api_key_env=KEY_ENV, **table)


def service_settings(*backends: Any, **service: Any) -> Settings:
    """Settings as the loader would build them, the bench key given to every backend."""
    svc = ServiceSettings(**{"probe_interval_s": 3600.0, "deadline_s": 30.0, **service})
    secrets = {b.name: {"api_key": API_KEY} for b in backends}
    return Settings(service=svc, backends=tuple(backends), secrets=secrets, source="bench")


# -- emulator processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator process exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"emulator on port {port} did not listen within {timeout:g} s")


@contextlib.contextmanager
def process(argv: Sequence[str], port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run a server process listening on ``port``; yield its base URL; stop it afterwards."""
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        _wait_listening(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, timeout=10)


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def openai_emulator(latency_s: float = 0.0, *, render: bool = False) -> Iterator[str]:
    """imagegate's OpenAI-compatible emulator in its own process (``python -m imagegate.testing``);
    ``render``: every image drawn and encoded anew, none served from a cache."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "imagegate.testing",
        "openai",
        "--port",
        str(port),
        "--api-key",
        API_KEY,
    ]
    if latency_s:
        argv += ["--latency", str(latency_s)]
    if render:
        argv.append("--render")
    with process(argv, port) as url:
        yield url


# -- statistics ---------------------------------------------------------------------------------


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def stats_ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": ms(percentile(values, 0.50)),
        "p90": ms(percentile(values, 0.90)),
        "p99": ms(percentile(values, 0.99)),
        "max": ms(max(values)),
        "mean": ms(sum(values) / len(values)),
    }


def print_table(rows: dict[str, dict[str, float]], unit: str = "ms") -> None:
    print(f"  {unit:<26}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}{'mean':>10}")
    for name, row in rows.items():
        cells = "".join(f"{row[k]:>10.3f}" for k in ("p50", "p90", "p99", "max", "mean"))
        print(f"  {name:<26}{cells}")


# -- process gauges -----------------------------------------------------------------------------


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size in MiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def malloc_trim() -> bool:
    """Ask glibc to give freed heap memory back to the OS (what RSS can drop to)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
