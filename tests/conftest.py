"""Shared fixtures: a throwaway CA, the A1111 emulator, a black-hole listener, settings helpers.

Everything here listens on 127.0.0.1 only. Fault timeouts are fractions of a second and are
set through the same config keys users set.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

from imagegate.backends.registry import load_settings
from imagegate.config import Settings
from imagegate.logging import unconfigure_logging
from imagegate.testing import Knobs, LocalCA, black_hole, serve_app
from imagegate.testing import a1111 as a1111_emulator
from imagegate.testing.a1111_webui import Webui
from imagegate.testing.redis import RedisServer, redis_available, redis_server


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own XDG_STATE_HOME: a server's URL secret file never lands in the real home
    (and every test starts as a first start would)."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


@pytest.fixture(autouse=True)
def _library_logging() -> Iterator[None]:
    """Every test starts with logging as a host that never touched it leaves it
    (``capture_logs`` and an in-process ``imagegate.cli.main`` configure it, and leave it so)."""
    yield
    unconfigure_logging()


@pytest.fixture(scope="session")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    """One CA per test session; ``local_ca.ca_file`` goes into a backend's ``ca_bundle``."""
    return LocalCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def knobs() -> Knobs:
    return Knobs()


@pytest.fixture(scope="session")
def replicas() -> Any:
    """The Gradio stand-in with its replicas of real Spaces (``space.replicas[name]``),
    launched once per session when a test asks for it."""
    from imagegate.testing.gradio_space import launch_space

    running = launch_space(replicas=True)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
async def a1111_url(knobs: Knobs) -> AsyncIterator[str]:
    """A running A1111 emulator (plain HTTP, like a local webui) controlled by ``knobs``."""
    async with serve_app(a1111_emulator.create_app(knobs=knobs)) as url:
        yield url


@pytest.fixture
def webui() -> Webui:
    """The A1111 emulator's "GPU" for ``slow_a1111_url``: 20 ms per sampling step."""
    return Webui(step_s=0.02)


@pytest.fixture
async def slow_a1111_url(webui: Webui, knobs: Knobs) -> AsyncIterator[str]:
    """An A1111 emulator whose jobs take time and report progress (``webui`` holds its state)."""
    async with serve_app(a1111_emulator.create_app(knobs=knobs, webui=webui)) as url:
        yield url


@pytest.fixture
async def blackhole_url() -> AsyncIterator[str]:
    """An https:// URL whose TLS handshake never completes."""
    async with black_hole() as (host, port):
        yield f"https://{host}:{port}"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imagegate.toml"
    path.write_text(text)
    return path


def make_settings(
    backends: list[dict[str, Any]],
    *,
    service: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    tmp_path: Path,
) -> Settings:
    """Settings built through the real TOML loader, as a user's file would be."""
    import tomllib  # noqa: F401  (documents that the text below is TOML)

    lines = []
    if service:
        lines.append("[service]")
        lines += [f"{k} = {_toml(v)}" for k, v in service.items()]
    for b in backends:
        lines.append("[[backend]]")
        for k, v in b.items():
            if isinstance(v, dict):
                continue
            lines.append(f"{k} = {_toml(v)}")
        for k, v in b.items():
            if isinstance(v, dict):
                lines.append(f"[backend.{k}]")
                lines += [f"{kk} = {_toml(vv)}" for kk, vv in v.items()]
    path = write_config(tmp_path, "\n".join(lines) + "\n")
    return load_settings(path, environ=environ or {}, dotenv=False)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, e.g. [service] aliases = {"dall-e-3" = "a"}
        return "{" + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def need_redis() -> None:
    """Skip (with the reason) where no redis-server is installed; fail instead under .ci/run,
    which installs it and sets IMAGEGATE_TEST_REQUIRE_SERVICES=1, so CI never skips silently."""
    if redis_available():
        return
    message = "redis-server is not installed (.ci/run installs it: apt-get install -y redis-server)"
    if os.environ.get("IMAGEGATE_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    """One redis-server for the session."""
    need_redis()
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_session: RedisServer) -> str:
    """The session's redis-server, emptied for this test."""
    redis_session.flush()
    return redis_session.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may stop and start again."""
    need_redis()
    with redis_server() as server:
        yield server
