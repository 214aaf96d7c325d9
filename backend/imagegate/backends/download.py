"""Fetching an image from a URL a provider handed us, without letting the provider aim us.

A provider's answer may name a URL to fetch (OpenAI-style ``url``, Novita's presigned
``image_url``, a Gradio FileData). Left alone, that is a server-side request forgery: the
provider picks the host, we connect from inside the operator's network. The policy:

- only ``http`` and ``https``; no user:password in the URL;
- *trusted* when the URL has the same origin (scheme, host, port) as the backend's own
  ``base_url``, or its host (``host`` or ``host:port``, ``*.example.com`` for subdomains)
  is in the backend's ``download_hosts``: fetched like the backend's own calls;
- anything else is *public only*: fetched through a session whose resolver drops every
  address that is not globally routable (loopback, private, link-local, multicast, reserved,
  unspecified, IPv4-mapped forms of these) and refuses a host left with none. The check runs
  on the addresses the connection is then made to, so a name that resolves differently the
  second time (DNS rebinding) gains nothing. An IP literal is judged before any connection;
- redirects are followed here, at most ``MAX_REDIRECTS``, each hop judged again (a trusted
  origin may not redirect into the private network either);
- credentials (``auth_headers``) go only to a hop with the backend's own origin;
- the body of a refused or failed download is never read, so none of it can reach an error
  message; a success is read under the caller's cap.

Each backend fetches at most ``MAX_DOWNLOADS`` URLs of one request at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from imagegate.backends.transport import (
    client_timeout,
    error_for_status,
    map_http_errors,
    read_capped,
)
from imagegate.config import Timeouts
from imagegate.errors import BackendError, BadResponse, ConnectFailed
from imagegate.models import Deadline

__all__ = [
    "MAX_DOWNLOADS",
    "MAX_REDIRECTS",
    "DownloadPolicy",
    "DownloadRefused",
    "Downloader",
    "PublicOnlyResolver",
    "is_public_address",
    "same_origin",
]

MAX_DOWNLOADS = 4  # URLs of one request fetched at once
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_DEFAULT_PORTS = {"http": 80, "https": 443}
Trust = Literal["trusted", "public"]


class DownloadRefused(OSError):
    """A URL the download policy does not fetch (raised inside the resolver as an OSError,
    so that aiohttp hands it back unchanged as the cause of its connector error)."""


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


def same_origin(a: str, b: str) -> bool:
    return origin(a) == origin(b)


def is_public_address(address: str) -> bool:
    """Whether ``address`` is globally routable unicast (not loopback, private, link-local,
    multicast, reserved, unspecified; an IPv4-mapped or 6to4 address is judged as its IPv4)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


def _host_matches(pattern: str, host: str, port: int | None) -> bool:
    name, _, want_port = pattern.lower().rpartition(":") if _has_port(pattern) else (pattern.lower(), "", "")
    if want_port and port != int(want_port):
        return False
    name = name.strip("[]")
    if name.startswith("*."):
        return host.endswith(name[1:])
    return host == name


def _has_port(pattern: str) -> bool:
    head, sep, tail = pattern.rpartition(":")
    return bool(sep) and tail.isdigit() and (not head.count(":") or head.endswith("]"))


@dataclass(frozen=True)
class DownloadPolicy:
    """Where one backend may fetch images from (pure: no I/O)."""

    base_url: str
    hosts: Sequence[str] = ()

    def judge(self, url: str, *, backend: str) -> Trust:
        """``trusted`` or ``public`` (see the module docstring); BadResponse when refused."""
        parts = urlsplit(url)
        scheme, host, port = origin(url)
        if scheme not in _DEFAULT_PORTS or not host:
            raise BadResponse(f"image URL refused: not an http(s) URL ({scheme or 'no'} scheme)", backend=backend)
        if parts.username or parts.password:
            raise BadResponse("image URL refused: it carries a user name or password", backend=backend)
        if port is None:
            raise BadResponse("image URL refused: its port is not a number in 1..65535", backend=backend)
        if same_origin(url, self.base_url) or any(_host_matches(p, host, port) for p in self.hosts):
            return "trusted"
        try:
            ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        except ValueError:
            return "public"  # a name: judged on the addresses it resolves to, at connect time
        if not is_public_address(host.strip("[]")):
            raise BadResponse(
                f"image URL refused: {host} is not a public address (same origin as base_url, "
                "or listed in download_hosts, is required for that)",
                backend=backend,
            )
        return "public"


