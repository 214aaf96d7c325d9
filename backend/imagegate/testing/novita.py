"""A Novita AI stand-in: async txt2img tasks, task-result polling, expiring image URLs.

Speaks Novita's v3 wire format: ``POST /v3/async/txt2img`` checks the Bearer key and the body
(``{"extra": {...}, "request": {...}}``: required fields, types, ranges) and answers
``{"task_id"}``; ``GET /v3/async/task-result?task_id=`` reports the task; the images are served
by this emulator under ``/files/<token>.<ext>`` with no auth (like a presigned URL) until their
TTL runs out (then 403 with an S3-style XML body); ``GET /v3/user`` reports a credit balance.
Errors use Novita's shape ``{"code", "reason", "message", "metadata"}``.

A task succeeds at its first poll unless told otherwise. While it runs, ``task.progress_percent``
(0-100) grows with each poll along its plan and ``task.eta`` (seconds) shrinks (the fields of
``V3TaskResponseTask`` in novitalabs/python-sdk ``src/novita_client/proto.py``; their units are
inferred from names and ints, no doc text states them):

    knobs.arm("task_slow", polls=3)        # QUEUED, PROCESSING, then SUCCEED at the 3rd poll
    knobs.arm("task_plan", statuses=[...])  # any status sequence; the last one repeats
    knobs.arm("task_failed", reason="...")  # TASK_STATUS_FAILED with that task.reason
    knobs.arm("task_stuck")                 # TASK_STATUS_QUEUED for ever
    knobs.arm("url_expired")                # the next task's image URLs are already expired
    knobs.arm("not_image", size=50_000_000) # the next image download is junk (default: HTML)
    knobs.arm("many_images", images=300)    # hostile: the next task has 300 image URLs
    knobs.arm("image_url", url="http://...") # hostile: the next task's image URLs point there

    python -m imagegate.testing novita --port 8081 --tls --api-key test-key
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web

from imagegate.backends import novita as novita_backend
from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs, misbehaviour_middleware, record_json_body, send_junk

__all__ = ["KNOBS_KEY", "STATE_KEY", "create_app", "error_body", "validate"]

KNOBS_KEY = web.AppKey("knobs", Knobs)
QUEUED, PROCESSING = "TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING"
SUCCEED, FAILED = "TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"
SAMPLERS = novita_backend.SAMPLERS  # the docs' sampler_name enum (sources there)
MODELS = ("sd_xl_base_1.0.safetensors", "dreamshaper_8_93211.safetensors")
_REASONS = {
    400: "INVALID_REQUEST_BODY", 401: "INVALID_API_KEY", 402: "BILLING_BALANCE_NOT_ENOUGH",
    403: "API_NOT_ALLOWED", 404: "API_NOT_FOUND", 429: "RATE_LIMIT_EXCEEDED",
    500: "CREATE_TASK_FAILED", 503: "SERVICE_NOT_AVAILABLE",
}
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_GENERATION_PATHS = ("/v3/async/txt2img", "/v3/async/task-result", "/files/")


def error_body(status: int, message: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """Novita's error shape."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    return {
        "code": status,
        "reason": reason or _REASONS.get(status, "UNKNOWN_ERROR"),
        "message": message or phrase,
        "metadata": {},
    }


@dataclass
class _Task:
    task_id: str
    request: dict[str, Any]
    fmt: str
    seed: int
    plan: list[str]
    reason: str = ""
    ttl_s: float = 3600.0
    image_count: int | None = None  # hostile: not what image_num asked
    image_url: str | None = None  # hostile: a URL to anywhere
    polls: int = 0
    submitted: float = field(default_factory=time.time)
    images: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _File:
    data: bytes
    content_type: str
    expires_at: float


def _check_int(req: dict[str, Any], key: str, lo: int, hi: int, problems: list[str]) -> None:
    value = req.get(key)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        problems.append(f"request.{key}: must be an integer")
    elif not lo <= value <= hi:
        problems.append(f"request.{key}: must be in [{lo}, {hi}] (got {value})")


