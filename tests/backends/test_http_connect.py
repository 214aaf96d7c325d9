"""``HttpBackend.connect``: a warm keep-alive connection in the shared pool, opened with the
generation's own TLS settings and sending no HTTP request; the generation then reuses it.
Real sockets only: the A1111 emulator (over real TLS), FaultProxy to count connections and
to black-hole or slow down the handshake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from imagegate.backends.a1111 import A1111Backend, A1111Settings
from imagegate.errors import ConnectFailed, GenerationTimeout, HandshakeTimeout
from imagegate.models import Deadline, ImageRequest
from imagegate.testing import FaultProxy, Knobs, LocalCA, serve_app
from imagegate.testing import a1111 as a1111_emulator

from tests.routing.support import closed_port

REQUEST = ImageRequest(prompt="a lighthouse at dusk", width=64, height=64)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, limit_per_host=0)) as s:
        yield s


@pytest.fixture
async def tls_url(knobs: Knobs, local_ca: LocalCA) -> AsyncIterator[str]:
    async with serve_app(a1111_emulator.create_app(knobs=knobs), tls=local_ca) as url:
        yield url


def backend_at(url: str, session: aiohttp.ClientSession, local_ca: LocalCA, connect_s: float = 5.0) -> A1111Backend:
    settings = A1111Settings(name="b", base_url=url, ca_bundle=local_ca.ca_file, connect_timeout_s=connect_s)
    return A1111Backend(settings, secrets={}, session=session)


@pytest.mark.parametrize("tls", [True, False], ids=["https", "http"])
async def test_connect_sends_nothing_and_the_generation_reuses_its_connection(
    tls: bool, tls_url: str, a1111_url: str, knobs: Knobs, local_ca: LocalCA,
    session: aiohttp.ClientSession,
) -> None:
    async with FaultProxy(tls_url if tls else a1111_url) as proxy:
        backend = backend_at(proxy.url, session, local_ca)
        cold = await backend.connect(Deadline.after(5))
        assert (proxy.connections, knobs.requests) == (1, [])  # TCP (+ TLS) only, no request
        assert not cold.reused and cold.handshake_s > 0 and "connect_s" in cold.timings
        cold.release()
        warm = await backend.connect(Deadline.after(5))
        assert warm.reused and proxy.connections == 1
        warm.release()
        await backend.generate(REQUEST, deadline=Deadline.after(5))
        assert proxy.connections == 1  # the generation took the pooled connection
        assert [r.path for r in knobs.requests] == ["/sdapi/v1/txt2img"]


async def test_a_connection_is_held_for_its_caller_until_released_just_before_sending(
    tls_url: str, knobs: Knobs, local_ca: LocalCA, session: aiohttp.ClientSession
) -> None:
    async with FaultProxy(tls_url) as proxy:
        backend = backend_at(proxy.url, session, local_ca)
        mine = await backend.connect(Deadline.after(5))
        other = await backend.connect(Deadline.after(5))  # another request meanwhile: not mine
        assert not other.reused and proxy.connections == 2
        thief = asyncio.create_task(backend.connect(Deadline.after(5)))  # runs at the next pause
        mine.release()
        await backend.generate(REQUEST, deadline=Deadline.after(5))  # took mine before it ran
        stolen = await thief
        assert not stolen.reused and proxy.connections == 3
        other.release()
        stolen.release()


async def test_connect_measures_a_slow_tls_handshake(
    tls_url: str, local_ca: LocalCA, session: aiohttp.ClientSession
) -> None:
    async with FaultProxy(tls_url, mode="slow_handshake", latency_s=0.5) as proxy:
        info = await backend_at(proxy.url, session, local_ca).connect(Deadline.after(5))
        info.release()
    assert info.handshake_s >= 0.5 and info.timings["connect_s"] >= 0.5


async def test_connect_to_a_tls_black_hole_is_a_handshake_timeout_after_connect_timeout_s(
    blackhole_url: str, local_ca: LocalCA, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(HandshakeTimeout, match="within 0.3 s"):
        await backend_at(blackhole_url, session, local_ca, connect_s=0.3).connect(Deadline.after(5))


async def test_connect_within_a_shorter_deadline_says_the_deadline_ran_out(
    blackhole_url: str, local_ca: LocalCA, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(GenerationTimeout, match="deadline ran out while connecting"):
        await backend_at(blackhole_url, session, local_ca).connect(Deadline.after(0.3))


async def test_connect_refused_and_closed_session_are_connect_failed(
    local_ca: LocalCA, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ConnectFailed) as refused:
        await backend_at(f"http://127.0.0.1:{closed_port()}", session, local_ca).connect(Deadline.after(5))
    assert refused.value.refused
    closed = aiohttp.ClientSession()
    await closed.close()
    with pytest.raises(ConnectFailed, match="session is closed"):
        await backend_at("http://127.0.0.1:1", closed, local_ca).connect(Deadline.after(5))
