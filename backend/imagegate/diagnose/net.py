"""The network steps of a diagnosis, each timed and bounded on its own: DNS, TCP, TLS.

They talk to the socket layer directly (not through aiohttp) so that each stage is seen
separately: a TLS handshake that never completes is told apart from a port that refuses or
a name that does not resolve. The TLS handshake verifies with the backend's own trust
(system store + ``SSL_CERT_FILE`` + ``ca_bundle``, via :func:`make_ssl_context`).

Names under ``.invalid`` (RFC 6761 section 6.4) are answered "does not exist" here without a
lookup: glibc's resolver does send such a query to the configured DNS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from imagegate.diagnose.report import Step, StepLog

__all__ = ["Target", "connection_steps", "dns_step", "is_special_invalid", "tcp_step", "tls_step"]

CERT_WARN_DAYS = 14


@dataclass(frozen=True)
class Target:
    """Where a backend's connection goes: scheme, host, port (no path, no userinfo)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urlsplit(url)
        scheme = parts.scheme or "https"
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(scheme, parts.hostname or "", port)

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


def is_special_invalid(host: str) -> bool:
    """True for ``invalid`` and names under it, which never resolve (RFC 6761 6.4)."""
    name = host.rstrip(".").lower()
    return name == "invalid" or name.endswith(".invalid")


def _since(start: float) -> float:
    return time.monotonic() - start


async def dns_step(host: str, port: int, timeout: float) -> tuple[Step, list[str]]:
    """Resolve ``host``; the step and the addresses found (in the resolver's order)."""
    start = time.monotonic()
    data: dict[str, Any] = {"host": host, "addresses": []}
    if is_special_invalid(host):
        data["special_use"] = True
        detail = f"{host} is under .invalid, which never resolves (RFC 6761); not looked up"
        return Step("dns", "fail", _since(start), detail, "dns_failed", data), []
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        data["addresses"] = [host]
        return Step("dns", "ok", _since(start), f"{host} is an IP address: no lookup", data=data), [host]
    try:
        async with asyncio.timeout(timeout):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        return Step("dns", "fail", _since(start), f"no answer within {timeout:g} s", "dns_timeout", data), []
    except (OSError, UnicodeError) as exc:
        data["error"] = getattr(exc, "strerror", None) or str(exc)
        return Step("dns", "fail", _since(start), f"{host}: {data['error']}", "dns_failed", data), []
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    data["addresses"] = addresses
    shown = ", ".join(addresses[:4]) + (", ..." if len(addresses) > 4 else "")
    n = len(addresses)
    return Step("dns", "ok", _since(start), f"{n} address{'es' if n != 1 else ''}: {shown}", data=data), addresses


async def tcp_step(
    host: str, port: int, addresses: list[str], timeout: float
) -> tuple[Step, asyncio.StreamWriter | None]:
    """Connect to the first address that accepts, within ``timeout`` for all of them."""
    start = time.monotonic()
    data: dict[str, Any] = {"host": host, "port": port}
    errors: list[OSError] = []
    try:
        async with asyncio.timeout(timeout):
            for address in addresses:
                try:
                    _, writer = await asyncio.open_connection(address, port)
                except OSError as exc:
                    errors.append(exc)
                    continue
                data["address"] = address
                return Step("tcp", "ok", _since(start), f"connected to {address} port {port}", data=data), writer
    except TimeoutError:
        detail = f"no connection within {timeout:g} s"
        return Step("tcp", "fail", _since(start), detail, "tcp_timeout", data), None
    if errors and all(isinstance(e, ConnectionRefusedError) for e in errors):
        return Step("tcp", "fail", _since(start), f"connection refused ({host}:{port})", "tcp_refused", data), None
    data["error"] = errors[-1].strerror or str(errors[-1]) if errors else "no address"
    return Step("tcp", "fail", _since(start), f"cannot connect: {data['error']}", "tcp_failed", data), None


