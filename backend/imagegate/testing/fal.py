"""A fal.ai queue stand-in: submit, status (queue position, logs), result, cancel, a CDN.

What it does, and where each rule comes from (notes/providers_new.md §2: fal-ai/fal
``fal_client/client.py`` @01073871 [FPY], fal-js ``queue.ts``/``types/common.ts`` [FJQ, FJT],
``types/image/zod.gen.ts`` [FJZ]; docs.fal.ai model-endpoints/queue):

- ``Authorization: Key <key>`` on every queue route, else 401 ``{"detail": "No user found
  for Key ID and Secret"}`` (fal-ai/fal#1068). The CDN (``/files/``) takes no auth.
- ``POST /{owner}/{alias}[/{path}]`` queues the JSON body for that endpoint and answers
  ``{"request_id", "response_url", "status_url", "cancel_url", "status": "IN_QUEUE",
  "queue_position"}`` with an ``x-fal-request-id`` header [FJT ``InQueueQueueStatus``, FJS].
  The URLs drop the endpoint's sub-path (``fal-ai/flux/requests/<id>``: docs, FPY
  ``AppId``); a request is found only under its own ``{owner}/{alias}`` (404 elsewhere).
- ``GET .../requests/{id}/status?logs=0|1`` -> IN_QUEUE with ``queue_position``, IN_PROGRESS
  with ``logs`` (a list; null when ``logs`` is not asked), COMPLETED with ``logs`` and
  ``metrics`` [FJT ``QueueStatus``; FPY ``_parse_status`` needs the ``logs`` key]. A failed
  request is COMPLETED with ``error``/``error_type`` (fal-ai/fal#1143) and its result GET
  answers the error.
- ``GET .../requests/{id}`` answers the output once COMPLETED (before that 400 ``{"detail":
  "Request is still in progress"}``: UNCONFIRMED). The input is validated when the request
  runs, so an invalid one answers 422 ``{"detail": [{"loc", "msg", "type", ...}]}`` here (fal-js
  raises its ValidationError from ``result``); pydantic v2 wording.
- ``PUT .../requests/{id}/cancel`` -> 202 ``{"status": "CANCELLATION_REQUESTED"}`` while
  queued or running, 400 ``ALREADY_COMPLETED``, 404 ``NOT_FOUND`` (docs inference-api/
  queue/cancel; those two statuses UNCONFIRMED).
- ``fal-ai/flux/schnell`` [FJZ ``zFluxSchnellInput``]: ``prompt`` required; ``image_size`` a
  preset or ``{width, height}`` each an integer <= 14142; ``num_inference_steps`` 1..12;
  ``seed`` an integer; ``guidance_scale`` 1..20; ``num_images`` 1..4; ``output_format``
  ``jpeg|png`` (default jpeg); ``sync_mode``, ``enable_safety_checker`` booleans;
  ``acceleration`` ``none|regular|high``. Other fields are ignored (pydantic's default).
  Output ``{"images": [{"url", "width", "height", "content_type"}], "timings", "seed",
  "has_nsfw_concepts", "prompt"}``; the presets' pixel sizes are fal's documented ones
  (landscape_4_3 1024x768, ...: UNCONFIRMED beyond the common listings).
- Unknown endpoint: 404 ``{"detail": "Application ... not found"}`` (wording UNCONFIRMED).

A request is COMPLETED at its first status poll unless told otherwise:

    knobs.arm("plan", queue=[2, 1, 0], steps=4)  # IN_QUEUE at those positions (one per
                                                 # poll), IN_PROGRESS with a tqdm log line
                                                 # per step, then COMPLETED
    knobs.arm("stuck")                 # IN_QUEUE for ever
    knobs.arm("request_error", status=500, detail="CUDA out of memory")
    knobs.arm("nsfw")                  # every image flagged in has_nsfw_concepts
    knobs.arm("not_image"), arm("many_images", images=300), arm("image_url", url=...)

    python -m imagegate.testing fal --port 8086 --tls --api-key fal-id:fal-secret
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs, misbehaviour_middleware, record_json_body, send_junk

__all__ = ["ENDPOINTS", "KNOBS_KEY", "STATE_KEY", "create_app", "error_body", "validate_schnell"]

KNOBS_KEY = web.AppKey("knobs", Knobs)
_PRESETS = {
    "square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576),
}
_CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}
_ERRORS_URL = "https://docs.fal.ai/errors"


def error_body(status: int, detail: Any = None) -> dict[str, Any]:
    return {"detail": detail or f"emulated error {status}"}


def _problem(loc: str, msg: str, type_: str, value: Any, **ctx: Any) -> dict[str, Any]:
    item = {"loc": ["body", loc], "msg": msg, "type": type_, "input": value, "url": f"{_ERRORS_URL}#{type_}"}
    if ctx:
        item["ctx"] = ctx
    return item


def _int_in(body: dict[str, Any], key: str, lo: int | None, hi: int | None) -> list[dict[str, Any]]:
    if key not in body:
        return []
    value = body[key]
    if not isinstance(value, int) or isinstance(value, bool):
        return [_problem(key, "Input should be a valid integer", "int_type", value)]
    if lo is not None and value < lo:
        return [_problem(key, f"Input should be greater than or equal to {lo}", "greater_than_equal", value, ge=lo)]
    if hi is not None and value > hi:
        return [_problem(key, f"Input should be less than or equal to {hi}", "less_than_equal", value, le=hi)]
    return []


def validate_schnell(body: Any) -> list[dict[str, Any]]:
    """fal-ai/flux/schnell's input checks [FJZ]: the 422 ``detail`` items, [] when valid."""
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    problems: list[dict[str, Any]] = []
    if not isinstance(body.get("prompt"), str):
        problems.append(_problem("prompt", "Field required" if "prompt" not in body else
                                 "Input should be a valid string", "missing" if "prompt" not in body
                                 else "string_type", body.get("prompt")))
    size = body.get("image_size", "landscape_4_3")
    if isinstance(size, dict):
        for side in ("width", "height"):
            problems += [{**p, "loc": ["body", "image_size", side]} for p in _int_in(size, side, 1, 14142)]
            if side not in size:
                problems.append({**_problem(side, "Field required", "missing", None), "loc": ["body", "image_size", side]})
    elif size not in _PRESETS:
        problems.append(_problem("image_size", "Input should be " + ", ".join(f"'{p}'" for p in _PRESETS),
                                 "enum", size))
    problems += _int_in(body, "num_inference_steps", 1, 12) + _int_in(body, "num_images", 1, 4)
    problems += _int_in(body, "seed", None, None)
    scale = body.get("guidance_scale")
    if scale is not None and (not isinstance(scale, int | float) or isinstance(scale, bool) or not 1 <= scale <= 20):
        problems.append(_problem("guidance_scale", "Input should be a number in 1..20", "float_range", scale))
    for key in ("sync_mode", "enable_safety_checker"):
        if key in body and not isinstance(body[key], bool):
            problems.append(_problem(key, "Input should be a valid boolean", "bool_type", body[key]))
    if body.get("output_format", "jpeg") not in _CONTENT_TYPES:
        problems.append(_problem("output_format", "Input should be 'jpeg' or 'png'", "enum", body["output_format"]))
    if body.get("acceleration", "none") not in ("none", "regular", "high"):
        problems.append(_problem("acceleration", "Input should be 'none', 'regular' or 'high'", "enum",
                                 body["acceleration"]))
    return problems


