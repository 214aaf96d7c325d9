"""Connection limits: what a slow, idle or flooding client can hold of the server.

aiohttp alone waits for ever for a request head that trickles in, keeps 1-hour idle
keep-alive connections, accepts every connection it can, and, once the process runs out of
file descriptors, asyncio logs a traceback for every failed ``accept()`` (CPython 3.11
retries ``backlog`` times per readiness event: 246 MB of log in 15 s, measured). Here
(``GuardedRunner``, a drop-in ``web.AppRunner``), from ``[service]``:

- ``header_timeout_s``: a request's head (request line and headers) must be complete within
  this, counted from the connection's start for its first request and from the first byte
  for the next ones; else ``408`` and the connection is closed;
- ``keepalive_timeout_s``: an idle connection between requests is closed after this;
- ``body_timeout_s``: a request's whole body must arrive within this (the ``read_body``
  middleware in ``guards.py``: ``408``); the rest of an abandoned body is drained for at most
  ``LINGER_S``;
- ``max_connections``: past this many open connections a new one is answered ``503`` with
  ``Retry-After`` and closed, without reading its request. The cap is lowered, when needed,
  to leave room under the process's file-descriptor limit (``ulimit -n``) for the outgoing
  provider connections and files (``FD_RESERVE``), so that ``accept()`` never fails;
- an ``accept()`` that fails all the same (EMFILE, ENFILE, ENOBUFS, ENOMEM), and every
  refusal, is logged once per ``LOG_INTERVAL_S`` with a count, never once per attempt;
- a request whose head does not parse (an oversize header, a bad request line) is answered
  ``400`` with a fixed text and logged by kind: nothing of what was sent is echoed.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from imagegate.logging import get_logger

__all__ = ["FD_RESERVE", "ConnectionLimits", "GuardedRunner", "Throttled", "effective_max_connections"]

log = get_logger(__name__)

FD_RESERVE = 256 + 64  # the shared provider session's pool, plus files, logs, the listener
LOG_INTERVAL_S = 10.0
LINGER_S = 2.0  # how long the rest of an abandoned request body is drained before closing
_ACCEPT_FAILED = "socket.accept() out of system resource"
_REFUSAL_BODY = json.dumps({"error": {
    "message": "too many connections; retry shortly", "type": "api_error",
    "code": "too_many_connections", "param": None,
}}).encode()
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n"
    + _REFUSAL_BODY
)
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_BAD_REQUEST = "the request could not be parsed (request line or headers malformed or too long)"


@dataclass(frozen=True)
class ConnectionLimits:
    """The ``[service]`` connection limits, as the server applies them."""

    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 15.0
    max_connections: int = 512


def effective_max_connections(wanted: int, fd_limit: int | None = None) -> int:
    """``wanted``, lowered to leave ``FD_RESERVE`` descriptors under the soft ``ulimit -n``."""
    soft = fd_limit if fd_limit is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


class Throttled:
    """A warning logged at most once per ``interval_s``, with how many times it happened."""

    def __init__(self, event: str, *, interval_s: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.event, self.interval_s, self._clock = event, interval_s, clock
        self._last: float | None = None
        self.count = 0  # occurrences not yet logged
        self.logged = 0  # lines written

    def hit(self, **fields: Any) -> None:
        self.count += 1
        now = self._clock()
        if self._last is None or now - self._last >= self.interval_s:
            log.warning(self.event, count=self.count, interval_s=self.interval_s, **fields)
            self._last, self.count = now, 0
            self.logged += 1


class _Refusal(asyncio.Protocol):
    """Answers 503 at once, half-closes, discards what the client sends, closes within 1 s."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(REFUSAL)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(1.0, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # never read: the answer does not depend on it

    def eof_received(self) -> bool:
        self._transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()


class _GuardedHandler(RequestHandler):
    """aiohttp's handler with a request-head timeout and a head parse error that echoes nothing."""

    def __init__(self, manager: _GuardedServer, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        kwargs.update(keepalive_timeout=limits.keepalive_timeout_s, lingering_time=LINGER_S)
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._owner = manager
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head()  # a new connection has header_timeout_s to send its first head

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_head()
        self._owner.live -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._disarm_head()  # a complete head arrived
        elif data and self._head_timer is None and self._between_requests():
            self._arm_head()  # the first byte of the next request's head

    def _between_requests(self) -> bool:
        return not self._request_in_progress and not self._messages and self._current_request is None

    def _arm_head(self) -> None:
        self._disarm_head()
        self._head_timer = self._loop.call_later(self._limits.header_timeout_s, self._head_timed_out)

    def _disarm_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is not None and self._between_requests():
            self.transport.write(TIMED_OUT)
            self._owner.slow_heads.hit(header_timeout_s=self._limits.header_timeout_s)
            self.force_close()

    def _process_keepalive(self) -> None:
        if self._head_timer is not None:  # a head is on its way: its own timer decides
            self._keepalive_handle = None
            return
        super()._process_keepalive()

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp's connection-level failures (a body that stops decoding while drained, a
        client gone): one throttled line by type, never the traceback or what was sent."""
        error = kwargs.get("exc_info")
        self._owner.connection_errors.hit(
            error_type=type(error).__name__ if isinstance(error, BaseException) else None
        )

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        self._owner.bad_heads.hit(status=status, error_type=type(exc).__name__ if exc else None)
        body = json.dumps({"error": {"message": _BAD_REQUEST, "type": "invalid_request_error",
                                     "code": "bad_request", "param": None}})
        resp = web.Response(status=status, text=body, content_type="application/json")
        resp.force_close()
        return resp


class _GuardedServer(Server):
    """aiohttp's low-level server, counting connections and refusing past the cap."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.live = 0  # handlers made and not yet lost
        self.refused = Throttled("connections_refused")
        self.slow_heads = Throttled("request_head_timed_out")
        self.bad_heads = Throttled("request_head_malformed")
        self.connection_errors = Throttled("connection_error")

    def __call__(self) -> Any:
        if self.live >= self.limits.max_connections:
            self.refused.hit(max_connections=self.limits.max_connections)
            return _Refusal()
        handler = _GuardedHandler(self, limits=self.limits, loop=self._loop, **self._kwargs)
        self.live += 1
        return handler


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` serving through the guarded server, with accept errors throttled."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        cap = effective_max_connections(limits.max_connections)
        if cap < limits.max_connections:
            log.warning("max_connections_lowered", wanted=limits.max_connections, allowed=cap,
                        reason=f"ulimit -n leaves room for {cap} after {FD_RESERVE} reserved")
        self.limits = ConnectionLimits(limits.header_timeout_s, limits.keepalive_timeout_s, cap)
        self.accept_failed = Throttled("accept_failed")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    async def _make_server(self) -> Server:
        plain = await super()._make_server()  # runs the app's startup, as AppRunner does
        return _GuardedServer(
            plain.request_handler, request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation, loop=plain._loop,
            limits=self.limits, **plain._kwargs,
        )

    async def setup(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._previous = self._loop.get_exception_handler()
        self._loop.set_exception_handler(self._loop_error)
        await super().setup()

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            if self._loop is not None:
                self._loop.set_exception_handler(self._previous)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_FAILED:
            error = context.get("exception")
            self.accept_failed.hit(error=f"{type(error).__name__}: {error}" if error else None)
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)
