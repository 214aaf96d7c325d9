"""The aiohttp layer under every HTTP call a backend makes: timeouts capped by the deadline,
the TLS trust, foreign errors mapped to the taxonomy (once: :func:`map_http_errors`), the
status-to-taxonomy table, Retry-After, bounded body reads, and DNS/connect/first-byte timings.

Every body a provider sends is read by :func:`read_body` (through ``HttpBackend.send``, the
Space backend's own calls and the diagnosis alike): an expected answer under the caller's
cap, proportional to what it may carry, streamed and abandoned past it; anything else only up
to ``ERROR_BODY_CAP``, enough for a message. Nothing reads a provider's body whole.

:func:`warm_connection` opens (or finds) a keep-alive connection in the session's pool without
sending a request, and holds it for the caller: what ``HttpBackend.connect`` does before a
handshake race is decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import ssl
import time
from collections.abc import Collection, Iterator
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
from yarl import URL

from imagegate.backends.base import ConnectInfo
from imagegate.config import Timeouts, check_pem
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    ConnectFailed,
    GenerationTimeout,
    HandshakeTimeout,
    QuotaExhausted,
    RateLimited,
    Rejected,
    ServerError,
    Unavailable,
)
from imagegate.models import Deadline

__all__ = [
    "ERROR_BODY_CAP",
    "client_timeout",
    "error_for_status",
    "error_text",
    "make_ssl_context",
    "map_http_errors",
    "parse_retry_after",
    "read_body",
    "read_capped",
    "read_prefix",
    "timing_trace_config",
    "warm_connection",
]

ERROR_BODY_CAP = 64 * 1024  # an error body is read this far: enough for any message
# aiohttp rounds every timeout above ClientTimeout.ceil_threshold (5 s by default) up to the next
# whole second of the loop clock, so a 10 s connect budget fired after up to 11 s; ours fire on time.
NO_CEIL_S = 1e9


def client_timeout(timeouts: Timeouts, deadline: Deadline | None) -> aiohttp.ClientTimeout:
    """Our timeouts as aiohttp's, capped by what is left of the deadline; never 'no timeout'."""
    left = deadline.remaining() if deadline else timeouts.connect + timeouts.read
    left = max(left, 0.001)
    return aiohttp.ClientTimeout(
        total=left,
        sock_connect=min(timeouts.connect, left),
        sock_read=min(timeouts.read, left),
        ceil_threshold=NO_CEIL_S,
    )


@contextlib.contextmanager
def map_http_errors(
    backend: str, timeouts: Timeouts, deadline: Deadline | None = None
) -> Iterator[None]:
    """Translate aiohttp/asyncio/OS errors into the taxonomy, once, at the backend boundary."""
    try:
        yield
    except BackendError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:
        raise HandshakeTimeout(
            f"connection/TLS handshake did not complete within {timeouts.connect:g} s",
            backend=backend,
        ) from exc
    except aiohttp.ClientConnectorCertificateError as exc:
        raise ConnectFailed(f"TLS certificate not trusted: {exc.certificate_error}", backend=backend) from exc
    except aiohttp.ClientConnectorDNSError as exc:
        raise ConnectFailed(f"DNS lookup failed for {exc.host}", backend=backend) from exc
    except aiohttp.ClientConnectorError as exc:
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        what = "connection refused" if refused else f"cannot connect: {exc.strerror or exc}"
        raise ConnectFailed(f"{what} ({exc.host}:{exc.port})", backend=backend, refused=refused) from exc
    except aiohttp.SocketTimeoutError as exc:
        raise GenerationTimeout(
            f"no data for {timeouts.read:g} s while waiting for the answer", backend=backend
        ) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise ConnectFailed("server closed the connection before answering", backend=backend) from exc
    except aiohttp.ClientPayloadError as exc:
        raise BadResponse("response body was cut off", backend=backend) from exc
    except aiohttp.ClientOSError as exc:
        raise ConnectFailed(f"connection reset ({exc.strerror or exc})", backend=backend) from exc
    except aiohttp.ClientResponseError as exc:
        # aiohttp raises this for an answer it cannot parse (status line, headers, too many
        # redirects): the provider is broken, whatever "status" aiohttp put on it
        first_line = error_text(str(exc.message).split("\n", 1)[0], 120)
        raise BadResponse(f"malformed answer: {first_line}", backend=backend) from exc
    except aiohttp.ClientError as exc:
        raise ConnectFailed(f"{type(exc).__name__}: {exc}", backend=backend) from exc
    except TimeoutError as exc:
        spent = "the request deadline" if deadline is not None else "the time budget"
        raise GenerationTimeout(f"{spent} ran out before the answer arrived", backend=backend) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise BadResponse(f"unexpected response: {type(exc).__name__}: {exc}", backend=backend) from exc


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds, from either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_for_status(
    status: int,
    message: str,
    *,
    backend: str,
    retry_after: float | None = None,
) -> BackendError:
    """The taxonomy's error for an HTTP status (providers refine this for their own codes)."""
    cls: type[BackendError]
    if status in (401, 403):
        cls = AuthFailed
    elif status == 402:
        cls = QuotaExhausted
    elif status == 429:
        cls = RateLimited
    elif status == 503:
        cls = Unavailable
    elif status in (408, 504):
        cls = GenerationTimeout
    elif status >= 500:
        cls = ServerError
    elif status >= 400:
        cls = Rejected
    else:
        cls = BadResponse
    return cls(message, backend=backend, status=status, retry_after=retry_after)