def validate(body: Any) -> list[str]:
    """What the real API checks in a txt2img body: required fields, types and ranges."""
    if not isinstance(body, dict) or not isinstance(body.get("request"), dict):
        return ["request: field required (an object)"]
    extra = body.get("extra", {})
    req = body["request"]
    problems: list[str] = []
    if not isinstance(extra, dict):
        problems.append("extra: must be an object")
    elif extra.get("response_image_type", "png") not in _CONTENT_TYPES:
        problems.append("extra.response_image_type: must be one of png, webp, jpeg")
    for key in ("model_name", "prompt", "width", "height", "image_num", "steps", "guidance_scale",
                "sampler_name"):
        if key not in req:
            problems.append(f"request.{key}: field required")
    for key in ("model_name", "prompt", "negative_prompt", "sampler_name"):
        if key in req and not isinstance(req[key], str):
            problems.append(f"request.{key}: must be a string")
    if isinstance(req.get("prompt"), str) and not 1 <= len(req["prompt"]) <= 1024:
        problems.append("request.prompt: length must be 1..1024")
    _check_int(req, "width", 128, 2048, problems)
    _check_int(req, "height", 128, 2048, problems)
    _check_int(req, "image_num", 1, 8, problems)
    _check_int(req, "steps", 1, 100, problems)
    _check_int(req, "seed", -1, 2**32 - 1, problems)
    scale = req.get("guidance_scale")
    if scale is not None and (not isinstance(scale, int | float) or isinstance(scale, bool)
                              or not 1 <= scale <= 30):
        problems.append("request.guidance_scale: must be a number in [1, 30]")
    if isinstance(req.get("sampler_name"), str) and req["sampler_name"] not in SAMPLERS:
        problems.append(f"request.sampler_name: unknown sampler {req['sampler_name']!r}")
    return problems


def _plan_for(knobs: Knobs, path: str) -> tuple[list[str], str]:
    """The status sequence of a new task, from what the knobs armed."""
    if (params := knobs.take("task_failed", path)) is not None:
        return [FAILED], str(params.get("reason", "task execution failed"))
    if knobs.take("task_stuck", path) is not None:
        return [QUEUED], ""
    if (params := knobs.take("task_plan", path)) is not None:
        return [str(s) for s in params["statuses"]], str(params.get("reason", ""))
    if (params := knobs.take("task_slow", path)) is not None:
        polls = max(1, int(params.get("polls", 3)))
        return [QUEUED] + [PROCESSING] * (polls - 2) + [SUCCEED] if polls > 1 else [SUCCEED], ""
    return [SUCCEED], ""


@dataclass
class _State:
    """Everything one emulator instance knows: its knobs, key, tasks and stored files."""

    knobs: Knobs
    api_key: str
    image_ttl_s: float
    tasks: dict[str, _Task] = field(default_factory=dict)
    files: dict[str, _File] = field(default_factory=dict)


STATE_KEY = web.AppKey("novita_state", _State)


def create_app(
    *, knobs: Knobs | None = None, api_key: str = "test-key", image_ttl_s: float = 3600.0
) -> web.Application:
    """The emulator app; clients must send ``Authorization: Bearer <api_key>``."""
    state = _State(knobs or Knobs(), api_key, image_ttl_s)
    app = web.Application(
        middlewares=[
            _bearer_auth,
            misbehaviour_middleware(
                state.knobs, error_body=error_body, generation_paths=_GENERATION_PATHS,
                record_body=record_json_body,
            ),
        ],
    )
    app[STATE_KEY] = state
    app[KNOBS_KEY] = state.knobs
    app.router.add_post("/v3/async/txt2img", _txt2img)
    app.router.add_get("/v3/async/task-result", _task_result)
    app.router.add_get("/files/{name}", _download)
    app.router.add_get("/v3/user", _user)
    return app


@web.middleware
async def _bearer_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    expected = f"Bearer {request.app[STATE_KEY].api_key}"
    if request.path.startswith("/v3/") and request.headers.get("Authorization") != expected:
        return web.json_response(error_body(401, "API key is missing or invalid"), status=401)
    return await handler(request)