ENDPOINTS = {"fal-ai/flux/schnell": validate_schnell, "fal-ai/flux-1/schnell": validate_schnell}


@dataclass
class _Request:
    request_id: str
    app: str
    endpoint: str
    body: Any
    plan: list[tuple[str, int]]  # (status, queue position or step) per status poll
    steps: int = 0
    polls: int = 0
    failure: dict[str, Any] | None = None  # request_error: status and detail
    cancelled: bool = False
    output: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)

    def state(self) -> tuple[str, int]:
        if self.cancelled:
            return "COMPLETED", 0
        return self.plan[min(self.polls, len(self.plan) - 1)]


@dataclass
class _State:
    knobs: Knobs
    api_key: str
    requests: dict[str, _Request] = field(default_factory=dict)
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)


STATE_KEY = web.AppKey("fal_state", _State)


def create_app(*, knobs: Knobs | None = None, api_key: str = "test-key:secret") -> web.Application:
    """The emulator app; clients must send ``Authorization: Key <api_key>``."""
    state = _State(knobs or Knobs(), api_key)
    app = web.Application(middlewares=[
        _key_auth,
        misbehaviour_middleware(state.knobs, error_body=error_body, generation_paths=("/fal-ai/", "/files/"),
                                record_body=record_json_body),
    ])
    app[STATE_KEY] = state
    app[KNOBS_KEY] = state.knobs
    app.router.add_get("/files/{name}", _file)
    app.router.add_get("/{owner}/{alias}/requests/{rid}/status", _status)
    app.router.add_get("/{owner}/{alias}/requests/{rid}", _result)
    app.router.add_put("/{owner}/{alias}/requests/{rid}/cancel", _cancel)
    app.router.add_post("/{endpoint:.+}", _submit)
    app.router.add_get("/{tail:.+}", _not_found)  # e.g. a status asked under the sub-path
    return app


