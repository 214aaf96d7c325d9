"""fal.ai through its queue: submit, status (queue position, logs), result, cancel.

Wire facts (notes/providers_new.md §2; fal-ai/fal ``fal_client/client.py`` @01073871 [FPY],
fal-ai/fal-js ``queue.ts`` and ``types/common.ts`` [FJQ, FJT], ``types/image/zod.gen.ts``
[FJZ]; docs.fal.ai model-endpoints/queue):

- ``Authorization: Key <key>`` (a key is ``key_id:key_secret``) [FPY ``AuthCredentials``].
- Submit: ``POST {base_url}/{model}`` (``https://queue.fal.run/fal-ai/flux/schnell``), the
  body is the model's input -> ``{"request_id", "response_url", "status_url",
  "cancel_url", "status": "IN_QUEUE", "queue_position"}``.
- Status: ``GET {status_url}?logs=1`` -> ``{"status": "IN_QUEUE", "queue_position"}`` |
  ``{"status": "IN_PROGRESS", "logs": [{"message", "level", "source", "timestamp"}]}`` |
  ``{"status": "COMPLETED", "logs", "metrics"}`` (newer ones add ``error``/``error_type``
  when the request failed: fal-ai/fal#1143).
- Result: ``GET {response_url}`` -> the model's output; a failed or invalid request answers
  its HTTP error here (FPY ``get()``: ``_raise_for_status`` on the result; fal-js raises its
  ``ValidationError`` for a 422 ``{"detail": [{"loc", "msg", "type"}]}`` from ``result``).
- Cancel: ``PUT {cancel_url}`` -> 202 ``{"status": "CANCELLATION_REQUESTED"}``.
- Status, result and cancel live under ``{owner}/{alias}`` without the model's sub-path
  (``fal-ai/flux/requests/{id}``; FPY ``AppId.from_endpoint_id``: the ``workflows`` and
  ``comfy`` namespaces add a segment).
- Errors: ``{"detail": "..."}`` or ``{"detail": [{"loc", "msg", "type"}]}``; 401 ``{"detail":
  "No user found for Key ID and Secret"}`` (fal-ai/fal#1068).
- fal-ai/flux/schnell [FJZ ``zFluxSchnellInput``]: ``prompt``; ``image_size`` a preset or
  ``{"width", "height"}`` (each <= 14142); ``num_inference_steps`` 1..12; ``seed``;
  ``guidance_scale`` 1..20; ``num_images`` 1..4; ``output_format`` ``jpeg|png``;
  ``enable_safety_checker``. Output ``{"images": [{"url", "width", "height",
  "content_type"}], "seed", "has_nsfw_concepts": [bool], "timings"}``.

Decided:

- ``model`` is the endpoint path (``fal-ai/flux/schnell``); a request's ``model`` replaces it.
  The size always goes as ``image_size: {width, height}``, ``output_format`` as asked (png
  or jpeg; webp is converted by the router), ``num_images`` = ``n``; steps, seed, guidance
  and negative prompt only when set (the model's defaults apply). Capabilities: flux/schnell's
  ranges above; any other endpoint takes every field and states no range.
- The URLs the submit answer names are used when they have ``base_url``'s origin (the key
  goes with them); otherwise the same paths are built on ``base_url`` (a proxy in front).
- Polling: every ``poll_interval_s`` (FPY polls at 0.1 s, HF's helper at 0.5 s), through
  transient errors, within ``read_timeout_s`` of the submission and the caller's deadline.
  ``logs=1`` only while someone listens (the logs can be long): IN_QUEUE ->
  ``queued(position = queue_position + 1)`` (fal's position 0 is next: UNCONFIRMED, from
  the submit answer's ``queue_position: 0``); IN_PROGRESS -> ``progress``, with step/steps
  when a log line is a tqdm bar.
- A cancelled or timed-out request cancels its fal request (shielded, best effort).
- Images are downloaded without the key (fal's CDN is another host) under the download
  policy; a ``data:`` URI (``sync_mode``) is decoded in place. An image flagged in
  ``has_nsfw_concepts`` is dropped (fal blacks it out); all flagged -> content_filtered.
- Probe (free, authenticated): ``GET {base_url}/{owner}/{alias}/requests/<nil UUID>/status``:
  404 (no such request) means the key was accepted, 401/403 that it was refused. What fal
  answers for an unknown request id is UNCONFIRMED; any answer but 401/403/5xx passes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from pydantic import Field, field_validator

from imagegate.backends.download import same_origin
from imagegate.backends.http import MAX_DOWNLOADS, Answer, Failed, HttpBackend, Pending, gather_all
from imagegate.backends.images import check_image, keep_asked
from imagegate.backends.logprogress import tqdm_progress
from imagegate.backends.stopping import stop_shielded
from imagegate.backends.transport import error_for_status, error_text, parse_retry_after
from imagegate.capabilities import REQUEST_FIELDS, Capabilities, Span
from imagegate.config import HttpBackendSettings
from imagegate.errors import BackendError, BadResponse, ContentFiltered, GenerationTimeout, Rejected
from imagegate.events import Reporter
from imagegate.logging import get_logger
from imagegate.models import Deadline, GeneratedImage, ImageFormat, ImageRequest

__all__ = [
    "FalBackend",
    "FalSettings",
    "Queued",
    "app_path",
    "build_input",
    "capabilities_for_model",
    "error_from_response",
    "from_env",
    "parse_output",
    "parse_status",
]

log = get_logger(__name__)

_DEFAULT_MODEL = "fal-ai/flux/schnell"
_JSON_CAP = 1024 * 1024  # submit, status (with logs) and result answers are small JSON
_STATUS_READ_S = 30.0
_NAMESPACES = ("workflows", "comfy")
_NIL_UUID = "00000000-0000-0000-0000-000000000000"
_SCHNELL = Capabilities(  # FJZ zFluxSchnellInput (notes/providers_new.md §2.3)
    source="built-in: fal-ai/flux/schnell input schema (fal-js zod.gen.ts)",
    takes=("size", "steps", "guidance_scale", "seed", "model"),
    width=Span(min=64, max=14142), height=Span(min=64, max=14142),
    steps=Span(min=1, max=12, step=1), guidance_scale=Span(min=1, max=20), max_n=4,
    formats=("png", "jpeg"), defaults={"steps": 4, "guidance_scale": 3.5},
)
_ANY_ENDPOINT = Capabilities(
    source="built-in: a fal endpoint of unknown schema (every field sent when set)",
    takes=tuple(f for f in REQUEST_FIELDS if f != "sampler"), formats=("png", "jpeg"),
)
_KNOWN = {"fal-ai/flux/schnell": _SCHNELL, "fal-ai/flux-1/schnell": _SCHNELL}


class FalSettings(HttpBackendSettings):
    """fal.ai's queue API."""

    kind: Literal["fal"] = "fal"
    base_url: str = "https://queue.fal.run"
    model: str | None = _DEFAULT_MODEL
    api_key_env: str = "FAL_KEY"
    poll_interval_s: float = Field(default=0.5, gt=0, le=60)
    read_timeout_s: float = Field(default=180.0, gt=0, le=3600)

    @field_validator("model")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            app_path(value)  # ValueError: pydantic reports it naming the key
        return value

    def secret_env_names(self) -> dict[str, str]:
        return {"api_key": self.api_key_env}

    def required_secrets(self) -> tuple[str, ...]:
        return ("api_key",)


