"""The server's own URLs: the base of ``url`` answers, and the server's own origin.

``base_url(request, public_url)`` is ``public_url`` (``[service] public_url``, or
``IMAGEGATE_PUBLIC_URL``) when set: behind a proxy, or on any public deployment, set it, so
that no client chooses the host of the links others receive. Otherwise it is built from the
request's ``Host``, which must be a plain host name, IPv4 address or ``[IPv6]`` address with
an optional port in 1..65535; anything else is a 400 *before* a generation is paid for.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from aiohttp import web

from imagegate.server.errors import ApiError

__all__ = ["base_url", "checked_host", "own_origin"]

_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.?")


def checked_host(host: str | None) -> str | None:
    """``host`` (``name[:port]``) when it is a valid Host header value, else None (pure)."""
    if not host:
        return None
    name, port = host, ""
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
    elif ":" in host:
        name, _, port = host.rpartition(":")
        if not _NAME.fullmatch(name):
            return None
    elif not _NAME.fullmatch(name):
        return None
    if port and not (port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        return None
    if host.endswith(":"):
        return None
    return host


def base_url(request: web.Request, public_url: str | None) -> str:
    """Where this server's files are reached: ``public_url``, or ``scheme://Host``."""
    if public_url:
        return public_url
    host = checked_host(request.headers.get("Host"))
    if host is None:
        raise ApiError(
            400,
            "the Host header is missing or not a valid host[:port] "
            "(an operator can set [service] public_url instead)",
            code="invalid_host",
        )
    return f"{request.scheme}://{host}"


def own_origin(request: web.Request, public_url: str | None) -> str | None:
    """The origin a page served by this server itself would send (None: Host unusable)."""
    if public_url:
        parts = urlsplit(public_url)
        return f"{parts.scheme}://{parts.netloc}"
    host = checked_host(request.headers.get("Host"))
    return f"{request.scheme}://{host}" if host else None
