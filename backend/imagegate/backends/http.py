"""The HTTP machinery every HTTP backend shares: one exchange, one polling loop.

- :meth:`HttpBackend.send` is one HTTP exchange: the deadline-capped timeouts, the TLS
  context, the timing trace, foreign errors translated (:func:`map_http_errors`), the body
  read under a cap (a success under the caller's cap; an error body up to
  ``ERROR_BODY_CAP``, enough for a message), secrets masked in error bodies, and a non-OK
  status turned into the taxonomy by :meth:`HttpBackend.error_for` (which a provider
  overrides to read its own error shape).
- :meth:`HttpBackend.poll` runs an async job to its end within the deadline, polling
  through transient failures.
- :func:`gather_all` runs a backend's calls at once (``n`` images as ``n`` calls).

Under it, ``transport.py``: timeouts, TLS, the error map, bounded reads, timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp

from imagegate.backends.base import ImageBackend
from imagegate.backends.transport import (
    client_timeout,
    error_for_status,
    error_text,
    make_ssl_context,
    map_http_errors,
    parse_retry_after,
    read_capped,
    read_prefix,
)
from imagegate.config import HttpBackendSettings, Timeouts
from imagegate.errors import BackendError, BadResponse, GenerationTimeout
from imagegate.logging import get_logger
from imagegate.models import Deadline

__all__ = [
    "ERROR_BODY_CAP",
    "Answer",
    "Failed",
    "HttpBackend",
    "HttpSettingsT",
    "Pending",
    "gather_all",
]

log = get_logger(__name__)

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
