"""AUTOMATIC1111 stable-diffusion-webui (started with ``--api``).

Wire facts (modules/api/api.py): ``POST /sdapi/v1/txt2img`` is synchronous and serialised by
the webui's global lock, so the read budget is long (minutes) and ``max_concurrency`` defaults
to 1 with queueing. The answer is ``{"images": [b64...], "parameters": {...}, "info": "<JSON
string>"}``; the real seeds are ``json.loads(info)["all_seeds"]``. Probe:
``GET /sdapi/v1/progress?skip_current_image=true`` (cheap, works with and without
``--nowebui``, behind ``--api-auth`` when that is set).

Decided: ``steps`` and ``guidance_scale`` are sent only when the caller set them (the webui's
own defaults apply otherwise); ``model`` from the request or the config becomes
``override_settings.sd_model_checkpoint`` (slow: the webui reloads weights).

Progress and cancel (modules/progress.py @86b3aa94, api.py @45b8a499, notes in
``testing/a1111_webui.py``): every txt2img carries ``force_task_id`` (our own id; a free-form
string the webui never validates, ignored by builds that predate it). While someone listens,
``POST /internal/progress {id_task}`` is polled every ``progress_interval_s``: ``queued``
("In queue: k/N") -> a queued event, ``active`` -> progress (and ``live_preview`` when
previews are wanted). That route exists only when the webui runs with its UI: a 404 switches
this backend to the global ``GET /sdapi/v1/progress``, as does a webui that never learns our
id (an old build ignoring ``force_task_id``); the global one reports whatever job runs.
A poll that fails is skipped: progress never fails a generation. The txt2img answer, not
the progress flags, decides the outcome (a failed job stays "active" until the next one).
A cancelled or timed-out call interrupts the webui (``POST /sdapi/v1/interrupt``, global)
only if ``/internal/progress`` says our task is the one running; a task still queued, or a
webui without ``/internal/progress``, is abandoned (no API removes a queued task).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import structlog
from pydantic import Field

from imagegate.backends.http import HttpBackend
from imagegate.backends.images import check_image
from imagegate.config import HttpBackendSettings
from imagegate.errors import BackendError, BadResponse, GenerationTimeout
from imagegate.events import Reporter
from imagegate.models import Deadline, GeneratedImage, ImageRequest

__all__ = [
    "A1111Backend",
    "A1111Settings",
    "TaskProgress",
    "build_request",
    "from_env",
    "parse_global_progress",
    "parse_internal_progress",
    "parse_response",
]

log = structlog.get_logger()

_TXT2IMG = "/sdapi/v1/txt2img"
_PROGRESS = "/sdapi/v1/progress?skip_current_image=true"
_GLOBAL_PROGRESS = "/sdapi/v1/progress"
_INTERNAL_PROGRESS = "/internal/progress"
_INTERRUPT = "/sdapi/v1/interrupt"
_PROBE_CAP = 1024 * 1024
_PROGRESS_CAP = 8 * 1024 * 1024  # a progress answer may carry a full-size preview
_UNKNOWN_POLLS = 3  # polls the webui may not know our task id before we read the global one
_INTERRUPT_BUDGET_S = 1.0  # best effort: a cancelled request waits at most this for it
_IN_QUEUE = re.compile(r"In queue: (\d+)/(\d+)")


class A1111Settings(HttpBackendSettings):
    """A local AUTOMATIC1111 webui started with ``--api``."""

    kind: Literal["a1111"] = "a1111"
    base_url: str = "http://127.0.0.1:7860"
    connect_timeout_s: float = Field(default=5.0, gt=0, le=600)
    read_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    max_concurrency: int = Field(default=1, ge=1, le=1024)
    queue: bool = True
    progress_interval_s: float = Field(default=0.5, gt=0, le=60)
    username_env: str | None = None
    password_env: str | None = None

    def secret_env_names(self) -> dict[str, str]:
        names = {}
        if self.username_env:
            names["username"] = self.username_env
        if self.password_env:
            names["password"] = self.password_env
        return names

    def required_secrets(self) -> tuple[str, ...]:
        return tuple(self.secret_env_names())


def from_env(env: Mapping[str, str], have_others: bool) -> list[dict[str, Any]]:
    """``A1111_URL`` alone configures a local webui."""
    if not env.get("A1111_URL"):
        return []
    return [{"name": "a1111", "kind": "a1111", "base_url": env["A1111_URL"]}]


def build_request(
    request: ImageRequest, *, model: str | None, task_id: str | None = None
) -> dict[str, Any]:
    """The txt2img JSON body for ``request`` (pure); ``task_id`` goes as ``force_task_id``."""
    payload: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "width": request.width,
        "height": request.height,
        "seed": -1 if request.seed is None else request.seed,
        "batch_size": request.n,
        "n_iter": 1,
        "send_images": True,
        "save_images": False,
    }
    if request.steps is not None:
        payload["steps"] = request.steps
    if request.guidance_scale is not None:
        payload["cfg_scale"] = request.guidance_scale
    if request.sampler:
        payload["sampler_name"] = request.sampler
    checkpoint = request.model or model
    if checkpoint:
        payload["override_settings"] = {"sd_model_checkpoint": checkpoint}
    if task_id is not None:
        payload["force_task_id"] = task_id
    return payload


@dataclass(frozen=True)
class TaskProgress:
    """One progress answer, read: where the job is and what it shows."""

    known: bool = True  # False: the webui has never heard of the task id
    queued: bool = False
    active: bool = False
    position: int | None = None
    queue_size: int | None = None
    fraction: float | None = None
    step: int | None = None
    steps: int | None = None
    eta_s: float | None = None
    preview: bytes | None = None
    preview_format: str | None = None
    preview_id: int = -1


def parse_internal_progress(body: Any) -> TaskProgress:
    """``POST /internal/progress``'s answer (pure; tolerant: missing fields are unknown)."""
    if not isinstance(body, dict):
        return TaskProgress(known=False)
    active, queued = bool(body.get("active")), bool(body.get("queued"))
    position = queue_size = None
    match = _IN_QUEUE.search(str(body.get("textinfo") or "")) if queued else None
    if match:
        position, queue_size = int(match[1]), int(match[2])
    preview, fmt = _data_uri(body.get("live_preview"))
    preview_id = body.get("id_live_preview")
    return TaskProgress(
        known=active or queued or bool(body.get("completed")),
        queued=queued, active=active, position=position, queue_size=queue_size,
        fraction=_number(body.get("progress")) if active else None,
        eta_s=_number(body.get("eta")) if active else None,
        preview=preview, preview_format=fmt,
        preview_id=preview_id if isinstance(preview_id, int) else -1,
    )


