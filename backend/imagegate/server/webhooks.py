"""Job webhooks: the final job record POSTed to the job's ``webhook_url``, signed, retried.

- Only to hosts listed in ``[service] webhook_hosts`` (exact host names, compared
  case-insensitively; http or https): a caller cannot make the server call anything else
  (:func:`check_webhook_url`, at submit time, so a bad URL is a 400 naming ``webhook_url``).
- Signed with HMAC-SHA256 under the secret in the variable ``[service] webhook_secret_env``,
  Stripe-style, so that a receiver can check both origin and freshness::

      Imagegate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

  plus ``Imagegate-Job`` (the job id) and ``Imagegate-Delivery`` (one id per job, the same
  on every retry, to deduplicate). :func:`verify` is the receiver's side.
- Retried on a connection failure, a timeout, 408, 429 and 5xx, at most ``ATTEMPTS`` times,
  with full-jitter backoff from ``[service] webhook_backoff_s`` (doubling, capped at 60 s, at
  least a 429's ``Retry-After``); any other answer ends the delivery (2xx: delivered).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
import uuid
from urllib.parse import urlsplit

import aiohttp

from imagegate.errors import InvalidRequest
from imagegate.logging import get_logger

__all__ = ["ATTEMPTS", "Webhooks", "check_webhook_url", "sign", "verify"]

log = get_logger(__name__)

ATTEMPTS = 5
TIMEOUT_S = 10.0
_CAP_S = 60.0
_RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


def check_webhook_url(url: str, hosts: list[str]) -> str:
    """``url`` when it may be called, else InvalidRequest naming ``webhook_url``."""
    if not hosts:
        raise InvalidRequest(
            "webhook_url: webhooks are off on this server ([service] webhook_hosts is empty)",
            field="webhook_url",
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"webhook_url: must be an http(s) URL (got {url[:100]!r})", field="webhook_url")
    allowed = {h.lower() for h in hosts}
    if parts.hostname.lower() not in allowed:
        raise InvalidRequest(
            f"webhook_url: host {parts.hostname!r} is not one of [service] webhook_hosts "
            f"({', '.join(sorted(allowed))})",
            field="webhook_url",
        )
    return url


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Imagegate-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0) -> bool:
    """The receiver's check: the signature matches and is at most ``tolerance_s`` old."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    fresh = abs(time.time() - timestamp) <= tolerance_s
    return fresh and hmac.compare_digest(expected, fields.get("v1", ""))


class Webhooks:
    """Delivers webhooks in the background; ``aclose()`` stops the pending ones."""

    def __init__(
        self, session: aiohttp.ClientSession, secret: str, *, backoff_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self._session, self._secret, self._backoff = session, secret, backoff_s
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[bool]] = set()

    def send(self, url: str, job_id: str, body: bytes) -> asyncio.Task[bool]:
        """Start delivering ``body``; the task ends True once a 2xx answered."""
        task = asyncio.create_task(self._deliver(url, job_id, body), name=f"imagegate-webhook-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def _deliver(self, url: str, job_id: str, body: bytes) -> bool:
        delivery = uuid.uuid4().hex
        host = urlsplit(url).hostname
        for attempt in range(1, ATTEMPTS + 1):
            status, retry_after = await self._post(url, job_id, delivery, body)
            if status is not None and 200 <= status < 300:
                log.info("webhook_delivered", job=job_id, host=host, status=status, attempt=attempt)
                return True
            if status is not None and status not in _RETRY_STATUSES:
                log.warning("webhook_refused", job=job_id, host=host, status=status)
                return False
            if attempt < ATTEMPTS:
                cap = min(_CAP_S, self._backoff * 2 ** (attempt - 1))
                await asyncio.sleep(max(retry_after or 0.0, self._rng.uniform(0, cap)))
        log.warning("webhook_failed", job=job_id, host=host, attempts=ATTEMPTS)
        return False

    async def _post(
        self, url: str, job_id: str, delivery: str, body: bytes
    ) -> tuple[int | None, float | None]:
        headers = {
            "Content-Type": "application/json",
            "Imagegate-Signature": sign(self._secret, int(time.time()), body),
            "Imagegate-Job": job_id,
            "Imagegate-Delivery": delivery,
        }
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
                allow_redirects=False,
            ) as resp:
                await resp.read()
                return resp.status, _seconds(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("webhook_attempt_failed", job=job_id, error=type(exc).__name__)
            return None, None


def _seconds(value: str | None) -> float | None:
    try:
        return min(_CAP_S, max(0.0, float(value))) if value else None
    except ValueError:
        return None
