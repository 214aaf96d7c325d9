"""A TCP listener that accepts connections and never sends a byte: to a TLS client, a
handshake that never completes (the `_ssl.c: The handshake operation timed out` fault)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["black_hole"]


@contextlib.asynccontextmanager
async def black_hole(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[tuple[str, int]]:
    """Yield (host, port) of a listener that accepts and then stays silent until closed."""
    held: set[asyncio.StreamWriter] = set()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.add(writer)
        try:
            while await reader.read(65536):  # swallow the ClientHello and anything after it
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            held.discard(writer)
            writer.close()

    server = await asyncio.start_server(hold, host, port)
    bound = server.sockets[0].getsockname()[1]
    try:
        yield host, bound
    finally:
        server.close()
        for writer in list(held):
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)
