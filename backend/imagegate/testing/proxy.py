"""FaultProxy: a small asyncio TCP proxy whose fault mode can be switched at run time.

Put it in front of any emulator (or any TCP server) to make a backend flap::

    async with FaultProxy(emulator_url, mode="tls_blackhole") as proxy:
        settings = ... base_url = proxy.url ...       # same scheme, the proxy's port
        proxy.mode = "pass"                           # the backend comes back

Modes (TLS passes through end to end, so an ``https`` emulator keeps its certificate):

- ``pass``: forward bytes both ways;
- ``latency``: forward, delaying every chunk by ``latency_s`` (both directions; a TLS
  handshake's round trips each pay it, and so does everything after);
- ``slow_handshake``: forward, holding each connection's first bytes from the upstream for
  ``latency_s``: a TLS handshake (the server's first flight) completes ``latency_s`` late,
  and everything after flows at once (a plain-HTTP upstream: its first answer is late);
- ``tls_blackhole``: accept the connection, swallow what the client sends, never answer
  (a TLS client times out in the handshake, a plain HTTP client waiting for the response);
- ``tcp_blackhole``: stop accepting and fill the listen queue, so new TCP handshakes never
  complete (the client's SYNs are dropped; a connect timeout);
- ``reset``: accept, read the first bytes, then reset the connection (RST);
- ``refuse``: close the listening socket: connection refused (the same port comes back).

``latency`` (a callable) replaces ``latency_s`` with a value drawn for each delay (jittered
handshakes). Switching between ``pass``, ``latency`` and ``slow_handshake`` keeps open
connections; any other switch resets every open connection, so pooled keep-alive
connections cannot dodge the new fault.
Linux semantics are assumed for ``tcp_blackhole`` (a backlog of 0 holds one connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import struct
from collections.abc import Callable
from types import TracebackType
from typing import Literal, Self, get_args
from urllib.parse import urlsplit

__all__ = ["FaultProxy", "ProxyMode"]

ProxyMode = Literal[
    "pass", "latency", "slow_handshake", "tls_blackhole", "tcp_blackhole", "reset", "refuse"
]
_FLOWING = ("pass", "latency", "slow_handshake")
_CHUNK = 65536


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` (a URL or ``host:port``)."""

    def __init__(
        self,
        upstream: str,
        *,
        mode: ProxyMode = "pass",
        latency_s: float = 0.0,
        latency: Callable[[], float] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._scheme, self.upstream_host, self.upstream_port = _parse(upstream)
        self.host, self.port = host, port
        self.latency_s = latency_s
        self.latency = latency
        self.connections = 0  # accepted so far
        self._mode: ProxyMode = _check(mode)
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._open: set[asyncio.StreamWriter] = set()
        self._fillers: list[socket.socket] = []

    @property
    def url(self) -> str:
        """The proxy's address with the upstream's scheme: use as a backend's base_url."""
        return f"{self._scheme}://{self.host}:{self.port}"

    def url_for(self, upstream_url: str) -> str:
        """``upstream_url`` (path included) rewritten to go through this proxy."""
        parts = urlsplit(upstream_url)
        return parts._replace(netloc=f"{self.host}:{self.port}").geturl()

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    @mode.setter
    def mode(self, mode: ProxyMode) -> None:
        old, self._mode = self._mode, _check(mode)
        if self._sock is None and old != "refuse":
            return  # not started yet
        if not (old in _FLOWING and mode in _FLOWING):
            self._reset_open()
        if old == "tcp_blackhole":
            self._unfill()
        if mode == "refuse":
            self._stop_accepting()
            self._close_listener()
        elif old == "refuse":
            self._listen()
        if mode == "tcp_blackhole":
            self._stop_accepting()
            self._fill()
        elif self._accept_task is None:
            self._start_accepting()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        mode, self._mode = self._mode, "pass"
        self._listen()
        self.port = self._sock.getsockname()[1] if self._sock else self.port
        self._start_accepting()
        self.mode = mode

    async def aclose(self) -> None:
        self._stop_accepting()
        self._unfill()
        self._close_listener()
        self._reset_open()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers)

    # -- the listening socket -----------------------------------------------------------

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock

    def _close_listener(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _start_accepting(self) -> None:
        if self._sock is not None and self._accept_task is None:
            self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop(self._sock))

    def _stop_accepting(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            self._accept_task = None

    def _fill(self) -> None:
        """Shrink the backlog to 0 and fill it, so further SYNs are dropped."""
        if self._sock is None:
            return
        self._sock.listen(0)
        for _ in range(16):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(self._sock.getsockname())
            _, writable, _ = select.select([], [filler], [], 0)  # loopback: synchronous
            if not writable:  # the handshake did not complete: the queue is full
                filler.close()
                break
            self._fillers.append(filler)

    def _unfill(self) -> None:
        fillers, self._fillers = self._fillers, []
        if self._sock is not None and fillers:
            while True:  # drop the queued filler connections before accepting again
                try:
                    conn, _ = self._sock.accept()
                except (BlockingIOError, OSError):
                    break
                conn.close()
            self._sock.listen(128)
        for filler in fillers:
            filler.close()

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError:
                return  # the listener was closed
            self.connections += 1
            task = loop.create_task(self._handle(conn))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    # -- one connection -----------------------------------------------------------------

    async def _handle(self, conn: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=conn)
        self._open.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            mode = self._mode
            if mode == "reset":
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(reader.read(_CHUNK), 1.0)
                _abort(writer)
                return
            if mode not in _FLOWING:  # a black hole: swallow until the client gives up
                while await reader.read(_CHUNK):
                    pass
                return
            up_reader, upstream = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            self._open.add(upstream)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer, answer=True))
        except (ConnectionError, OSError):
            _abort(writer)
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._open.discard(w)
                    w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, answer: bool = False
    ) -> None:
        """Copy ``reader`` to ``writer``; ``answer``: the upstream's side (``slow_handshake``)."""
        first = answer
        try:
            while chunk := await reader.read(_CHUNK):
                held = self._mode == "latency" or (first and self._mode == "slow_handshake")
                first = False
                delay = (self.latency() if self.latency else self.latency_s) if held else 0.0
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            _abort(writer)

    def _reset_open(self) -> None:
        for writer in list(self._open):
            _abort(writer)
        self._open.clear()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0 + abort)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _check(mode: str) -> ProxyMode:
    if mode not in get_args(ProxyMode):
        raise ValueError(f"mode must be one of {', '.join(get_args(ProxyMode))} (got {mode!r})")
    return mode  # type: ignore[return-value]


def _parse(upstream: str) -> tuple[str, str, int]:
    if "://" not in upstream:
        upstream = "tcp://" + upstream
    parts = urlsplit(upstream)
    if not parts.hostname or not parts.port:
        if parts.scheme in ("http", "https") and parts.hostname:
            return parts.scheme, parts.hostname, 443 if parts.scheme == "https" else 80
        raise ValueError(f"upstream must be a URL or host:port with a port (got {upstream!r})")
    return parts.scheme, parts.hostname, parts.port
