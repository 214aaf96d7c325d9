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
- Polling: the shared ``HttpBackend.poll`` (inline sleeps, no background task, so a cancelled
  or timed-out request leaves nothing polling). The task must finish within ``read_timeout_s``
  of its submission and within the caller's deadline, whichever is first; a task still
  QUEUED/PROCESSING then is ``generation_timeout``. Statuses other than
  TASK_STATUS_SUCCEED/FAILED (including unknown ones) are not terminal. A poll that fails with
  a transient error (the taxonomy's ``transient``: 5xx, 429, connection trouble) is retried at
  the next interval (never sooner than its Retry-After) because the paid task is still running;
  auth/rejected poll errors end the attempt.
- TASK_STATUS_FAILED: ``task.reason`` goes into the message. Kind by the reason's text: an
  inappropriate-content reason (ILLEGAL_*, NSFW) -> content_filtered; one about the parameters
  (invalid, not found/exist, unsupported, out of range) -> rejected; anything else ->
  server_error (the provider broke on valid input).
- Progress (only while someone listens): each poll's ``task.progress_percent`` (0-100) and
  ``task.eta`` (seconds) become a progress event, TASK_STATUS_QUEUED a queued one (Novita
  gives no position). Both fields are optional in the SDK's model (an older one had neither).
- Images are downloaded as soon as the task succeeds, at most ``MAX_DOWNLOADS`` at once and
  no more of them than ``image_num`` asked (extra URLs are dropped: images.py), each capped at
  ``max_image_bytes``, under the download policy (download.py: a URL on a private address
  is refused unless listed in ``download_hosts``), and *without* the Authorization header
  (the URL is presigned and lives on a storage host: the key must not travel there).
  401/403/404/410 on a download (an expired or refused URL) -> bad_response; 429/5xx -> their
  usual kinds; the body of a failed download is never read.
- The seed comes from ``extra.seed`` (a string) and is given to the first image only: which
  seeds Novita used for the others of an ``image_num`` > 1 batch is not documented.
- Error reasons refine the status: INVALID_API_KEY/MISSING_API_KEY/FAILED_TO_AUTH/
  BILLING_AUTH_FAILED -> auth_failed; BILLING_BALANCE_NOT_ENOUGH/NOT_ENOUGH_BALANCE ->
  quota_exhausted; ILLEGAL_PROMPT/ILLEGAL_IMAGE_CONTENT -> content_filtered;
  RATE_LIMIT_EXCEEDED -> rate_limited; TASK_NOT_FOUND -> server_error; otherwise the status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from imagegate.backends.http import MAX_DOWNLOADS, Answer, Failed, HttpBackend, Pending, gather_all
from imagegate.backends.images import check_image, keep_asked
from imagegate.backends.transport import error_for_status, error_text, parse_retry_after
from imagegate.capabilities import Capabilities, Span
from imagegate.config import HttpBackendSettings
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    ContentFiltered,
    QuotaExhausted,
    RateLimited,
    Rejected,
    ServerError,
)
from imagegate.events import Reporter
from imagegate.logging import get_logger
from imagegate.models import Deadline, GeneratedImage, ImageRequest

__all__ = [
    "CAPABILITIES",
    "SAMPLERS",
    "NovitaBackend",
    "NovitaSettings",
    "build_request",
    "error_for_response",
    "failed_task_error",
    "from_env",
    "parse_task",
    "task_progress",
]

log = get_logger(__name__)

_TXT2IMG = "/v3/async/txt2img"
_TASK_RESULT = "/v3/async/task-result"
_USER = "/v3/user"
_DEFAULT_STEPS = 20
_DEFAULT_GUIDANCE = 7.5
_DEFAULT_SAMPLER = "Euler a"
_POLL_READ_S = 30.0  # one task-result GET is small: it never needs the whole read budget
_JSON_CAP = 1024 * 1024  # submit, task-result and user answers are small JSON
# The sampler_name enum of Novita's txt2img docs (the v2 reference page lists it; v3 takes
# the same A1111 names: UNCONFIRMED beyond the docs' examples, "Euler a").
SAMPLERS = (
    "DPM++ 2M Karras", "DPM++ SDE Karras", "DPM++ 2M SDE Exponential", "DPM++ 2M SDE Karras",
    "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
    "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2M SDE Heun Karras", "DPM++ 2M SDE Heun Exponential",
    "DPM++ 3M SDE", "DPM++ 3M SDE Karras", "DPM++ 3M SDE Exponential", "DPM fast", "DPM adaptive",
    "LMS Karras", "DPM2 Karras", "DPM2 a Karras", "DPM++ 2S a Karras", "Restart", "DDIM", "PLMS",
    "UniPC",
)
# v3 txt2img limits: width/height [128, 2048] (novita.ai docs guides/model-apis-v2-to-v3-
# migration, "Range Change: [128, 2048]"), guidance_scale [1, 30] (model-apis-image-to-image,
# the same request model), response_image_type png|webp|jpeg (the migration guide: "V3 adds
# support for webp"); prompt 1..1024 characters, image_num 1..8, steps 1..100 as the v3
# reference lists them (providers.md §2; the stored copy of that page shows no ranges:
# UNCONFIRMED here).
CAPABILITIES = Capabilities(
    source="built-in: Novita v3 txt2img docs",
    width=Span(min=128, max=2048), height=Span(min=128, max=2048),
    steps=Span(min=1, max=100, step=1), guidance_scale=Span(min=1, max=30),
    max_n=8, formats=("png", "jpeg", "webp"), prompt_max=1024, samplers=SAMPLERS,
    defaults={"steps": 20, "guidance_scale": 7.5, "sampler": "Euler a"},
)
SUCCEED = "TASK_STATUS_SUCCEED"
FAILED = "TASK_STATUS_FAILED"
QUEUED = "TASK_STATUS_QUEUED"

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


