"""Fixtures of the routing tests: A1111 emulators (plain and TLS) and a black-holing proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from imagegate.testing import FaultProxy, Knobs, LocalCA, serve_app
from imagegate.testing import a1111 as a1111_emulator


@pytest.fixture
def p_knobs() -> Knobs:
    return Knobs()


@pytest.fixture
async def primary_url(p_knobs: Knobs) -> AsyncIterator[str]:
    async with serve_app(a1111_emulator.create_app(knobs=p_knobs)) as url:
        yield url


@pytest.fixture
async def primary_tls_url(p_knobs: Knobs, local_ca: LocalCA) -> AsyncIterator[str]:
    async with serve_app(a1111_emulator.create_app(knobs=p_knobs), tls=local_ca) as url:
        yield url


@pytest.fixture
async def holed(primary_tls_url: str) -> AsyncIterator[FaultProxy]:
    """The TLS primary behind a proxy that black-holes the handshake."""
    async with FaultProxy(primary_tls_url, mode="tls_blackhole") as proxy:
        yield proxy