async def tls_step(
    host: str, writer: asyncio.StreamWriter, context: ssl.SSLContext, timeout: float
) -> Step:
    """The TLS handshake on the connected ``writer``, verified with ``context``."""
    start = time.monotonic()
    data: dict[str, Any] = {"host": host}
    try:
        async with asyncio.timeout(timeout):
            await writer.start_tls(context, server_hostname=host, ssl_handshake_timeout=timeout + 5)
    except TimeoutError:
        detail = f"TCP connected, but no TLS handshake within {timeout:g} s"
        return Step("tls", "fail", _since(start), detail, "tls_timeout", data)
    except ssl.SSLCertVerificationError as exc:
        elapsed = _since(start)
        data.update(verified=False, error=exc.verify_message or str(exc))
        peer = writer.get_extra_info("peername")
        if peer:
            data.update(await _unverified_cert_facts(peer[0], peer[1], host, timeout))
        issuer = f" (issuer: {data['issuer']})" if data.get("issuer") else ""
        return Step("tls", "fail", elapsed, f"certificate not trusted: {data['error']}{issuer}", "tls_untrusted", data)
    except (ssl.SSLError, OSError) as exc:
        data["error"] = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        return Step("tls", "fail", _since(start), f"handshake failed: {data['error']}", "tls_failed", data)
    elapsed = _since(start)
    data.update(cert_facts(writer.get_extra_info("ssl_object")), verified=True)
    detail = f"{data.get('protocol')}, certificate verified, {data.get('subject')}, expires {data.get('not_after')}"
    days = data.get("days_left")
    if isinstance(days, int) and days < CERT_WARN_DAYS:
        return Step("tls", "warn", elapsed, detail + f" (in {days} days)", "cert_expiring", data)
    return Step("tls", "ok", elapsed, detail, data=data)


def cert_facts(ssl_object: Any) -> dict[str, Any]:
    """Protocol, cipher, and the peer certificate's subject, issuer and expiry."""
    if ssl_object is None:
        return {}
    facts: dict[str, Any] = {"protocol": ssl_object.version()}
    cipher = ssl_object.cipher()
    if cipher:
        facts["cipher"] = cipher[0]
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return facts
    from cryptography import x509  # a dependency of trustme, which imagegate requires

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return facts
    not_after = cert.not_valid_after_utc
    facts.update(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_after=not_after.date().isoformat(),
        days_left=(not_after - dt.datetime.now(dt.UTC)).days,
    )
    return facts


async def _unverified_cert_facts(address: str, port: int, host: str, timeout: float) -> dict[str, Any]:
    """The certificate a server shows when not verified (who intercepts TLS?); best effort."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout), _open(address, port, context, host) as writer:
            facts = cert_facts(writer.get_extra_info("ssl_object"))
    except (OSError, TimeoutError, ssl.SSLError):
        return {}
    return {k: v for k, v in facts.items() if k in ("protocol", "subject", "issuer", "not_after", "days_left")}


@contextlib.asynccontextmanager
async def _open(address: str, port: int, context: ssl.SSLContext, host: str) -> AsyncIterator[asyncio.StreamWriter]:
    _, writer = await asyncio.open_connection(address, port, ssl=context, server_hostname=host)
    try:
        yield writer
    finally:
        await close_writer(writer)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close at once, without waiting on a peer that never answers (after a failed TLS
    handshake the stream's own "closed" signal never comes)."""
    writer.transport.abort()
    await asyncio.sleep(0)  # let the transport call connection_lost


async def connection_steps(
    log: StepLog, target: Target, context: ssl.SSLContext, timeout: float
) -> bool:
    """DNS, TCP and (for https) TLS into ``log``; True when the target is reachable."""
    step, addresses = await dns_step(target.host, target.port, timeout)
    if not log.add(step):
        log.skip(("tcp", "tls"), "dns failed")
        return False
    step, writer = await tcp_step(target.host, target.port, addresses, timeout)
    if not log.add(step) or writer is None:
        log.skip(("tls",), "tcp failed")
        return False
    try:
        if not target.tls:
            return log.add(Step("tls", "skip", detail=f"plain {target.scheme}: no TLS"))
        return log.add(await tls_step(target.host, writer, context, timeout))
    finally:
        await close_writer(writer)