class NovitaSettings(HttpBackendSettings):
    """Novita AI's async txt2img API."""

    kind: Literal["novita"] = "novita"
    base_url: str = "https://api.novita.ai"
    model: str | None = "sd_xl_base_1.0.safetensors"
    api_key_env: str = "NOVITA_API_KEY"
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    read_timeout_s: float = Field(default=180.0, gt=0, le=3600)

    def secret_env_names(self) -> dict[str, str]:
        return {"api_key": self.api_key_env}

    def required_secrets(self) -> tuple[str, ...]:
        return ("api_key",)


def from_env(env: Mapping[str, str], have_others: bool) -> list[dict[str, Any]]:
    """``NOVITA_API_KEY`` configures Novita (priority 10)."""
    if not env.get("NOVITA_API_KEY"):
        return []
    return [{"name": "novita", "kind": "novita", "priority": 10}]


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


def task_progress(body: Any) -> tuple[str, float | None, float | None]:
    """(status, fraction 0..1, eta seconds) from a task-result answer; Nones when absent (pure)."""
    task = body.get("task") if isinstance(body, dict) else None
    if not isinstance(task, dict):
        return "", None, None
    percent, eta = task.get("progress_percent"), task.get("eta")
    number = (int, float)
    fraction = percent / 100 if isinstance(percent, number) and not isinstance(percent, bool) else None
    eta_s = float(eta) if isinstance(eta, number) and not isinstance(eta, bool) else None
    return str(task.get("status") or ""), fraction, eta_s


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


class NovitaBackend(HttpBackend[NovitaSettings]):
    """Novita AI's async txt2img API."""

    kind = "novita"

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        payload = build_request(request, model=self.settings.model, backend=self.name)
        started = time.monotonic()
        task_id = await self._submit(payload, deadline)
        task_deadline = Deadline(min(deadline.at, started + self.timeouts.read))
        urls, seed = await self.poll(
            lambda: self._poll(task_id, task_deadline),
            deadline=task_deadline,
            interval=self.settings.poll_interval_s,
            what=f"task {task_id}",
        )
        urls, note = keep_asked(urls, request.n, backend=self.name)
        blobs = await gather_all(  # no Authorization: presigned URLs on a storage host
            (self.download(url, deadline, auth=False) for url in urls), limit=MAX_DOWNLOADS
        )
        return [
            check_image(data, backend=self.name, seed=seed if i == 0 else None, quote=False,
                        info={"task_id": task_id, **(note if i == 0 else {})})
            for i, data in enumerate(blobs)
        ]

    def error_for(self, answer: Answer) -> BackendError:
        return error_for_response(
            answer.status, answer.body, backend=self.name,
            retry_after=parse_retry_after(answer.headers.get("Retry-After")),
        )

    async def _submit(self, payload: dict[str, Any], deadline: Deadline) -> str:
        answer = await self.send(
            "POST", self.base_url + _TXT2IMG, json=payload, deadline=deadline, cap=_JSON_CAP
        )
        body = answer.json(backend=self.name)
        task_id = body.get("task_id") if isinstance(body, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise BadResponse("txt2img answer has no 'task_id'", backend=self.name)
        log.debug("novita_task_submitted", backend=self.name, task_id=task_id)
        return task_id

    async def _poll(
        self, task_id: str, deadline: Deadline
    ) -> tuple[list[str], int | None] | Pending | Failed:
        """One task-result GET: the image URLs and seed once it succeeded, the task's own
        error once it failed, else Pending."""
        answer = await self.send(
            "GET", self.base_url + _TASK_RESULT, params={"task_id": task_id}, deadline=deadline,
            cap=_JSON_CAP, read=min(self.timeouts.read, _POLL_READ_S),
        )
        body = answer.json(backend=self.name)
        status, reason, urls, seed = parse_task(body, backend=self.name)
        if self.reporter.listening:
            _report(self.reporter, *task_progress(body))
        if status == SUCCEED:
            return urls, seed
        if status == FAILED:
            return Failed(failed_task_error(task_id, reason, backend=self.name))
        return Pending(status)

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        answer = await self.send(
            "GET", self.base_url + _USER, deadline=deadline, cap=_JSON_CAP, timings=timings
        )
        body = answer.json(backend=self.name)
        balance = body.get("credit_balance") if isinstance(body, dict) else None
        if not isinstance(balance, int | float):
            raise BadResponse("/v3/user answer has no numeric 'credit_balance'", backend=self.name)
        return f"credit balance ${balance / 10000:.2f}"


def _report(reporter: Reporter, status: str, fraction: float | None, eta_s: float | None) -> None:
    if status == QUEUED:
        reporter.queued(eta_s=eta_s)
    elif status not in (SUCCEED, FAILED):
        reporter.progress(fraction=fraction, eta_s=eta_s)
