"""The failure taxonomy: what every backend raises and what the router decides on.

The router decides by *type* (and the class attributes below), never by message.

    ImageGateError                    base of everything imagegate raises
    ├── InvalidRequest (ValueError)   our own validation failed; nothing was sent
    ├── ConfigError                   the configuration cannot be used
    ├── AllBackendsFailed             every candidate failed; carries the attempt trail
    └── BackendError                  one provider call failed
        ├── HandshakeTimeout (TimeoutError)    TCP open, TLS/HTTP handshake never completed
        ├── ConnectFailed (ConnectionError)    refused, DNS failure, reset before a response
        ├── GenerationTimeout (TimeoutError)   the answer did not finish within the read budget
        ├── RateLimited                        429; carries retry_after
        ├── Unavailable                        503, model loading, Space sleeping/building
        ├── ServerError                        5xx or the provider's app raised
        ├── BadResponse                        unparseable body, bytes that are no image
        ├── AuthFailed                         401/403: the key was refused
        ├── QuotaExhausted                     402: no credit left
        ├── Rejected                           400/404/422: the provider refuses these parameters
        └── ContentFiltered                    the provider's safety filter stopped the image

Every class has a stable snake_case ``kind`` that appears in attempt trails, logs and JSON.
``health`` says what a failure does to the backend's circuit breaker:

- ``trip``: open the breaker at once (the next caller would pay the same wait);
- ``count``: one more consecutive failure towards the threshold;
- ``cooldown``: skip the backend for ``retry_after`` seconds, no breaker count;
- ``disable``: skip the backend until a probe succeeds;
- ``none``: the backend is healthy; only this request was refused.

``transient`` says whether the same call may succeed if made again later (the provider did
not say no: it was slow, busy, down or broken for a while); a polling loop polls through a
transient error, and nothing retries a non-transient one. ``retry_hint`` is narrower: the
seconds after which asking the *same* backend again at once is worth it (a refused
connection: the server is restarting; a 429 that said when), else None.
"""

from __future__ import annotations

import argparse
import errno
import socket
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from imagegate.models import Attempt

HealthEffect = Literal["trip", "count", "cooldown", "disable", "none"]
ErrorKind = Literal[
    "handshake_timeout",
    "connect_failed",
    "generation_timeout",
    "rate_limited",
    "unavailable",
    "server_error",
    "bad_response",
    "auth_failed",
    "quota_exhausted",
    "rejected",
    "content_filtered",
]
"""The ``kind`` of every BackendError subclass, in the order of the tree above."""

__all__ = [
    "AllBackendsFailed",
    "AuthFailed",
    "BackendError",
    "BadResponse",
    "ConfigError",
    "ConnectFailed",
    "ContentFiltered",
    "ErrorKind",
    "GenerationTimeout",
    "HandshakeTimeout",
    "HealthEffect",
    "ImageGateError",
    "InvalidRequest",
    "QuotaExhausted",
    "RateLimited",
    "Rejected",
    "ServerError",
    "Unavailable",
    "error_class_for_kind",
    "listen_failed",
    "port_number",
]


class ImageGateError(Exception):
    """Base class of every error imagegate raises."""

    kind: ClassVar[str] = "error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message or self.kind


class InvalidRequest(ImageGateError, ValueError):
    """The request failed our own validation; nothing was sent anywhere."""

    kind = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConfigError(ImageGateError):
    """The configuration (file, environment) cannot be used; names the file, table and key."""

    kind = "config_error"


def port_number(text: str) -> int:
    """``--port`` of a server (``imagegate serve``, the emulators): 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 65535 (got {text!r})") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535 (got {port})")
    return port


def listen_failed(exc: OSError, host: str, port: int) -> ConfigError:
    """A server that cannot listen on ``host:port``, as one line saying what to do."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        why = f"port {port} is already in use on {host}: stop what uses it, or pick another --port"
    elif exc.errno == errno.EACCES:
        why = f"no permission to listen on port {port}: pick a port above 1023 with --port"
    elif exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
        why = f"cannot listen on {host!r}: not an address of this machine (see --host)"
    else:
        why = f"cannot listen on {where}: {exc.strerror or exc}"
    return ConfigError(why)