def parse_global_progress(body: Any) -> TaskProgress:
    """``GET /sdapi/v1/progress``'s answer: whatever job runs (pure)."""
    if not isinstance(body, dict):
        return TaskProgress(known=False)
    state = body.get("state") if isinstance(body.get("state"), dict) else {}
    assert isinstance(state, dict)
    if not state.get("job_count"):
        return TaskProgress(active=False)
    steps = state.get("sampling_steps")
    image = body.get("current_image")
    preview = None
    if isinstance(image, str) and image:
        with contextlib.suppress(binascii.Error, ValueError):
            preview = base64.b64decode(image, validate=True)
    return TaskProgress(
        active=True, fraction=_number(body.get("progress")), eta_s=_number(body.get("eta_relative")),
        step=state.get("sampling_step") if isinstance(state.get("sampling_step"), int) else None,
        steps=steps if isinstance(steps, int) and steps > 0 else None, preview=preview,
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _data_uri(value: Any) -> tuple[bytes | None, str | None]:
    """``data:image/png;base64,...`` -> (bytes, "png"); (None, None) when absent or broken."""
    if not isinstance(value, str) or not value.startswith("data:image/"):
        return None, None
    head, _, b64 = value.partition(",")
    fmt = head[len("data:image/"):].split(";", 1)[0] or None
    try:
        return base64.b64decode(b64, validate=True), fmt
    except (binascii.Error, ValueError):
        return None, None


def parse_response(body: Any, *, backend: str) -> list[tuple[bytes, int | None]]:
    """Decode the images and pair each with its real seed (pure)."""
    if not isinstance(body, dict) or not isinstance(body.get("images"), list):
        raise BadResponse("txt2img answer has no 'images' list", backend=backend)
    seeds: list[Any] = []
    info = body.get("info")
    if isinstance(info, str):
        try:
            parsed = json.loads(info)
            seeds = list(parsed.get("all_seeds") or [parsed.get("seed")])
            first = int(parsed.get("index_of_first_image") or 0)
        except (ValueError, TypeError, AttributeError):
            first = 0
    else:
        first = 0
    images = body["images"][first:]
    if not images:
        raise BadResponse("txt2img answered with no image", backend=backend)
    out: list[tuple[bytes, int | None]] = []
    for i, b64 in enumerate(images):
        if not isinstance(b64, str):
            raise BadResponse("txt2img image is not a base64 string", backend=backend)
        try:
            data = base64.b64decode(b64.split(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadResponse("txt2img image is not valid base64", backend=backend) from exc
        seed = seeds[i] if i < len(seeds) else None
        out.append((data, int(seed) if isinstance(seed, int | float) else None))
    return out


def _report(state: TaskProgress, steps: int | None, reporter: Reporter, preview_id: int) -> int:
    """Tell ``reporter`` what ``state`` says; the preview id to send next time."""
    if state.queued:
        reporter.queued(position=state.position, queue_size=state.queue_size)
    elif state.active:
        step, total = state.step, state.steps or steps
        if step is None and total and state.fraction is not None:
            step = round(state.fraction * total)  # one batch (n_iter = 1): progress = step/steps
        reporter.progress(fraction=state.fraction, step=step, steps=total, eta_s=state.eta_s)
        if state.preview is not None:
            reporter.preview(state.preview, format=state.preview_format)
    return state.preview_id if state.preview is not None else preview_id


def _basic_auth_headers(user: str | None, password: str | None) -> dict[str, str]:
    """``--api-auth`` credentials as an Authorization header (aiohttp's BasicAuth is deprecated)."""
    if not user:
        return {}
    token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


class A1111Backend(HttpBackend[A1111Settings]):
    """A local AUTOMATIC1111 webui."""

    kind = "a1111"

    def __init__(
        self, settings: A1111Settings, *, secrets: Mapping[str, str], session: aiohttp.ClientSession
    ) -> None:
        super().__init__(settings, secrets=secrets, session=session)
        self._headers = _basic_auth_headers(secrets.get("username"), secrets.get("password"))
        self._internal: bool | None = None  # /internal/progress served? None: not known yet
        self._interrupts: set[asyncio.Task[None]] = set()

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        task_id = f"task(imagegate-{secrets.token_hex(8)})"
        payload = build_request(request, model=self.settings.model, task_id=task_id)
        # base64 in JSON: 4/3 of the image bytes, plus the info text
        cap = self.settings.max_image_bytes * request.n * 2
        reporter = self.reporter
        watch = (
            asyncio.create_task(self._watch(task_id, request.steps, reporter, deadline))
            if reporter.listening else None
        )
        try:
            answer = await self.send(
                "POST", self.base_url + _TXT2IMG, json=payload, deadline=deadline, cap=cap
            )
        except (asyncio.CancelledError, GenerationTimeout):
            await self._interrupt_if_running(task_id)  # the webui would go on: stop our job
            raise
        finally:
            if watch is not None:
                watch.cancel()
                await asyncio.wait([watch])
        return [
            check_image(data, backend=self.name, seed=seed)
            for data, seed in parse_response(answer.json(backend=self.name), backend=self.name)
        ]

    # -- progress -----------------------------------------------------------------------

    async def _watch(
        self, task_id: str, steps: int | None, reporter: Reporter, deadline: Deadline
    ) -> None:
        """Poll the task's progress until cancelled (txt2img answered) or the deadline."""
        preview_id, unknown = -1, 0
        while not deadline.expired:
            try:
                if self._internal is not False and unknown < _UNKNOWN_POLLS:
                    state = await self._task_progress(task_id, preview_id, reporter.previews, deadline)
                    unknown = 0 if state is None or state.known else unknown + 1
                else:
                    state = await self._global_progress(reporter.previews, deadline)
            except BackendError as exc:  # progress is a courtesy: never fail the image for it
                log.debug("progress_poll_failed", backend=self.name, error_kind=exc.kind)
                state = None
            if state is not None:
                preview_id = _report(state, steps, reporter, preview_id)
            await asyncio.sleep(min(self.settings.progress_interval_s, deadline.remaining()))

    async def _task_progress(
        self, task_id: str, preview_id: int, previews: bool, deadline: Deadline
    ) -> TaskProgress | None:
        """Our task's state from ``/internal/progress``; None when the route is not served."""
        body = {"id_task": task_id, "id_live_preview": preview_id, "live_preview": previews}
        answer = await self.send(
            "POST", self.base_url + _INTERNAL_PROGRESS, json=body, deadline=deadline,
            cap=_PROGRESS_CAP, ok=(200, 404, 405),
        )
        if answer.status != 200:
            self._internal = False
            log.info("a1111_internal_progress_missing", backend=self.name, status=answer.status)
            return None
        self._internal = True
        return parse_internal_progress(answer.json(backend=self.name))

    async def _global_progress(self, previews: bool, deadline: Deadline) -> TaskProgress:
        query = "" if previews else "?skip_current_image=true"
        answer = await self.send(
            "GET", self.base_url + _GLOBAL_PROGRESS + query, deadline=deadline, cap=_PROGRESS_CAP
        )
        return parse_global_progress(answer.json(backend=self.name))

    # -- cancel -------------------------------------------------------------------------

    async def _interrupt_if_running(self, task_id: str) -> None:
        """Interrupt the webui if our task is the one it runs; shielded, so that the request
        being cancelled cannot cut it short (it takes two small local calls)."""
        job = asyncio.create_task(self._interrupt(task_id))
        self._interrupts.add(job)
        job.add_done_callback(self._interrupts.discard)
        await asyncio.shield(job)

    async def _interrupt(self, task_id: str) -> None:
        deadline = Deadline.after(min(_INTERRUPT_BUDGET_S, self.timeouts.read))
        try:
            state = (
                await self._task_progress(task_id, -1, False, deadline)
                if self._internal is not False else None
            )
            if state is None or not state.active:
                why = "queued" if state is not None and state.queued else "not known to be running"
                log.info("a1111_task_abandoned", backend=self.name, task=task_id, reason=why)
                return
            await self.send("POST", self.base_url + _INTERRUPT, json={}, deadline=deadline,
                            cap=_PROBE_CAP, ok=(200, 204))
            log.info("a1111_interrupted", backend=self.name, task=task_id)
        except BackendError as exc:
            log.warning("a1111_interrupt_failed", backend=self.name, error_kind=exc.kind)
        except RuntimeError as exc:  # the shared session closed under us (shutdown)
            log.warning("a1111_interrupt_failed", backend=self.name, error=str(exc))

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        answer = await self.send(
            "GET", self.base_url + _PROGRESS, deadline=deadline, cap=_PROBE_CAP, timings=timings
        )
        body = answer.json(backend=self.name)
        if not isinstance(body, dict):
            raise BadResponse("progress answer is not a JSON object", backend=self.name)
        job = (body.get("state") or {}).get("job") or "idle"
        return f"progress {float(body.get('progress') or 0):.0%}, job: {job}"
