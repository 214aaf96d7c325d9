"""FaultProxy: each mode produces the real network fault, and modes switch at run time."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from imagegate.testing import FaultProxy, Knobs, LocalCA, serve_app
from imagegate.testing import a1111 as a1111_emulator

PING = "/internal/ping"
CONNECT_S = 0.25


@pytest.fixture
async def https_url(local_ca: LocalCA) -> AsyncIterator[str]:
    async with serve_app(a1111_emulator.create_app(knobs=Knobs()), tls=local_ca) as url:
        yield url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=2, sock_connect=CONNECT_S, sock_read=CONNECT_S)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        yield s


async def get_status(session: aiohttp.ClientSession, url: str, tls: ssl.SSLContext | None = None) -> int:
    async with session.get(url + PING, ssl=tls if tls else True) as resp:
        await resp.read()
        return resp.status


async def test_pass_forwards_plain_http(a1111_url: str, session: aiohttp.ClientSession) -> None:
    async with FaultProxy(a1111_url) as proxy:
        assert proxy.url.startswith("http://127.0.0.1:") and proxy.url != a1111_url
        assert await get_status(session, proxy.url) == 200
        assert proxy.url_for(a1111_url + "/sdapi/v1/progress") == proxy.url + "/sdapi/v1/progress"
    assert proxy.connections == 1


async def test_pass_carries_tls_end_to_end(
    https_url: str, local_ca: LocalCA, session: aiohttp.ClientSession
) -> None:
    async with FaultProxy(https_url) as proxy:
        assert proxy.url.startswith("https://")
        assert await get_status(session, proxy.url, local_ca.client_context()) == 200


async def test_tls_blackhole_times_out_in_the_handshake_then_recovers(
    https_url: str, local_ca: LocalCA, session: aiohttp.ClientSession
) -> None:
    tls = local_ca.client_context()
    async with FaultProxy(https_url, mode="tls_blackhole") as proxy:
        start = time.monotonic()
        with pytest.raises(aiohttp.ConnectionTimeoutError):
            await get_status(session, proxy.url, tls)
        assert CONNECT_S * 0.9 < time.monotonic() - start < CONNECT_S + 0.5
        proxy.mode = "pass"
        assert await get_status(session, proxy.url, tls) == 200


async def test_tcp_blackhole_never_completes_the_tcp_handshake(
    a1111_url: str, session: aiohttp.ClientSession
) -> None:
    async with FaultProxy(a1111_url, mode="tcp_blackhole") as proxy:
        with pytest.raises(aiohttp.ConnectionTimeoutError):
            await get_status(session, proxy.url)  # plain HTTP: only a TCP-level hole times out here
        proxy.mode = "pass"
        assert await get_status(session, proxy.url) == 200


async def test_reset_breaks_the_connection_before_any_response(
    a1111_url: str, session: aiohttp.ClientSession
) -> None:
    async with FaultProxy(a1111_url, mode="reset") as proxy:
        with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
            await get_status(session, proxy.url)


async def test_refuse_closes_the_port_and_pass_reopens_the_same_port(
    a1111_url: str, session: aiohttp.ClientSession
) -> None:
    async with FaultProxy(a1111_url) as proxy:
        url = proxy.url
        proxy.mode = "refuse"
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await get_status(session, url)
        assert isinstance(caught.value.os_error, ConnectionRefusedError)
        proxy.mode = "pass"
        assert proxy.url == url
        assert await get_status(session, url) == 200


async def test_latency_delays_the_answer(a1111_url: str, session: aiohttp.ClientSession) -> None:
    async with FaultProxy(a1111_url, mode="latency", latency_s=0.1) as proxy:
        start = time.monotonic()
        assert await get_status(session, proxy.url) == 200
        assert time.monotonic() - start >= 0.2  # one chunk each way


async def _tls_handshake_s(url: str, tls: ssl.SSLContext) -> tuple[float, asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TLS connection to ``url`` by hand: (seconds until the handshake completed, streams)."""
    host, port = url.split("//")[1].split(":")
    start = time.monotonic()
    reader, writer = await asyncio.open_connection(host, int(port), ssl=tls, server_hostname=host)
    return time.monotonic() - start, reader, writer


async def _exchange_s(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    """One HTTP/1.1 request and its whole answer on an open connection; its seconds."""
    start = time.monotonic()
    writer.write(f"GET {PING} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    return time.monotonic() - start


async def test_latency_delays_the_tls_handshake_by_a_round_trip_of_it(https_url: str, local_ca: LocalCA) -> None:
    async with FaultProxy(https_url, mode="latency", latency_s=0.2) as proxy:
        handshake_s, _, writer = await _tls_handshake_s(proxy.url, local_ca.client_context())
        writer.close()
    assert handshake_s >= 0.4  # the ClientHello and the server's first flight each wait


async def test_slow_handshake_delays_only_the_tls_handshake(https_url: str, local_ca: LocalCA) -> None:
    async with FaultProxy(https_url, mode="slow_handshake", latency_s=1.0) as proxy:
        handshake_s, reader, writer = await _tls_handshake_s(proxy.url, local_ca.client_context())
        first = await _exchange_s(reader, writer)
        second = await _exchange_s(reader, writer)
        writer.close()
    assert handshake_s >= 1.0  # the server's first flight was held
    assert first < 1.0 and second < 1.0  # after it, bytes flow at once (generous: ms on loopback)


async def test_a_latency_callable_draws_each_connections_handshake_delay(https_url: str, local_ca: LocalCA) -> None:
    drawn = iter([0.6, 0.0])
    async with FaultProxy(https_url, mode="slow_handshake", latency=lambda: next(drawn)) as proxy:
        slow, _, first = await _tls_handshake_s(proxy.url, local_ca.client_context())
        fast, _, second = await _tls_handshake_s(proxy.url, local_ca.client_context())
        first.close()
        second.close()
    assert slow >= 0.6 and fast < 0.6


async def test_switching_to_a_hole_resets_pooled_connections(
    https_url: str, local_ca: LocalCA, session: aiohttp.ClientSession
) -> None:
    tls = local_ca.client_context()
    async with FaultProxy(https_url) as proxy:
        assert await get_status(session, proxy.url, tls) == 200  # leaves a keep-alive connection
        proxy.mode = "tls_blackhole"
        with pytest.raises(aiohttp.ClientError):
            await get_status(session, proxy.url, tls)


def test_unknown_mode_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="tls_blackhole"):
        FaultProxy("127.0.0.1:1", mode="flaky")  # type: ignore[arg-type]
