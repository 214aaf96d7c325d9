"""The Space backend's own async HTTP: the Hub's runtime stage, wake-up, config and file GETs.

These go through the service's shared aiohttp session (never gradio_client's threads), with
timeouts from :func:`imagegate.backends.transport.client_timeout`, errors translated by
:func:`imagegate.backends.transport.map_http_errors`, every body read bounded by
:func:`imagegate.backends.transport.read_body` (a JSON answer up to ``JSON_CAP``, an error
up to ``ERROR_BODY_CAP``) and masked by the backend's redactor before it is quoted. Image
files are fetched under the download policy (``backends/download.py``), the Space's own
origin trusted.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp

from imagegate.backends.download import Downloader
from imagegate.backends.hf_space.gradio import ImageRef, file_url
from imagegate.backends.hf_space.spaces import ASLEEP, runtime_detail, stage_error, stage_group
from imagegate.backends.transport import (
    client_timeout,
    error_for_status,
    error_text,
    map_http_errors,
    read_body,
)
from imagegate.config import Timeouts
from imagegate.config.redact import Redactor
from imagegate.errors import AuthFailed, BackendError, BadResponse, RateLimited
from imagegate.logging import get_logger
from imagegate.models import Deadline

__all__ = ["SpaceHttp"]

log = get_logger(__name__)

RUNTIME_TIMEOUT_S = 10.0  # the Hub API answers in well under a second when it is well


JSON_CAP = 4 * 1024 * 1024  # a Hub runtime record or a Gradio /config: well under this


@dataclass(frozen=True)
class SpaceHttp:
    """aiohttp calls for one Space backend."""

    http: aiohttp.ClientSession
    ssl: ssl.SSLContext
    timeouts: Timeouts
    backend: str
    token: str | None = None
    redactor: Redactor = field(default_factory=Redactor)
    downloads: Downloader | None = None

    def kwargs(
        self,
        url: str,
        deadline: Deadline,
        timings: dict[str, float] | None = None,
        *,
        read: float | None = None,
    ) -> dict[str, Any]:
        """timeout (capped by the deadline), TLS context and timing trace for one call."""
        t = (
            self.timeouts
            if read is None
            else Timeouts(connect=min(self.timeouts.connect, read), read=read)
        )
        kwargs: dict[str, Any] = {"timeout": client_timeout(t, deadline)}
        if url.startswith("https:"):
            kwargs["ssl"] = self.ssl
        if timings is not None:
            kwargs["trace_request_ctx"] = SimpleNamespace(timings=timings, t0=time.monotonic())
        return kwargs

    async def get_json(
        self,
        url: str,
        deadline: Deadline,
        timings: dict[str, float] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        read: float | None = None,
    ) -> dict[str, Any]:
        """GET ``url`` and return its JSON object; 401/404 are AuthFailed (missing or private)."""
        with map_http_errors(self.backend, self.timeouts, deadline):
            async with self.http.get(
                url, headers=headers, **self.kwargs(url, deadline, timings, read=read)
            ) as resp:
                body, status = await read_body(resp, JSON_CAP, backend=self.backend), resp.status
        if status in (401, 404):
            raise AuthFailed(
                f"{url} answered {status}: missing, or private and "
                f"{'the token lacks access' if self.token else 'no token is set'}",
                backend=self.backend,
                status=status,
            )
        if status != 200:
            message = error_text(self.redactor.bytes(body))
            raise error_for_status(status, message, backend=self.backend)
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise BadResponse(f"{url} did not answer JSON", backend=self.backend) from exc
        if not isinstance(doc, dict):
            raise BadResponse(f"{url} did not answer a JSON object", backend=self.backend)
        return doc

    async def gradio_api(
        self, src: str, deadline: Deadline, *, config: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The app's ``/config`` (unless given) and its API info (``{api_prefix}/info``, what
        ``Client.view_api`` reads): the two halves of what it takes (``discover.py``)."""
        read = min(RUNTIME_TIMEOUT_S, max(deadline.remaining(), 0.001))
        if config is None:
            config = await self.get_json(f"{src}/config", deadline, read=read)
        prefix = str(config.get("api_prefix") or "")
        info = await self.get_json(f"{src}{prefix}/info", deadline, read=read)
        return config, info

    async def result_file(
        self, ref: ImageRef, root: str, deadline: Deadline, *, max_bytes: int,
        cookies: Mapping[str, str],
    ) -> bytes:
        """The file a result names (a FileData, a path on the app's server or a URL; ``root``
        is the app's), refusing more than ``max_bytes``, under the download policy: the token
        and ``cookies`` go to the Space's own origin only."""
        if self.downloads is None:
            raise BadResponse("no download policy for this Space", backend=self.backend)
        if ref.kind in ("file", "path"):
            url = file_url(ref.value if ref.kind == "file" else {"path": ref.value}, root)
        else:
            url = str(ref.value)
        headers = {"x-hf-authorization": f"Bearer {self.token}"} if self.token else {}
        return await self.downloads.fetch(
            url, deadline, cap=max_bytes, auth_headers=headers, cookies=cookies
        )

    async def check_runtime(
        self,
        hub_url: str,
        space: str,
        deadline: Deadline,
        timings: dict[str, float] | None = None,
        *,
        strict: bool = True,
        wake_up: bool = False,
    ) -> str:
        """Ask the Hub whether ``space`` runs; raise Unavailable when it cannot serve now.

        With ``strict=False`` (before building a client) a Hub that cannot be reached or
        answers 5xx does not stop the call, which has its own time budget; a 401/404 or 429
        from the Hub still does.
        """
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        read = min(RUNTIME_TIMEOUT_S, max(deadline.remaining(), 0.001))
        url = f"{hub_url}/api/spaces/{space}/runtime"
        try:
            runtime = await self.get_json(url, deadline, timings, headers=headers, read=read)
        except BackendError as exc:
            if strict or isinstance(exc, AuthFailed | RateLimited):
                raise
            log.warning(
                "space_runtime_unknown", backend=self.backend, error_kind=exc.kind,
                error=self.redactor.text(str(exc)),
            )
            return "runtime unknown"
        woke = False
        if wake_up and stage_group(str(runtime.get("stage") or "")) is ASLEEP:
            woke = await self.wake_up(hub_url, space, deadline)
        error = stage_error(runtime, space=space, backend=self.backend, wake_requested=woke)
        if error is not None:
            raise error
        return runtime_detail(runtime)

    async def wake_up(self, hub_url: str, space: str, deadline: Deadline) -> bool:
        """Open the Space's page on the Hub, as a visitor does, which starts a slept Space."""
        url = f"{hub_url}/spaces/{space}"
        read = min(RUNTIME_TIMEOUT_S, max(deadline.remaining(), 0.001))
        try:  # the page itself is not read: opening it is what wakes the Space
            async with self.http.get(url, **self.kwargs(url, deadline, read=read)) as resp:
                resp.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = self.redactor.text(f"{type(exc).__name__}: {exc}")
            log.warning("space_wake_up_failed", backend=self.backend, error=error)
            return False
        log.info("space_wake_up_requested", backend=self.backend, status=resp.status)
        return resp.status < 400