async def read_body(
    resp: aiohttp.ClientResponse, cap: int, *, backend: str, ok: Collection[int] = (200,)
) -> bytes:
    """The body of ``resp``, bounded: under ``cap`` when its status is one of ``ok`` (more is
    BadResponse), else its first ``ERROR_BODY_CAP`` bytes (the rest is never read)."""
    if resp.status in ok:
        return await read_capped(resp, cap, backend=backend)
    return await read_prefix(resp, ERROR_BODY_CAP)


async def read_capped(resp: aiohttp.ClientResponse, max_bytes: int, *, backend: str) -> bytes:
    """Read the whole body, refusing more than ``max_bytes`` (a provider sending 50 MB)."""
    length = resp.content_length
    if length is not None and length > max_bytes:
        raise BadResponse(
            f"response body of {length} bytes exceeds max_image_bytes={max_bytes}", backend=backend
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise BadResponse(f"response body exceeds max_image_bytes={max_bytes}", backend=backend)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_prefix(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The first ``max_bytes`` of the body and no more (an error body: only its message
    matters; the rest is left unread and the connection is not reused)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(min(max_bytes, 64 * 1024)):
        chunks.append(chunk[: max_bytes - size])
        size += len(chunks[-1])
        if size >= max_bytes:
            resp.close()
            break
    return b"".join(chunks)


def error_text(body: bytes | str, limit: int = 300) -> str:
    """A provider's error body as one short line for messages and attempt trails."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@lru_cache(maxsize=32)
def _ssl_context_cached(ca_bundle: str | None, env_bundle: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for bundle, what in ((env_bundle, "environment variable SSL_CERT_FILE"), (ca_bundle, "ca_bundle")):
        if bundle:
            check_pem(Path(bundle), what)  # one line naming it, not an SSLError traceback
            ctx.load_verify_locations(cafile=bundle)
    return ctx


def make_ssl_context(ca_bundle: Path | str | None) -> ssl.SSLContext:
    """System trust store + ``$SSL_CERT_FILE`` when set + the backend's own ``ca_bundle``."""
    return _ssl_context_cached(
        str(ca_bundle) if ca_bundle else None, os.environ.get("SSL_CERT_FILE") or None
    )


def timing_trace_config() -> aiohttp.TraceConfig:
    """A TraceConfig that records DNS, connect (TCP+TLS) and first-byte times into
    ``trace_request_ctx.timings`` when a caller passes one (see HttpBackend.request_kwargs)."""

    def _mark(key: str, since: str | None = None) -> Any:
        async def handler(session: Any, ctx: SimpleNamespace, params: Any) -> None:
            req = getattr(ctx, "trace_request_ctx", None)
            if req is None or not hasattr(req, "timings"):
                return
            now = time.monotonic()
            marks = ctx.__dict__.setdefault("_marks", {})
            marks[key] = now
            if since is not None and since in marks:
                req.timings[key] = round(now - marks[since], 6)

        return handler

    async def first_byte(session: Any, ctx: SimpleNamespace, params: Any) -> None:
        req = getattr(ctx, "trace_request_ctx", None)
        if req is not None and hasattr(req, "timings"):
            req.timings["first_byte_s"] = round(time.monotonic() - req.t0, 6)

    trace = aiohttp.TraceConfig()
    trace.on_dns_resolvehost_start.append(_mark("dns_start"))
    trace.on_dns_resolvehost_end.append(_mark("dns_s", since="dns_start"))
    trace.on_connection_create_start.append(_mark("connect_start"))
    trace.on_connection_create_end.append(_mark("connect_s", since="connect_start"))
    trace.on_request_end.append(first_byte)
    return trace


class _ConnectTrace:
    """What aiohttp's connector reports while it finds or opens one connection: it calls these
    as it calls a session's traces (the ``send_*`` methods of ``aiohttp.tracing.Trace``)."""

    def __init__(self) -> None:
        self.reused = False
        self.timings: dict[str, float] = {}
        self._marks: dict[str, float] = {}

    async def send_connection_reuseconn(self) -> None:
        self.reused = True

    async def send_dns_resolvehost_start(self, host: str) -> None:
        self._marks["dns"] = time.monotonic()

    async def send_dns_resolvehost_end(self, host: str) -> None:
        self._since("dns_s", "dns")

    async def send_connection_create_start(self) -> None:
        self._marks["connect"] = time.monotonic()

    async def send_connection_create_end(self) -> None:
        self._since("connect_s", "connect")

    def _since(self, key: str, mark: str) -> None:
        if mark in self._marks:
            self.timings[key] = round(time.monotonic() - self._marks[mark], 6)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("send_"):  # the other signals (queued, DNS cache) tell us nothing here
            return _ignore
        raise AttributeError(name)


async def _ignore(*args: Any) -> None:
    return None


async def warm_connection(
    session: aiohttp.ClientSession,
    url: str,
    *,
    ssl: ssl.SSLContext | bool,
    timeouts: Timeouts,
    deadline: Deadline,
    backend: str,
) -> ConnectInfo:
    """A ready keep-alive connection to ``url``'s origin from ``session``'s pool: TCP and TLS
    (with ``ssl``, the generation's own context, so the pool key is the generation's and its
    request takes this connection), under ``timeouts`` capped by ``deadline``; no HTTP request
    is sent. At once when such a connection is idle in the pool already. The connection is
    held for the caller until ``ConnectInfo.release()`` puts it (back) in the pool."""
    connector = session.connector
    if connector is None or session.closed:
        raise ConnectFailed("the HTTP session is closed", backend=backend)
    request = aiohttp.ClientRequest(
        "GET", URL(url), loop=asyncio.get_running_loop(), ssl=ssl, session=session
    )
    trace = _ConnectTrace()
    left = max(deadline.remaining(), 0.001)
    budget = aiohttp.ClientTimeout(
        connect=left, sock_connect=min(timeouts.connect, left), ceil_threshold=NO_CEIL_S
    )
    started = time.monotonic()
    with map_http_errors(backend, timeouts, deadline):
        try:
            connection = await connector.connect(request, cast(Any, [trace]), budget)
        except TimeoutError as exc:  # a session's request makes it this, so do we
            if deadline.expired:
                raise GenerationTimeout(
                    "the request deadline ran out while connecting", backend=backend
                ) from exc
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {url}") from exc
    # held until release(): put in the pool just before the generation is sent, whose request
    # then takes it (nothing runs in between), not another request that started meanwhile
    return ConnectInfo(round(time.monotonic() - started, 6), trace.reused, trace.timings, connection.release)
