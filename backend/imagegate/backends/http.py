"""The HTTP machinery every HTTP backend shares: one exchange, one polling loop, one error map.

- :meth:`HttpBackend.send` is one HTTP exchange: the deadline-capped timeouts, the TLS
  context, the timing trace, foreign errors translated (:func:`map_http_errors`), the body
  read under a cap (a success under the caller's cap; an error body up to
  ``ERROR_BODY_CAP``, enough for a message), secrets masked in error bodies, and a non-OK
  status turned into the taxonomy by :meth:`HttpBackend.error_for` (which a provider
  overrides to read its own error shape).
- :meth:`HttpBackend.poll` runs an async job to its end within the deadline, polling
  through transient failures.
- :func:`timing_trace_config` records DNS, connect (TCP + TLS) and first-byte times.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import structlog

from imagegate.backends.base import ImageBackend
from imagegate.config import HttpBackendSettings, Timeouts
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
    "Answer",
    "Failed",
    "HttpBackend",
    "HttpSettingsT",
    "Pending",
    "client_timeout",
    "error_for_status",
    "error_text",
    "gather_all",
    "make_ssl_context",
    "map_http_errors",
    "parse_retry_after",
    "read_capped",
    "read_prefix",
    "timing_trace_config",
]

log = structlog.get_logger()

ERROR_BODY_CAP = 64 * 1024  # an error body is read this far: enough for any message
T = TypeVar("T")
HttpSettingsT = TypeVar("HttpSettingsT", bound=HttpBackendSettings)


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, read whole under a cap."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self, *, backend: str) -> Any:
        """The body as JSON; BadResponse when it is not."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise BadResponse(f"unexpected response: {type(exc).__name__}: {exc}", backend=backend) from exc


@dataclass(frozen=True)
class Pending:
    """What a poll says while the job still runs: its state, for the time-out message."""

    state: str


@dataclass(frozen=True)
class Failed:
    """What a poll says when the job itself failed: the error that ends the attempt (never
    polled through, whatever its kind: the provider gave its verdict)."""

    error: BackendError