class BackendError(ImageGateError):
    """One provider call failed."""

    kind: ClassVar[ErrorKind]
    health: ClassVar[HealthEffect] = "count"
    failover: ClassVar[bool] = True
    transient: ClassVar[bool] = True

    def __init__(
        self,
        message: str = "",
        *,
        backend: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.backend = backend
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        text = self.message or self.kind
        if self.status is not None and f"{self.status}" not in text:
            text = f"HTTP {self.status}: {text}"
        return text

    @property
    def retry_hint(self) -> float | None:
        """Seconds after which the same backend is worth asking again at once, or None."""
        return None


class HandshakeTimeout(BackendError, TimeoutError):
    """The TCP connection opened but the TLS/HTTP handshake never completed in time."""

    kind = "handshake_timeout"
    health = "trip"


class ConnectFailed(BackendError, ConnectionError):
    """Connection refused, DNS failure, or reset before any response arrived."""

    kind = "connect_failed"
    health = "trip"

    def __init__(self, message: str = "", *, refused: bool = False, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.refused = refused

    @property
    def retry_hint(self) -> float | None:
        """A refused connection (the server is restarting) is worth a prompt retry."""
        return 0.0 if self.refused else None


class GenerationTimeout(BackendError, TimeoutError):
    """The response did not finish within the read budget or the deadline."""

    kind = "generation_timeout"


class RateLimited(BackendError):
    """HTTP 429 or a full queue; carries retry_after in seconds when the provider said."""

    kind = "rate_limited"
    health = "cooldown"

    @property
    def retry_hint(self) -> float | None:
        """The provider's own Retry-After, when it gave one."""
        return self.retry_after


class Unavailable(BackendError):
    """503, a model still loading, a Space sleeping, building or broken."""

    kind = "unavailable"
    health = "cooldown"


class ServerError(BackendError):
    """HTTP 5xx, or the provider's application raised."""

    kind = "server_error"


class BadResponse(BackendError):
    """The body could not be parsed, or its bytes are not a valid image."""

    kind = "bad_response"
    transient = False


class AuthFailed(BackendError):
    """HTTP 401/403: the credentials were refused."""

    kind = "auth_failed"
    health = "disable"
    transient = False


class QuotaExhausted(BackendError):
    """HTTP 402 or a quota message: no credit left on this account."""

    kind = "quota_exhausted"
    health = "disable"
    transient = False


class Rejected(BackendError):
    """HTTP 400/404/422: the provider refuses these parameters (the backend is fine)."""

    kind = "rejected"
    health = "none"
    transient = False


class ContentFiltered(BackendError):
    """The provider's safety filter blocked or blurred the image."""

    kind = "content_filtered"
    health = "none"
    transient = False


class AllBackendsFailed(ImageGateError):
    """Every candidate failed or was skipped; ``attempts`` holds the whole trail."""

    kind = "all_backends_failed"

    def __init__(
        self, message: str, *, attempts: list[Attempt], deadline_exceeded: bool = False
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.deadline_exceeded = deadline_exceeded

    def __str__(self) -> str:
        trail = "; ".join(
            f"{a.backend}: {a.outcome}" + (f" ({a.error})" if a.error else "")
            for a in self.attempts
        )
        return f"{self.message} [{trail}]" if trail else self.message


_BACKEND_ERRORS: tuple[type[BackendError], ...] = (
    HandshakeTimeout,
    ConnectFailed,
    GenerationTimeout,
    RateLimited,
    Unavailable,
    ServerError,
    BadResponse,
    AuthFailed,
    QuotaExhausted,
    Rejected,
    ContentFiltered,
)


def error_class_for_kind(kind: str) -> type[BackendError]:
    """The BackendError subclass whose ``kind`` is ``kind`` (used by emulators and tests)."""
    for cls in _BACKEND_ERRORS:
        if cls.kind == kind:
            return cls
    raise KeyError(kind)