async def _not_found(request: web.Request) -> web.Response:
    return web.json_response({"detail": "Not Found"}, status=404)


@web.middleware
async def _key_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.path.startswith("/files/") and \
            request.headers.get("Authorization") != f"Key {request.app[STATE_KEY].api_key}":
        return web.json_response({"detail": "No user found for Key ID and Secret"}, status=401)
    return await handler(request)


def _plan(knobs: Knobs, path: str) -> tuple[list[tuple[str, int]], int]:
    if knobs.take("stuck", path) is not None:
        return [("IN_QUEUE", 3)], 0
    params = knobs.take("plan", path)
    if params is None:
        return [("COMPLETED", 0)], 0
    steps = int(params.get("steps", 0))
    plan = [("IN_QUEUE", int(p)) for p in params.get("queue", [])]
    plan += [("IN_PROGRESS", step) for step in range(1, steps + 1)]
    return plan + [("COMPLETED", steps)], steps


def _urls(origin: str, app: str, rid: str) -> dict[str, str]:
    base = f"{origin}/{app}/requests/{rid}"
    return {"response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel"}


async def _submit(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    endpoint = request.match_info["endpoint"].strip("/")
    known = next((e for e in ENDPOINTS if endpoint == e), None)
    if known is None:
        return web.json_response({"detail": f"Application '{endpoint}' not found"}, status=404)
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"detail": "Request body is not valid JSON"}, status=422)
    app_id = "/".join(endpoint.split("/")[:2])
    plan, steps = _plan(state.knobs, request.path)
    req = _Request(str(uuid.uuid4()), app_id, endpoint, body, plan, steps,
                   failure=state.knobs.take("request_error", request.path))
    state.requests[req.request_id] = req
    origin = f"{request.scheme}://{request.host}"
    position = plan[0][1] if plan[0][0] == "IN_QUEUE" else 0
    answer = {"request_id": req.request_id, **_urls(origin, app_id, req.request_id), "status": "IN_QUEUE",
              "queue_position": position}
    return web.json_response(answer, headers={"x-fal-request-id": req.request_id})


def _find(request: web.Request) -> _Request | None:
    req = request.app[STATE_KEY].requests.get(request.match_info["rid"])
    app_id = f"{request.match_info['owner']}/{request.match_info['alias']}"
    return req if req is not None and req.app == app_id else None


