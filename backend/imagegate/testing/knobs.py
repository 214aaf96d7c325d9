"""Misbehaviour every emulator shares: latency, error statuses, stalls, resets; and a record
of what each emulator received, so tests can assert the exact wire fields.

    knobs = Knobs()
    knobs.latency_s = 0.2
    knobs.arm("status", count=2, status=503, headers={"Retry-After": "7"})
    knobs.arm("reset")             # RST after the request, before any response
    knobs.arm("stall")             # accept the request, never answer
    knobs.arm("stall_body")        # send headers and a few bytes, then stall
    knobs.arm("not_image")         # emulator-specific: answer with bytes that are no image
    knobs.arm("huge_body", status=500, size=2**30)  # hostile: see hostile.py
    knobs.arm("echo_auth", status=401)              # hostile: quote the credentials back
    knobs.arm("bad_headers")                        # hostile: headers no parser accepts

Faults apply to generation routes only unless ``path`` is given when arming. ``in_flight``
and ``peak_in_flight`` count the requests to those routes being answered at once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from imagegate.testing.hostile import echo_credentials, malformed_headers, stream_huge_body

__all__ = ["Knobs", "RecordedRequest", "misbehaviour_middleware", "record_json_body", "send_junk"]

ErrorBody = Callable[[int], Any]


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any = None


@dataclass
class _Armed:
    kind: str
    count: int
    params: dict[str, Any]
    path: str | None


@dataclass
class Knobs:
    """Switches a test (or a user) flips to make an emulator misbehave, at run time."""

    latency_s: float = 0.0
    latency: Callable[[], float] | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    cancelled: int = 0
    bytes_streamed: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    _armed: list[_Armed] = field(default_factory=list)

    def arm(self, kind: str, *, count: int = 1, path: str | None = None, **params: Any) -> None:
        """Make the next ``count`` matching requests misbehave in way ``kind`` (``path`` ending
        in ``*`` matches every path it starts)."""
        self._armed.append(_Armed(kind, count, params, path))

    def take(self, kind: str, path: str | None = None) -> dict[str, Any] | None:
        """Consume one armed ``kind`` for ``path``; its params, or None when none is armed."""
        for armed in self._armed:
            if armed.kind == kind and (armed.path is None or _matches(armed.path, path)):
                armed.count -= 1
                if armed.count <= 0:
                    self._armed.remove(armed)
                return armed.params
        return None

    def armed_for(self, path: str) -> bool:
        """Whether a fault was armed for exactly ``path`` (faults then apply off generation routes)."""
        return any(armed.path is not None and _matches(armed.path, path) for armed in self._armed)

    def clear(self) -> None:
        self._armed.clear()
        self.latency_s = 0.0
        self.latency = None

    def delay(self) -> float:
        return self.latency() if self.latency is not None else self.latency_s


def _matches(pattern: str, path: str | None) -> bool:
    if pattern.endswith("*"):
        return path is not None and path.startswith(pattern[:-1])
    return pattern == path


async def record_json_body(request: web.Request) -> Any:
    """What a JSON emulator records of a request: the parsed body, the raw bytes when they are
    not JSON, None when there is no body."""
    raw = await request.read() if request.can_read_body else b""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw


def abort_with_reset(request: web.Request) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0 + abort)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def send_junk(
    request: web.Request, size: int, *, headers: Mapping[str, str], short_body: bytes
) -> web.StreamResponse:
    """A 200 whose bytes are no image: ``short_body`` when ``size`` <= 0, else ``size`` zero
    bytes, chunked (an emulator's answer to ``arm("not_image", size=...)``)."""
    if size <= 0:
        return web.Response(body=short_body, headers=headers)
    resp = web.StreamResponse(status=200, headers=headers)
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    chunk = b"\0" * (1024 * 1024)
    sent = 0
    try:
        while sent < size:
            await resp.write(chunk[: min(len(chunk), size - sent)])
            sent += len(chunk)
        await resp.write_eof()
    except (ConnectionError, RuntimeError):  # the client gave up reading: that is the point
        pass
    return resp


def misbehaviour_middleware(
    knobs: Knobs,
    *,
    error_body: ErrorBody,
    generation_paths: tuple[str, ...],
    record_body: Callable[[web.Request], Awaitable[Any]] | None = None,
) -> Any:
    """An aiohttp middleware applying ``knobs`` to requests whose path is a generation path."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await record_body(request) if record_body else None
        knobs.requests.append(
            RecordedRequest(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        path = request.path
        faultable = any(path.startswith(p) for p in generation_paths) or knobs.armed_for(path)
        if faultable:
            knobs.in_flight += 1
            knobs.peak_in_flight = max(knobs.peak_in_flight, knobs.in_flight)
        try:
            if faultable:
                early = await _apply_faults(knobs, request, path, error_body)
                if early is not None:
                    return early
            return await handler(request)
        except asyncio.CancelledError:
            knobs.cancelled += 1
            raise
        finally:
            if faultable:
                knobs.in_flight -= 1

    return middleware


async def _apply_faults(
    knobs: Knobs, request: web.Request, path: str, error_body: ErrorBody
) -> web.StreamResponse | None:
    delay = knobs.delay()
    if delay:
        await asyncio.sleep(delay)
    if knobs.take("reset", path) is not None:
        abort_with_reset(request)
        raise web.HTTPServiceUnavailable()  # never reaches the client: the socket is gone
    if knobs.take("stall", path) is not None:
        await asyncio.sleep(3600)
    if knobs.take("stall_body", path) is not None:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.content_length = 1_000_000
        await resp.prepare(request)
        await resp.write(b'{"images": ["')
        await asyncio.sleep(3600)
    if (params := knobs.take("huge_body", path)) is not None:
        return await stream_huge_body(request, knobs, **params)
    if (params := knobs.take("echo_auth", path)) is not None:
        return echo_credentials(request, **params)
    if knobs.take("bad_headers", path) is not None:
        malformed_headers(request)
        raise web.HTTPServiceUnavailable()  # never reaches the client: the socket is closed
    params = knobs.take("status", path)
    if params is not None:
        status = int(params.get("status", 500))
        body = params.get("body", error_body(status))
        headers = params.get("headers") or {}
        if isinstance(body, (dict, list)):
            return web.json_response(body, status=status, headers=headers)
        return web.Response(status=status, text=str(body), headers=headers)
    return None