def from_env(env: Mapping[str, str], have_others: bool) -> list[dict[str, Any]]:
    """``FAL_KEY`` configures fal (priority 24)."""
    if not env.get("FAL_KEY", "").strip():
        return []
    return [{"name": "fal", "kind": "fal", "priority": 24}]


def app_path(model: str) -> str:
    """The ``{owner}/{alias}`` (with its namespace) that status, result and cancel live
    under; ValueError for a path that names no endpoint (pure)."""
    parts = [p for p in model.strip("/").split("/") if p]
    need = 3 if parts and parts[0] in _NAMESPACES else 2
    if len(parts) < need or any(not p.replace("-", "").replace("_", "").replace(".", "").isalnum() for p in parts):
        raise ValueError(f"must be a fal endpoint path like 'fal-ai/flux/schnell' (got {model!r})")
    return "/".join(parts[:need])


def capabilities_for_model(model: str | None) -> Capabilities:
    return _KNOWN.get((model or "").strip("/"), _ANY_ENDPOINT)


def build_input(request: ImageRequest, *, takes: tuple[str, ...]) -> dict[str, Any]:
    """The model input for ``request`` (pure); ``takes``: the fields the endpoint takes."""
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "image_size": {"width": request.width, "height": request.height},
        "num_images": request.n,
        "output_format": "jpeg" if request.output_format is ImageFormat.JPEG else "png",
    }
    optional = {
        "num_inference_steps": ("steps", request.steps),
        "seed": ("seed", request.seed),
        "guidance_scale": ("guidance_scale", request.guidance_scale),
        "negative_prompt": ("negative_prompt", request.negative_prompt or None),
    }
    body.update({key: value for key, (field, value) in optional.items() if value is not None and field in takes})
    return body