def _logs(req: _Request, upto: int) -> list[dict[str, Any]]:
    """One tqdm bar line per step done (what a diffusers app prints), as fal log entries."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(req.started))
    lines = [{"message": "Loading pipeline", "level": "INFO", "source": "USER", "timestamp": stamp}]
    for step in range(1, upto + 1):
        pct = step * 100 // max(1, req.steps)
        bar = "#" * (pct // 10) + " " * (10 - pct // 10)
        lines.append({"message": f"{pct:3d}%|{bar}| {step}/{req.steps} [00:00<00:00, 9.8it/s]",
                      "level": "STDERR", "source": "USER", "timestamp": stamp})
    return lines


async def _status(request: web.Request) -> web.Response:
    req = _find(request)
    if req is None:
        return web.json_response({"detail": "Request not found"}, status=404)
    status, value = req.state()
    req.polls += 1
    with_logs = request.query.get("logs", "0").lower() in ("1", "true")
    origin = f"{request.scheme}://{request.host}"
    body: dict[str, Any] = {"status": status, "request_id": req.request_id, **_urls(origin, req.app, req.request_id)}
    if status == "IN_QUEUE":
        body["queue_position"] = value
    else:
        body["logs"] = _logs(req, value if status == "IN_PROGRESS" else req.steps) if with_logs else None
    if status == "COMPLETED":
        body["metrics"] = {"inference_time": 0.35}
        if req.failure is not None or req.cancelled:
            body["error"] = "Request was cancelled" if req.cancelled else str(req.failure.get("detail", "error"))  # type: ignore[union-attr]
            body["error_type"] = "cancelled" if req.cancelled else "internal_error"
    return web.json_response(body)


async def _result(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    req = _find(request)
    if req is None:
        return web.json_response({"detail": "Request not found"}, status=404)
    if req.state()[0] != "COMPLETED":
        return web.json_response({"detail": "Request is still in progress"}, status=400)
    if req.cancelled:
        return web.json_response({"detail": "Request was cancelled"}, status=400)
    if req.failure is not None:
        status = int(req.failure.get("status", 500))
        return web.json_response({"detail": req.failure.get("detail", "internal error")}, status=status)
    problems = ENDPOINTS[req.endpoint](req.body)
    if problems:
        return web.json_response({"detail": problems}, status=422, headers={"X-Fal-Retryable": "false"})
    if req.output is None:
        req.output = _render(state, req, f"{request.scheme}://{request.host}", request.path)
    return web.json_response(req.output)


def _render(state: _State, req: _Request, origin: str, path: str) -> dict[str, Any]:
    body = req.body
    size = body.get("image_size", "landscape_4_3")
    width, height = (size["width"], size["height"]) if isinstance(size, dict) else _PRESETS[size]
    fmt = body.get("output_format", "jpeg")
    seed = body.get("seed", random.randrange(2**32))
    many = state.knobs.take("many_images", path)
    hostile = state.knobs.take("image_url", path)
    nsfw = state.knobs.take("nsfw", path) is not None
    count = int(many.get("images", 300)) if many is not None else body.get("num_images", 1)
    images = []
    for i in range(count):
        w, h = (64, 64) if many is not None else (width, height)
        data = make_image(w, h, "" if nsfw else body["prompt"], 0 if nsfw else seed + (0 if many else i), fmt)
        token = uuid.uuid4().hex
        state.files[token] = (data, _CONTENT_TYPES[fmt])
        url = hostile.get("url") if hostile is not None else f"{origin}/files/{token}.{fmt}"
        images.append({"url": url, "width": w, "height": h, "content_type": _CONTENT_TYPES[fmt]})
    return {"images": images, "timings": {"inference": 0.35}, "seed": seed,
            "has_nsfw_concepts": [nsfw] * count, "prompt": body["prompt"]}


async def _cancel(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    req = _find(request)
    if req is None:
        return web.json_response({"status": "NOT_FOUND"}, status=404)
    if req.state()[0] == "COMPLETED":
        return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
    req.cancelled = True
    state.cancelled.append(req.request_id)
    return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)


async def _file(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    entry = state.files.get(request.match_info["name"].split(".", 1)[0])
    if entry is None:
        return web.Response(status=404, text="Not Found")
    junk = state.knobs.take("not_image", request.path)
    if junk is not None:
        return await send_junk(request, int(junk.get("size", 0)), headers={"Content-Type": entry[1]},
                               short_body=b"<html><body>Bad gateway</body></html>")
    return web.Response(body=entry[0], content_type=entry[1])


if __name__ == "__main__":  # python -m imagegate.testing fal --port 8086
    from imagegate.testing.cli import main

    raise SystemExit(main(kind="fal"))