async def _txt2img(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = await request.json()
    except ValueError:
        return web.json_response(error_body(400, "request body is not valid JSON"), status=400)
    problems = validate(body)
    if problems:
        return web.json_response(error_body(400, "; ".join(problems)), status=400)
    plan, reason = _plan_for(state.knobs, request.path)
    seed = body["request"].get("seed", -1)
    expired = state.knobs.take("url_expired", request.path) is not None
    task = _Task(
        task_id=str(uuid.uuid4()),
        request=body["request"],
        fmt=(body.get("extra") or {}).get("response_image_type", "png"),
        seed=random.randrange(2**32) if seed == -1 else seed,
        plan=plan,
        reason=reason,
        ttl_s=0.0 if expired else state.image_ttl_s,
        image_count=_param(state.knobs.take("many_images", request.path), "images", 300),
        image_url=_param(state.knobs.take("image_url", request.path), "url", None),
    )
    state.tasks[task.task_id] = task
    return web.json_response({"task_id": task.task_id})


async def _task_result(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    task = state.tasks.get(request.query.get("task_id", ""))
    if task is None:
        return web.json_response(error_body(404, "task not found", "TASK_NOT_FOUND"), status=404)
    status = task.plan[min(task.polls, len(task.plan) - 1)]
    task.polls += 1
    if status == SUCCEED and not task.images:
        task.images = _render(task, state.files, f"{request.scheme}://{request.host}")
    return web.json_response(_task_json(task, status))


async def _download(request: web.Request) -> web.StreamResponse:
    """A presigned-URL stand-in: no auth, 403 once the TTL has run out."""
    state = request.app[STATE_KEY]
    stored = state.files.get(request.match_info["name"].split(".", 1)[0])
    if stored is None:
        return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
    if time.time() >= stored.expires_at:
        return _s3_error(403, "AccessDenied", "Request has expired")
    junk = state.knobs.take("not_image", request.path)
    if junk is not None:
        html = b"<html><body>Service error</body></html>"
        headers = {"Content-Type": "image/png"}
        return await send_junk(request, int(junk.get("size", 0)), headers=headers, short_body=html)
    return web.Response(body=stored.data, content_type=stored.content_type)


async def _user(request: web.Request) -> web.Response:
    return web.json_response({"allow_features": [], "credit_balance": 123450, "free_trial": {}})


def _param(params: dict[str, Any] | None, name: str, default: Any) -> Any:
    """``params[name]`` of an armed knob (``default`` when armed without it), None unarmed."""
    return None if params is None else params.get(name, default)


def _render(task: _Task, files: dict[str, _File], origin: str) -> list[dict[str, Any]]:
    """Make the task's images, store them under /files, and describe them for task-result."""
    req, ext = task.request, "jpeg" if task.fmt == "jpeg" else task.fmt
    out = []
    many = task.image_count is not None
    count = task.image_count if task.image_count is not None else req.get("image_num", 1)
    for i in range(count):
        if many:  # small, identical images, quickly made
            data = make_image(64, 64, req["prompt"], task.seed, task.fmt)
        else:
            data = make_image(req["width"], req["height"], req["prompt"], task.seed + i, task.fmt)
        token = uuid.uuid4().hex
        files[token] = _File(data, _CONTENT_TYPES[task.fmt], time.time() + task.ttl_s)
        out.append({
            "image_url": task.image_url or f"{origin}/files/{token}.{ext}",
            "image_url_ttl": str(int(task.ttl_s)),
            "image_type": task.fmt,
            "nsfw_detection_result": None,
        })
    return out


def _progress(task: _Task, status: str) -> tuple[int, int]:
    """(progress_percent, eta) of the poll just answered: along the plan, 0 while queued."""
    if status in (SUCCEED, FAILED):
        return 100, 0
    if status == QUEUED:
        return 0, len(task.plan)
    last = max(1, len(task.plan) - 1)
    done = min(task.polls - 1, last)
    return round(100 * done / last), last - done


def _task_json(task: _Task, status: str) -> dict[str, Any]:
    done = status in (SUCCEED, FAILED)
    percent, eta = _progress(task, status)
    now_ms = str(int(time.time() * 1000))
    return {
        "extra": {
            "seed": str(task.seed),
            "enable_nsfw_detection": False,
            "debug_info": {
                "request_info": "",
                "submit_time_ms": str(int(task.submitted * 1000)),
                "execute_time_ms": now_ms if status != QUEUED else "0",
                "complete_time_ms": now_ms if done else "0",
            },
        },
        "task": {
            "task_id": task.task_id,
            "task_type": "TXT_TO_IMG",
            "status": status,
            "reason": task.reason if status == FAILED else "",
            "eta": eta,
            "progress_percent": percent,
        },
        "images": task.images if status == SUCCEED else [],
        "videos": [],
        "audios": [],
    }


def _s3_error(status: int, code: str, message: str) -> web.Response:
    xml = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(status=status, text=xml, content_type="application/xml")


if __name__ == "__main__":  # python -m imagegate.testing.novita --port 8081 --tls
    from imagegate.testing.cli import main

    raise SystemExit(main(kind="novita"))
