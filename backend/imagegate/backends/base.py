"""The backend contract, and the HTTP/TLS/timing helpers every HTTP backend shares.

A backend is one small class: ``generate(request, deadline=...)`` makes one provider call and
raises only ``imagegate.errors`` types; ``probe()`` is a cheap health check that spends no
credits; ``aclose()`` releases what the backend owns. Foreign exceptions are translated once,
in :func:`map_http_errors`.
"""

from __future__ import annotations

import abc
import contextlib
import email.utils
import io
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import aiohttp
import structlog
from PIL import Image

from imagegate.config import Timeouts
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
from imagegate.models import BackendHealth, GeneratedImage, ImageFormat, ImageRequest

__all__ = [
    "Deadline",
    "HttpBackend",
    "ImageBackend",
    "check_image",
    "client_timeout",
    "error_for_status",
    "make_ssl_context",
    "map_http_errors",
    "parse_retry_after",
    "read_capped",
    "timing_trace_config",
]

log = structlog.get_logger()

# Pillow refuses images above this many pixels (a decompression bomb), as bad_response.
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock by which the whole request must be done."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at


class ImageBackend(abc.ABC):
    """One provider behind the common contract."""

    kind: ClassVar[str]

    def __init__(self, settings: Any, *, secrets: Mapping[str, str]) -> None:
        self.settings = settings
        self._secrets = dict(secrets)

    @property
    def name(self) -> str:
        return str(self.settings.name)

    @property
    def timeouts(self) -> Timeouts:
        return self.settings.timeouts  # type: ignore[no-any-return]

    @abc.abstractmethod
    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        """One provider call; raises only imagegate.errors types."""

    async def probe(self, *, timeout: float = 5.0) -> BackendHealth:
        """Run the cheap health check and report it; never raises for a backend failure."""
        timings: dict[str, float] = {}
        start = time.monotonic()
        try:
            detail = await self._probe(Deadline.after(timeout), timings)
        except BackendError as exc:
            timings.setdefault("total_s", time.monotonic() - start)
            return BackendHealth(
                name=self.name,
                kind=self.kind,
                ok=False,
                last_probe_at=time.time(),
                last_error_kind=exc.kind,
                last_error=str(exc),
                timings=timings,
            )
        timings.setdefault("total_s", time.monotonic() - start)
        return BackendHealth(
            name=self.name,
            kind=self.kind,
            ok=True,
            last_probe_at=time.time(),
            detail=detail,
            timings=timings,
        )

    @abc.abstractmethod
    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        """The provider-specific check: return a short detail, raise a BackendError on failure."""

    async def aclose(self) -> None:
        """Release what this backend owns (the shared HTTP session is not its own)."""


class HttpBackend(ImageBackend):
    """A backend that talks HTTP through the service's shared aiohttp session."""

    def __init__(
        self, settings: Any, *, secrets: Mapping[str, str], session: aiohttp.ClientSession
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
        self, deadline: Deadline, timings: dict[str, float] | None = None, *, read: float | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for one session call: timeout, TLS context, timing trace."""
        timeouts = self.timeouts if read is None else Timeouts(connect=self.timeouts.connect, read=read)
        kwargs: dict[str, Any] = {"timeout": client_timeout(timeouts, deadline)}
        if self.base_url.startswith("https:"):
            kwargs["ssl"] = self._ssl
        if timings is not None:
            kwargs["trace_request_ctx"] = SimpleNamespace(timings=timings, t0=time.monotonic())
        return kwargs

    def map_errors(self, deadline: Deadline | None = None) -> contextlib.AbstractContextManager[None]:
        return map_http_errors(self.name, self.timeouts, deadline)


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


def error_text(body: bytes | str, limit: int = 300) -> str:
    """A provider's error body as one short line for messages and attempt trails."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_MAGIC: tuple[tuple[bytes, ImageFormat], ...] = (
    (b"\x89PNG\r\n\x1a\n", ImageFormat.PNG),
    (b"\xff\xd8\xff", ImageFormat.JPEG),
)


def sniff_format(data: bytes) -> ImageFormat | None:
    """The image format from magic bytes (never trust a Content-Type)."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageFormat.WEBP
    return None


def check_image(
    data: bytes, *, backend: str, seed: int | None = None, info: dict[str, Any] | None = None
) -> GeneratedImage:
    """Verify ``data`` is a PNG/JPEG/WebP Pillow can read, and describe it.

    Reads the header and verifies the stream (CRCs for PNG) without a full pixel decode;
    refuses decompression bombs (more than MAX_IMAGE_PIXELS) as bad_response.
    """
    fmt = sniff_format(data)
    if fmt is None:
        head = error_text(data[:60]) if data else "empty body"
        raise BadResponse(f"response is not a PNG, JPEG or WebP image ({head})", backend=backend)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise BadResponse(
                    f"image of {width}x{height} pixels exceeds the decompression-bomb limit",
                    backend=backend,
                )
            img.verify()
    except BackendError:
        raise
    except Exception as exc:  # Pillow raises many types for a corrupt stream
        raise BadResponse(f"image does not decode: {type(exc).__name__}: {exc}", backend=backend) from exc
    return GeneratedImage(data=data, format=fmt, width=width, height=height, seed=seed, info=info or {})


@lru_cache(maxsize=32)
def _ssl_context_cached(ca_bundle: str | None, env_bundle: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for bundle in (env_bundle, ca_bundle):
        if bundle:
            ctx.load_verify_locations(cafile=bundle)
    return ctx


def make_ssl_context(ca_bundle: Path | str | None) -> ssl.SSLContext:
    """System trust store + ``$SSL_CERT_FILE`` when set + the backend's own ``ca_bundle``."""
    import os

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
