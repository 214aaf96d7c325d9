"""Novita AI: an async txt2img task, polled to the end, its images downloaded at once.

Wire facts (providers.md §2; novita-client 0.7.1; novita.ai docs ``model-apis-txt2img``,
``model-apis-task-result``, ``basic-error-code``):

- ``POST {base_url}/v3/async/txt2img`` with ``Authorization: Bearer <key>`` and JSON
  ``{"extra": {"response_image_type"}, "request": {model_name, prompt, negative_prompt, width,
  height, image_num, steps, seed, guidance_scale, sampler_name}}`` -> ``{"task_id": ...}``.
- ``GET {base_url}/v3/async/task-result?task_id=...`` -> ``{"extra": {"seed": "<string>"},
  "task": {"status", "reason", ...}, "images": [{"image_url", "image_url_ttl", ...}]}``.
- ``image_url`` is a presigned URL on another host that expires (``image_url_ttl``).
- Errors are ``{"code", "reason", "message", "metadata"}``; the ``reason`` names the case and
  does not always agree with the status (``INVALID_API_KEY`` is a 403,
  ``BILLING_BALANCE_NOT_ENOUGH`` a 400).
- Probe: ``GET {base_url}/v3/user`` -> ``{"credit_balance": <USD x 10000>, ...}``; spends nothing.

Decided:

- Every ``request`` field is always sent (the v3 docs mark steps, guidance_scale and
  sampler_name required): unset ones take the SDK's defaults (20 steps, 7.5, "Euler a");
  ``seed`` None becomes -1 (random). ``model_name`` is the request's model, else the config's.
- Polling: ``asyncio.sleep(min(poll_interval_s, time left))`` inline in ``generate`` (no
  background task, so a cancelled or timed-out request leaves nothing polling). The task must
  finish within ``read_timeout_s`` of its submission and within the caller's deadline, whichever
  is first; a task still QUEUED/PROCESSING then is ``generation_timeout``. Statuses other than
  TASK_STATUS_SUCCEED/FAILED (including unknown ones) are not terminal. A poll that fails with
  a transient error (5xx, 429, connection trouble) is retried at the next interval (never sooner
  than its Retry-After) because the paid task is still running; auth/rejected poll errors end
  the attempt.
- TASK_STATUS_FAILED: ``task.reason`` goes into the message. Kind by the reason's text: an
  inappropriate-content reason (ILLEGAL_*, NSFW) -> content_filtered; one about the parameters
  (invalid, not found/exist, unsupported, out of range) -> rejected; anything else ->
  server_error (the provider broke on valid input).
- Images are downloaded as soon as the task succeeds, concurrently, each capped at
  ``max_image_bytes``, and *without* the Authorization header (the URL is presigned and lives on
  a storage host: the key must not travel there). 403/404 on a download (an expired or refused
  URL) -> bad_response; 429/5xx -> their usual kinds.
- The seed comes from ``extra.seed`` (a string) and is given to the first image only: which
  seeds Novita used for the others of an ``image_num`` > 1 batch is not documented.
- Error reasons refine the status: INVALID_API_KEY/MISSING_API_KEY/FAILED_TO_AUTH/
  BILLING_AUTH_FAILED -> auth_failed; BILLING_BALANCE_NOT_ENOUGH/NOT_ENOUGH_BALANCE ->
  quota_exhausted; ILLEGAL_PROMPT/ILLEGAL_IMAGE_CONTENT -> content_filtered;
  RATE_LIMIT_EXCEEDED -> rate_limited; TASK_NOT_FOUND -> server_error; otherwise the status.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import structlog

from imagegate.backends.base import (
    Deadline,
    HttpBackend,
    check_image,
    error_for_status,
    error_text,
    parse_retry_after,
    read_capped,
)
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    ConnectFailed,
    ContentFiltered,
    GenerationTimeout,
    QuotaExhausted,
    RateLimited,
    Rejected,
    ServerError,
    Unavailable,
)
from imagegate.models import GeneratedImage, ImageRequest

__all__ = ["NovitaBackend", "build_request", "error_for_response", "failed_task_error", "parse_task"]

log = structlog.get_logger()

_TXT2IMG = "/v3/async/txt2img"
_TASK_RESULT = "/v3/async/task-result"
_USER = "/v3/user"
_DEFAULT_STEPS = 20
_DEFAULT_GUIDANCE = 7.5
_DEFAULT_SAMPLER = "Euler a"
_POLL_READ_S = 30.0  # one task-result GET is small: it never needs the whole read budget
SUCCEED = "TASK_STATUS_SUCCEED"
FAILED = "TASK_STATUS_FAILED"

_REASON_KINDS: dict[str, type[BackendError]] = {
    "INVALID_API_KEY": AuthFailed,
    "MISSING_API_KEY": AuthFailed,
    "FAILED_TO_AUTH": AuthFailed,
    "BILLING_AUTH_FAILED": AuthFailed,
    "BILLING_BALANCE_NOT_ENOUGH": QuotaExhausted,
    "NOT_ENOUGH_BALANCE": QuotaExhausted,
    "ILLEGAL_PROMPT": ContentFiltered,
    "ILLEGAL_IMAGE_CONTENT": ContentFiltered,
    "RATE_LIMIT_EXCEEDED": RateLimited,
    "TASK_NOT_FOUND": ServerError,
}
_FILTERED_WORDS = ("illegal", "nsfw", "inappropriate", "sensitive")
_REJECTED_WORDS = ("invalid", "not found", "not exist", "unsupported", "out of range", "param")
# poll failures worth another poll: the task itself is still running on Novita's side
_TRANSIENT = (ServerError, Unavailable, RateLimited, ConnectFailed, GenerationTimeout)


def build_request(
    request: ImageRequest, *, model: str | None, backend: str | None = None
) -> dict[str, Any]:
    """The txt2img JSON body for ``request`` (pure)."""
    model_name = request.model or model
    if not model_name:
        raise Rejected("model: Novita needs a model_name; set 'model' in the config", backend=backend)
    return {
        "extra": {"response_image_type": request.output_format.value},
        "request": {
            "model_name": model_name,
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "width": request.width,
            "height": request.height,
            "image_num": request.n,
            "steps": request.steps if request.steps is not None else _DEFAULT_STEPS,
            "seed": -1 if request.seed is None else request.seed,
            "guidance_scale": (
                request.guidance_scale if request.guidance_scale is not None else _DEFAULT_GUIDANCE
            ),
            "sampler_name": request.sampler or _DEFAULT_SAMPLER,
        },
    }


def parse_task(body: Any, *, backend: str) -> tuple[str, str, list[str], int | None]:
    """(status, reason, image URLs, seed) from a task-result answer (pure)."""
    if not isinstance(body, dict) or not isinstance(body.get("task"), dict):
        raise BadResponse("task-result answer has no 'task' object", backend=backend)
    task = body["task"]
    status = str(task.get("status") or "")
    reason = str(task.get("reason") or "")
    urls: list[str] = []
    if status == SUCCEED:
        images = body.get("images")
        if not isinstance(images, list) or not images:
            raise BadResponse("task succeeded but returned no images", backend=backend)
        for image in images:
            url = image.get("image_url") if isinstance(image, dict) else None
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise BadResponse("task image has no http(s) 'image_url'", backend=backend)
            urls.append(url)
    extra = body.get("extra")
    seed_text = extra.get("seed") if isinstance(extra, dict) else None
    try:
        seed = int(seed_text) if seed_text not in (None, "") else None
    except (TypeError, ValueError):
        seed = None
    return status, reason, urls, seed


def failed_task_error(task_id: str, reason: str, *, backend: str) -> BackendError:
    """The error for a TASK_STATUS_FAILED task, its kind read from the reason (pure)."""
    text = reason or "no reason given"
    message = f"task {task_id} failed: {text}"
    lowered = text.lower()
    if any(word in lowered for word in _FILTERED_WORDS):
        return ContentFiltered(message, backend=backend)
    if any(word in lowered for word in _REJECTED_WORDS):
        return Rejected(message, backend=backend)
    return ServerError(message, backend=backend)


def error_for_response(
    status: int, body: bytes, *, backend: str, retry_after: float | None = None
) -> BackendError:
    """The taxonomy's error for a Novita error answer: the body's ``reason`` refines the status."""
    message = error_text(body)
    reason = ""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict):
            reason = str(doc.get("reason") or "")
    except ValueError:
        pass
    cls = _REASON_KINDS.get(reason)
    if cls is None:
        return error_for_status(status, message, backend=backend, retry_after=retry_after)
    return cls(message, backend=backend, status=status, retry_after=retry_after)


class NovitaBackend(HttpBackend):
    """Novita AI's async txt2img API."""

    kind = "novita"

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        payload = build_request(request, model=self.settings.model, backend=self.name)
        started = time.monotonic()
        task_id = await self._submit(payload, deadline)
        task_deadline = Deadline(min(deadline.at, started + self.timeouts.read))
        urls, seed = await self._wait(task_id, task_deadline)
        blobs = await self._download_all(urls, deadline)
        return [
            check_image(data, backend=self.name, seed=seed if i == 0 else None, info={"task_id": task_id})
            for i, data in enumerate(blobs)
        ]

    async def _submit(self, payload: dict[str, Any], deadline: Deadline) -> str:
        with self.map_errors(deadline):
            async with self._session.post(
                self.base_url + _TXT2IMG, json=payload, headers=self._headers,
                **self.request_kwargs(deadline),
            ) as resp:
                await self._raise_for_status(resp)
                body = await resp.json(content_type=None)
        task_id = body.get("task_id") if isinstance(body, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise BadResponse("txt2img answer has no 'task_id'", backend=self.name)
        log.debug("novita_task_submitted", backend=self.name, task_id=task_id)
        return task_id

    async def _wait(self, task_id: str, deadline: Deadline) -> tuple[list[str], int | None]:
        """Poll until the task ends; GenerationTimeout when the deadline comes first."""
        interval = self.settings.poll_interval_s
        status, last_error = "not polled yet", None
        while True:
            pause = interval
            try:
                status, reason, urls, seed = await self._poll(task_id, deadline)
                last_error = None
            except _TRANSIENT as exc:
                if deadline.expired:
                    break
                last_error, pause = exc, max(interval, exc.retry_after or 0.0)
                log.info("novita_poll_failed", backend=self.name, task_id=task_id, error_kind=exc.kind)
            else:
                if status == SUCCEED:
                    return urls, seed
                if status == FAILED:
                    raise failed_task_error(task_id, reason, backend=self.name)
            left = deadline.remaining()
            if left <= 0:
                break
            await asyncio.sleep(min(pause, left))
            if deadline.expired:
                break
        after = f" (last poll: {last_error.kind}: {last_error})" if last_error else ""
        raise GenerationTimeout(
            f"task {task_id} still {status} when the time budget ran out{after}", backend=self.name
        )

    async def _poll(self, task_id: str, deadline: Deadline) -> tuple[str, str, list[str], int | None]:
        with self.map_errors(deadline):
            async with self._session.get(
                self.base_url + _TASK_RESULT, params={"task_id": task_id}, headers=self._headers,
                **self.request_kwargs(deadline, read=min(self.timeouts.read, _POLL_READ_S)),
            ) as resp:
                await self._raise_for_status(resp)
                body = await resp.json(content_type=None)
        return parse_task(body, backend=self.name)

    async def _download_all(self, urls: list[str], deadline: Deadline) -> list[bytes]:
        """Every image at once; if one fails the others are cancelled (no task outlives us)."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._download(url, deadline)) for url in urls]
        except BaseExceptionGroup as errors:
            first = next((e for e in errors.exceptions if isinstance(e, BackendError)), None)
            if first is None:
                raise
            raise first from None
        return [task.result() for task in tasks]

    async def _download(self, url: str, deadline: Deadline) -> bytes:
        kwargs = self.request_kwargs(deadline)
        if url.startswith("https:"):
            kwargs["ssl"] = self._ssl
        with self.map_errors(deadline):
            async with self._session.get(url, **kwargs) as resp:  # no Authorization: presigned URL
                if resp.status in (403, 404, 410):
                    raise BadResponse(
                        f"image_url refused with HTTP {resp.status} (expired or gone): "
                        f"{error_text(await resp.read(), 120)}",
                        backend=self.name,
                        status=resp.status,
                    )
                if resp.status != 200:
                    raise error_for_status(
                        resp.status, error_text(await resp.read()), backend=self.name,
                        retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                    )
                return await read_capped(resp, self.settings.max_image_bytes, backend=self.name)

    async def _raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status != 200:
            raise error_for_response(
                resp.status, await resp.read(), backend=self.name,
                retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            )

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        with self.map_errors(deadline):
            async with self._session.get(
                self.base_url + _USER, headers=self._headers, **self.request_kwargs(deadline, timings)
            ) as resp:
                await self._raise_for_status(resp)
                body = await resp.json(content_type=None)
        balance = body.get("credit_balance") if isinstance(body, dict) else None
        if not isinstance(balance, int | float):
            raise BadResponse("/v3/user answer has no numeric 'credit_balance'", backend=self.name)
        return f"credit balance ${balance / 10000:.2f}"
