"""The HTTP machinery every HTTP backend shares: one exchange, one polling loop.

- :meth:`HttpBackend.send` is one HTTP exchange: the deadline-capped timeouts, the TLS
  context, the timing trace, foreign errors translated (:func:`map_http_errors`), the body
  read under a cap (:func:`read_body`: a success under the caller's cap; an error body up
  to ``ERROR_BODY_CAP``, enough for a message), every form of a secret masked in an error's
  body and headers before anything reads them, and a non-OK status turned into the
  taxonomy by :meth:`HttpBackend.error_for` (which a provider overrides to read its shape).
- :meth:`HttpBackend.connect` opens a keep-alive connection to ``base_url`` from the shared
  pool, sending nothing (``transport.warm_connection``), and hands it to the generation sent
  right after; routing races these handshakes and sends the request once.
- :meth:`HttpBackend.download` fetches an image URL a provider handed us, under the
  download policy (``download.py``: no private addresses unless trusted, redirects judged).
- :meth:`HttpBackend.poll` runs an async job to its end within the deadline, polling
  through transient failures.
- :func:`gather_all` runs a backend's calls at once (``n`` images as ``n`` calls), at most
  ``limit`` at a time when given.

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
from multidict import CIMultiDict, CIMultiDictProxy

from imagegate.backends.base import ConnectInfo, ImageBackend
from imagegate.backends.download import MAX_DOWNLOADS, Downloader, DownloadPolicy
from imagegate.backends.transport import (
    ERROR_BODY_CAP,
    client_timeout,
    error_for_status,
    error_text,
    make_ssl_context,
    map_http_errors,
    parse_retry_after,
    read_body,
    warm_connection,
)
from imagegate.config import HttpBackendSettings, Timeouts
from imagegate.errors import BackendError, BadResponse, GenerationTimeout
from imagegate.logging import get_logger
from imagegate.models import Deadline

__all__ = [
    "ERROR_BODY_CAP",
    "MAX_DOWNLOADS",
    "Answer",
    "Failed",
    "HttpBackend",
    "HttpSettingsT",
    "Pending",
    "gather_all",
]

log = get_logger(__name__)

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
        self.downloads = Downloader(
            self.name, DownloadPolicy(self.base_url, tuple(settings.download_hosts)), session,
            self.timeouts, self._ssl,
        )

    def __repr__(self) -> str:
        # Readable in logs and trails, and never more than name and URL (no secret).
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    async def aclose(self) -> None:
        await self.downloads.aclose()

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
            kwargs["ssl"] = self._ssl  # connect() passes the same: one pool key
        if timings is not None:
            kwargs["trace_request_ctx"] = SimpleNamespace(timings=timings, t0=time.monotonic())
        return kwargs

    async def connect(self, deadline: Deadline) -> ConnectInfo:
        """A warm keep-alive connection to ``base_url`` (see ``transport.warm_connection``),
        held until ``release()``: the generation sent right after takes it; nothing is sent."""
        ssl = self._ssl if self.base_url.startswith("https:") else True
        return await warm_connection(
            self._session, self.base_url, ssl=ssl, timeouts=self.timeouts, deadline=deadline,
            backend=self.name,
        )

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
                body = await read_body(resp, cap, backend=self.name, ok=ok)
                answer = Answer(resp.status, resp.headers, body)
        if answer.status not in ok:
            raise (errors or self.error_for)(self._masked(answer))
        return answer

    def _masked(self, answer: Answer) -> Answer:
        """An error answer with every form of a secret masked in its body and headers."""
        mask = self.redactor.text
        headers = CIMultiDict((k, mask(v)) for k, v in answer.headers.items())
        return Answer(answer.status, CIMultiDictProxy(headers), self.redactor.bytes(answer.body))

    async def download(
        self, url: str, deadline: Deadline, *, auth: bool = True, headers: Mapping[str, str] | None = None
    ) -> bytes:
        """The image at ``url`` (a provider's answer named it), under the download policy and
        ``max_image_bytes``; the credentials go along only to ``base_url``'s own origin."""
        sent = {**(self._headers if auth else {}), **(headers or {})}
        return await self.downloads.fetch(url, deadline, cap=self.settings.max_image_bytes, auth_headers=sent)

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


async def gather_all(calls: Iterable[Awaitable[T]], *, limit: int | None = None) -> list[T]:
    """Run ``calls`` at once (at most ``limit`` at a time) and return their results in order;
    the first failure cancels the others (no task outlives the caller) and is raised as
    itself, not as a group."""
    coros = list(calls)
    if len(coros) == 1:
        return [await coros[0]]
    slots = asyncio.Semaphore(limit or len(coros) or 1)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(c, slots)) for c in coros]
    except BaseExceptionGroup as errors:
        raise _first_backend_error(errors) from None
    return [task.result() for task in tasks]


async def _awaited(call: Awaitable[T], slots: asyncio.Semaphore) -> T:
    async with slots:
        return await call


def _first_backend_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first BackendError in a (nested) exception group, else the group itself."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first_backend_error(exc)
        if isinstance(exc, BackendError):
            return exc
    return group