class HttpBackend(ImageBackend[HttpSettingsT]):
    """A backend that talks HTTP through the service's shared aiohttp session."""

    def __init__(
        self, settings: HttpSettingsT, *, secrets: Mapping[str, str], session: aiohttp.ClientSession
    ) -> None:
        super().__init__(settings, secrets=secrets)
        self._session = session
        self._ssl = make_ssl_context(settings.ca_bundle)
        self.base_url: str = settings.base_url
        key = self._secrets.get("api_key")
        # Bearer auth for the key-based providers; empty when no key is configured.
        self._headers: dict[str, str] = {"Authorization": f"Bearer {key}"} if key else {}

    def __repr__(self) -> str:
        # Readable in logs and trails, and never more than name and URL (no secret).
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    def redact(self, body: bytes) -> bytes:
        """``body`` with every copy of a secret masked (a provider may echo what it was sent)."""
        for secret in self._secrets.values():
            if secret:
                body = body.replace(secret.encode(), b"***")
        return body

    def request_kwargs(
        self,
        deadline: Deadline,
        timings: dict[str, float] | None = None,
        *,
        read: float | None = None,
        url: str | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for one session call to ``url`` (default: ``base_url``): the
        timeout, the TLS context for https, the timing trace."""
        timeouts = self.timeouts if read is None else Timeouts(connect=self.timeouts.connect, read=read)
        kwargs: dict[str, Any] = {"timeout": client_timeout(timeouts, deadline)}
        if (url or self.base_url).startswith("https:"):
            kwargs["ssl"] = self._ssl
        if timings is not None:
            kwargs["trace_request_ctx"] = SimpleNamespace(timings=timings, t0=time.monotonic())
        return kwargs

    def map_errors(self, deadline: Deadline | None = None) -> contextlib.AbstractContextManager[None]:
        return map_http_errors(self.name, self.timeouts, deadline)

    async def send(
        self,
        method: str,
        url: str,
        *,
        deadline: Deadline,
        cap: int,
        ok: Collection[int] = (200,),
        auth: bool = True,
        headers: Mapping[str, str] | None = None,
        timings: dict[str, float] | None = None,
        read: float | None = None,
        errors: Callable[[Answer], BackendError] | None = None,
        **kwargs: Any,
    ) -> Answer:
        """One HTTP exchange (see the module docstring). ``auth=False`` sends no credentials
        (a presigned download URL on another host); ``errors`` reads a non-OK answer instead
        of :meth:`error_for` (a route whose errors look different); ``kwargs`` go to aiohttp
        (json, data, params)."""
        sent = {**(self._headers if auth else {}), **(headers or {})}
        options = self.request_kwargs(deadline, timings, read=read, url=url)
        with self.map_errors(deadline):
            async with self._session.request(method, url, headers=sent, **options, **kwargs) as resp:
                if resp.status in ok:
                    body = await read_capped(resp, cap, backend=self.name)
                else:
                    body = self.redact(await read_prefix(resp, ERROR_BODY_CAP))
                answer = Answer(resp.status, resp.headers, body)
        if answer.status not in ok:
            raise (errors or self.error_for)(answer)
        return answer

    def error_for(self, answer: Answer) -> BackendError:
        """The taxonomy's error for a non-OK answer; providers override to read their shape."""
        return error_for_status(
            answer.status,
            error_text(answer.body),
            backend=self.name,
            retry_after=parse_retry_after(answer.headers.get("Retry-After")),
        )

    async def poll(
        self,
        check: Callable[[], Awaitable[T | Pending | Failed]],
        *,
        deadline: Deadline,
        interval: float,
        what: str,
    ) -> T:
        """Call ``check`` every ``interval`` s until it returns a result (not a Pending); a
        Failed ends the attempt with its error.

        A transient failure of one poll (5xx, 429, connection trouble) is polled through at
        the next interval, never sooner than its Retry-After: the paid job still runs. Any
        other failure ends the job. Once ``deadline`` passes it is GenerationTimeout naming
        ``what``, its last state and the last poll's error. Sleeps inline, so a cancelled
        caller leaves nothing polling.
        """
        state, last_error = "not polled yet", None
        while True:
            pause = interval
            try:
                result = await check()
                last_error = None
            except BackendError as exc:
                if not exc.transient or deadline.expired:
                    if not exc.transient:
                        raise
                    break
                last_error, pause = exc, max(interval, exc.retry_after or 0.0)
                log.info("poll_failed", backend=self.name, job=what, error_kind=exc.kind)
            else:
                if isinstance(result, Failed):
                    raise result.error
                if not isinstance(result, Pending):
                    return result
                state = result.state
            left = deadline.remaining()
            if left <= 0:
                break
            await asyncio.sleep(min(pause, left))
            if deadline.expired:
                break
        after = f" (last poll: {last_error.kind}: {last_error})" if last_error else ""
        raise GenerationTimeout(
            f"{what} still {state} when the time budget ran out{after}", backend=self.name
        )


async def gather_all(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Run ``calls`` at once and return their results in order; the first failure cancels
    the others (no task outlives the caller) and is raised as itself, not as a group."""
    coros = list(calls)
    if len(coros) == 1:
        return [await coros[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(c)) for c in coros]
    except BaseExceptionGroup as errors:
        raise _first_backend_error(errors) from None
    return [task.result() for task in tasks]


async def _awaited(call: Awaitable[T]) -> T:
    return await call


def _first_backend_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first BackendError in a (nested) exception group, else the group itself."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first_backend_error(exc)
        if isinstance(exc, BackendError):
            return exc
    return group


def client_timeout(timeouts: Timeouts, deadline: Deadline | None) -> aiohttp.ClientTimeout:
    """Our timeouts as aiohttp's, capped by what is left of the deadline; never 'no timeout'."""
    left = deadline.remaining() if deadline else timeouts.connect + timeouts.read
    left = max(left, 0.001)
    return aiohttp.ClientTimeout(
        total=left,
        sock_connect=min(timeouts.connect, left),
        sock_read=min(timeouts.read, left),
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
        raise error_for_status(exc.status, exc.message, backend=backend) from exc
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
    for bundle in (env_bundle, ca_bundle):
        if bundle:
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