class Queued:
    """One status answer, read (pure data)."""

    __slots__ = ("error", "logs", "position", "status")

    def __init__(self, status: str, position: int | None, logs: list[str], error: str | None) -> None:
        self.status, self.position, self.logs, self.error = status, position, logs, error


def parse_status(body: Any, *, backend: str) -> Queued:
    """A status answer (pure); BadResponse when it has no ``status``."""
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        raise BadResponse("status answer has no 'status'", backend=backend)
    position = body.get("queue_position")
    logs = [str(entry.get("message") or "") for entry in body.get("logs") or [] if isinstance(entry, dict)]
    error = body.get("error") or body.get("error_type")
    return Queued(
        body["status"], position if isinstance(position, int) and not isinstance(position, bool) else None,
        logs, str(error) if error else None,
    )


def parse_output(body: Any, *, backend: str) -> tuple[list[str], int | None, int]:
    """(image URLs, seed, how many were flagged as NSFW and dropped) of a result (pure)."""
    images = body.get("images") if isinstance(body, dict) else None
    if not isinstance(images, list) or not images:
        raise BadResponse("result has no 'images' list", backend=backend)
    flags = body.get("has_nsfw_concepts")
    flags = flags if isinstance(flags, list) else []
    urls, flagged = [], 0
    for i, image in enumerate(images):
        url = image.get("url") if isinstance(image, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:")):
            raise BadResponse("a result image has no http(s) or data: 'url'", backend=backend)
        if i < len(flags) and flags[i] is True:
            flagged += 1
            continue
        urls.append(url)
    if not urls:
        raise ContentFiltered(f"fal's safety checker flagged all {flagged} images", backend=backend)
    seed = body.get("seed")
    return urls, seed if isinstance(seed, int) and not isinstance(seed, bool) else None, flagged


def error_from_response(status: int, body: bytes, headers: Mapping[str, str], *, backend: str) -> BackendError:
    """The taxonomy's error for fal's ``{"detail": ...}`` answer (pure)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    detail = doc.get("detail") if isinstance(doc, dict) else None
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc") or [] if p != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
        message = "; ".join(parts)
    else:
        message = str(detail) if detail else ""
    text = error_text(message or body.decode("utf-8", "replace")) or "no detail"
    return error_for_status(status, text, backend=backend, retry_after=parse_retry_after(headers.get("Retry-After")))


class FalBackend(HttpBackend[FalSettings]):
    """fal.ai's queue API."""

    kind = "fal"

    def __init__(self, settings: FalSettings, *, secrets: Mapping[str, str], session: aiohttp.ClientSession) -> None:
        super().__init__(settings, secrets=secrets, session=session)
        key = secrets.get("api_key")
        self._headers = {"Authorization": f"Key {key}"} if key else {}

    @property
    def capabilities(self) -> Capabilities:
        return capabilities_for_model(self.settings.model)

    def capabilities_for(self, request: ImageRequest) -> Capabilities:
        return capabilities_for_model(request.model or self.settings.model)

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        model = (request.model or self.settings.model or "").strip("/")
        try:
            app = app_path(model)
        except ValueError as exc:
            raise Rejected(f"model: {exc}", backend=self.name) from None
        body = build_input(request, takes=capabilities_for_model(model).takes)
        started = time.monotonic()
        answer = await self.send("POST", f"{self.base_url}/{model}", json=body, deadline=deadline, cap=_JSON_CAP)
        urls = self._urls(answer.json(backend=self.name), app)
        job_deadline = Deadline(min(deadline.at, started + self.timeouts.read))
        reporter = self.reporter
        try:
            await self.poll(
                lambda: self._status(urls["status_url"], reporter, job_deadline), deadline=job_deadline,
                interval=self.settings.poll_interval_s, what=f"request {urls['request_id']}",
            )
            result = await self.send("GET", urls["response_url"], deadline=deadline, cap=_JSON_CAP)
        except (asyncio.CancelledError, GenerationTimeout):
            await stop_shielded(lambda d: self._cancel(urls["cancel_url"], d), backend=self.name,
                                job=urls["request_id"])
            raise
        images, seed, flagged = parse_output(result.json(backend=self.name), backend=self.name)
        images, note = keep_asked(images, request.n, backend=self.name)
        info: dict[str, Any] = {"request_id": urls["request_id"], **note}
        if flagged:
            info["nsfw_dropped"] = flagged
        blobs = await gather_all((self._fetch(url, deadline) for url in images), limit=MAX_DOWNLOADS)
        return [
            check_image(data, backend=self.name, seed=seed if i == 0 else None, quote=False,
                        info=info if i == 0 else {"request_id": urls["request_id"]})
            for i, data in enumerate(blobs)
        ]

    def _urls(self, body: Any, app: str) -> dict[str, str]:
        """The request id and its URLs: as answered when on base_url's origin, else built."""
        request_id = body.get("request_id") if isinstance(body, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise BadResponse("submit answer has no 'request_id'", backend=self.name)
        own = f"{self.base_url}/{app}/requests/{request_id}"
        built = {"response_url": own, "status_url": own + "/status", "cancel_url": own + "/cancel"}
        urls = {"request_id": request_id}
        for key, fallback in built.items():
            given = body.get(key)
            urls[key] = given if isinstance(given, str) and same_origin(given, self.base_url) else fallback
        return urls

    async def _status(self, url: str, reporter: Reporter, deadline: Deadline) -> None | Pending | Failed:
        logs = "1" if reporter.listening else "0"
        answer = await self.send(
            "GET", url, params={"logs": logs}, deadline=deadline, cap=_JSON_CAP,
            read=min(self.timeouts.read, _STATUS_READ_S),
        )
        state = parse_status(answer.json(backend=self.name), backend=self.name)
        if state.status == "COMPLETED":
            return None  # the result says whether it worked
        if reporter.listening:
            if state.status == "IN_QUEUE":
                reporter.queued(position=None if state.position is None else state.position + 1)
            elif state.status == "IN_PROGRESS":
                steps = tqdm_progress(state.logs)
                reporter.progress(step=steps[0] if steps else None, steps=steps[1] if steps else None)
        return Pending(state.status)

    async def _cancel(self, url: str, deadline: Deadline) -> str:
        answer = await self.send("PUT", url, deadline=deadline, cap=_JSON_CAP, ok=(200, 202, 400, 404))
        try:
            said = answer.json(backend=self.name).get("status")
        except (BadResponse, AttributeError):
            said = None
        return f"cancel answered HTTP {answer.status} {said or ''}".strip()

    async def _fetch(self, url: str, deadline: Deadline) -> bytes:
        if url.startswith("data:"):  # sync_mode: the image inline
            try:
                return base64.b64decode(url.partition(",")[2], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise BadResponse("a data: image URL is not valid base64", backend=self.name) from exc
        return await self.download(url, deadline, auth=False)

    def error_for(self, answer: Answer) -> BackendError:
        return error_from_response(answer.status, answer.body, answer.headers, backend=self.name)

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        app = app_path(self.settings.model or _DEFAULT_MODEL)
        url = f"{self.base_url}/{app}/requests/{_NIL_UUID}/status"
        answer = await self.send("GET", url, deadline=deadline, cap=_JSON_CAP, ok=(200, 400, 404, 422),
                                 timings=timings)
        host = urlsplit(self.base_url).hostname
        return f"key accepted by {host} ({app}: a made-up request id answered HTTP {answer.status})"