class PublicOnlyResolver(AbstractResolver):
    """The system resolver, keeping only public addresses (DownloadRefused when none is)."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [entry for entry in found if is_public_address(entry["host"])]
        if not public:
            raise DownloadRefused(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


@dataclass
class Downloader:
    """One backend's image downloads: the policy, its two sessions, caps and timeouts."""

    backend: str
    policy: DownloadPolicy
    trusted: aiohttp.ClientSession
    timeouts: Timeouts
    ssl: Any = None
    _public: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    async def fetch(
        self, url: str, deadline: Deadline, *, cap: int,
        auth_headers: Mapping[str, str] | None = None, cookies: Mapping[str, str] | None = None,
    ) -> bytes:
        """The bytes at ``url`` (following redirects, each judged), at most ``cap`` of them."""
        for _ in range(MAX_REDIRECTS + 1):
            trust = self.policy.judge(url, backend=self.backend)
            own = same_origin(url, self.policy.base_url)
            session = self.trusted if trust == "trusted" else self._public_session()
            kwargs: dict[str, Any] = {
                "timeout": client_timeout(self.timeouts, deadline), "allow_redirects": False,
                "headers": dict(auth_headers or {}) if own else {},
            }
            if own and cookies:
                kwargs["cookies"] = dict(cookies)
            if url.startswith("https:") and self.ssl is not None:
                kwargs["ssl"] = self.ssl
            with _mapped(self.backend, self.timeouts, deadline):
                async with session.get(url, **kwargs) as resp:
                    location = resp.headers.get("Location")
                    if resp.status in _REDIRECTS and location:
                        url = urljoin(url, location)
                        continue
                    if resp.status != 200:
                        raise _download_error(resp.status, self.backend)
                    return await read_capped(resp, cap, backend=self.backend)
        raise BadResponse(f"image URL redirected more than {MAX_REDIRECTS} times", backend=self.backend)

    def _public_session(self) -> aiohttp.ClientSession:
        if self._public is None or self._public.closed:
            connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver(), limit=64, ttl_dns_cache=10)
            self._public = aiohttp.ClientSession(connector=connector)
        return self._public

    async def aclose(self) -> None:
        if self._public is not None:
            await self._public.close()
            self._public = None


def _download_error(status: int, backend: str) -> BackendError:
    """The error for a download answered ``status`` (its body unread: it may be anything)."""
    if status in (401, 403, 404, 410):
        return BadResponse(
            f"image URL answered HTTP {status} (expired, gone or refused)", backend=backend, status=status
        )
    error = error_for_status(status, f"image URL answered HTTP {status}", backend=backend)
    return error if error.kind != "rejected" else BadResponse(error.message, backend=backend, status=status)


@contextlib.contextmanager
def _mapped(backend: str, timeouts: Timeouts, deadline: Deadline) -> Iterator[None]:
    """``map_http_errors``, a resolver's DownloadRefused reported as a refused URL."""
    try:
        with map_http_errors(backend, timeouts, deadline):
            yield
    except ConnectFailed as exc:
        refused = getattr(exc.__cause__, "os_error", None)
        if not isinstance(refused, DownloadRefused):
            raise
        raise BadResponse(
            f"image URL refused: {refused} (same origin as base_url, or listed in "
            "download_hosts, is required for a private address)",
            backend=backend,
        ) from exc
