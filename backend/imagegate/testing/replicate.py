"""A Replicate stand-in: predictions with ``Prefer: wait``, polling, cancel, model schemas, a CDN.

What it does, and where each rule comes from (notes/providers_new.md §3: replicate-python
@0110c2c5 [RP], replicate-python-beta @48e138a1 [RB]; replicate.com changelog and docs):

- ``Authorization: Bearer <token>`` on every ``/v1`` route, else 401 problem details
  ``{"title": "Unauthenticated", "detail": "You did not pass a valid authentication
  token", "status": 401}`` (wording UNCONFIRMED). The CDN (``/delivery/``) takes no auth.
- ``POST /v1/models/{owner}/{name}/predictions`` runs an official model by name (here
  black-forest-labs/flux-schnell); ``POST /v1/predictions`` runs ``{"version": "<64 hex>"
  | "owner/name:<64 hex>"}`` (here stability-ai/sdxl's version). An unknown version is 422
  ``{"title": "Invalid version or not permitted", ...}``; a model that is not official on
  the models route is 404 (both wordings UNCONFIRMED).
- The body: ``input`` required; top-level keys other than ``version``, ``input``,
  ``webhook``, ``webhook_events_filter``, ``stream`` refused; each is 422 with
  ``invalid_fields: [{"type", "field", "description"}]`` (changelog 2024-05-01: "input is
  required", "Additional property inptu is not allowed"). Inputs are checked against the
  model's schema: required names, types, ``minimum``/``maximum``, ``enum`` (422; the
  field/description wording of these is UNCONFIRMED). An input the schema does not name
  is ignored, as cog ignores it.
- ``Prefer: wait`` or ``wait=N`` (1..60) holds the answer until the prediction ends or N
  seconds pass, then answers it as it is (``starting``/``processing`` and ``output: null``
  if not done) [RP ``run.py``]; without it the answer is ``starting``. 201 Created.
- The prediction object [RB ``Prediction``]: ``id``, ``model``, ``version`` (``"hidden"``
  for an official model), ``input``, ``logs``, ``output`` (an array of URLs here, as both
  models' output schema says), ``error``, ``status``, timestamps, ``data_removed``,
  ``metrics.predict_time`` once done, ``urls`` ``{get, cancel, stream, web}``.
- ``GET /v1/predictions/{id}``; ``POST /v1/predictions/{id}/cancel`` -> the prediction,
  ``canceled`` unless it had already ended [RP ``Predictions.cancel``].
- ``GET /v1/models/{owner}/{name}`` -> the model with ``latest_version.openapi_schema``;
  ``GET .../versions/{id}`` -> the version; enums behind ``allOf: [{"$ref"}]`` as cog
  writes them (the "None" types on the models' API pages). ``GET /v1/account``.
- The schemas: flux-schnell's API page (aspect_ratio, num_outputs 1..4, num_inference_steps
  1..4, output_format webp|jpg|png, megapixels 1|0.25, ...) and stability-ai/sdxl's version
  13f35c1d page (width, height, num_outputs 1..4, scheduler enum, num_inference_steps
  1..500, guidance_scale 1..50, refine, ...). flux-schnell's pixels per aspect ratio are the
  usual 1-megapixel buckets, halved per side for ``megapixels: "0.25"`` (UNCONFIRMED).

Knobs besides the shared ones:

    knobs.arm("plan", statuses=["starting", "processing", "succeeded"], steps=4)
                                    # the create answer has the first status whatever the
                                    # wait; each GET moves one on; tqdm lines in the logs
    knobs.arm("slow", seconds=0.5)  # the prediction ends that long after it was created
    knobs.arm("failed", error="CUDA out of memory")   knobs.arm("nsfw")
    knobs.arm("data_url"), arm("not_image"), arm("many_images", images=300), arm("image_url", url=...)

    python -m imagegate.testing replicate --port 8087 --tls --api-key r8_test
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs, misbehaviour_middleware, record_json_body, send_junk
from imagegate.testing.replicate_models import FLUX, MODELS, SDXL, ReplicateModel, check_input

__all__ = ["FLUX", "KNOBS_KEY", "SDXL", "STATE_KEY", "create_app", "problem"]

KNOBS_KEY = web.AppKey("knobs", Knobs)
_TOP_LEVEL = {"version", "input", "webhook", "webhook_events_filter", "stream"}
_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


def problem(status: int, title: str, detail: str | None = None, **extra: Any) -> web.Response:
    """A problem-details answer [RP ``ReplicateError.from_response``]."""
    body = {"title": title, "detail": detail or title, "status": status, **extra}
    return web.json_response(body, status=status)


@dataclass
class _Prediction:
    id: str
    model: ReplicateModel
    input: dict[str, Any]
    plan: list[str] | None  # statuses, one per GET (None: time decides)
    done_at: float  # time.monotonic() when it ends (time-decided)
    steps: int = 4
    gets: int = 0
    error: str | None = None
    as_data: bool = False
    canceled: bool = False
    output: list[str] | None = None
    created: float = field(default_factory=time.time)

    def status(self) -> str:
        if self.canceled:
            return "canceled"
        if self.plan is not None:
            status = self.plan[min(self.gets, len(self.plan) - 1)]
        else:
            status = "succeeded" if time.monotonic() >= self.done_at else "processing"
        return "failed" if status == "succeeded" and self.error else status


@dataclass
class _State:
    knobs: Knobs
    api_key: str
    predictions: dict[str, _Prediction] = field(default_factory=dict)
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    canceled: list[str] = field(default_factory=list)


STATE_KEY = web.AppKey("replicate_state", _State)


def create_app(*, knobs: Knobs | None = None, api_key: str = "r8_test-token") -> web.Application:
    """The emulator app; clients must send ``Authorization: Bearer <api_key>``."""
    state = _State(knobs or Knobs(), api_key)
    app = web.Application(middlewares=[
        _bearer,
        misbehaviour_middleware(state.knobs, error_body=lambda s: {"detail": f"emulated error {s}", "status": s},
                                generation_paths=("/v1/predictions", "/v1/models/", "/delivery/"),
                                record_body=record_json_body),
    ])
    app[STATE_KEY] = state
    app[KNOBS_KEY] = state.knobs
    app.router.add_post("/v1/models/{owner}/{name}/predictions", _create_official)
    app.router.add_post("/v1/predictions", _create_version)
    app.router.add_get("/v1/predictions/{id}", _get)
    app.router.add_post("/v1/predictions/{id}/cancel", _cancel)
    app.router.add_get("/v1/models/{owner}/{name}", _model)
    app.router.add_get("/v1/models/{owner}/{name}/versions/{version}", _version)
    app.router.add_get("/v1/account", _account)
    app.router.add_get("/delivery/{name}", _file)
    return app


@web.middleware
async def _bearer(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith("/v1/") and \
            request.headers.get("Authorization") != f"Bearer {request.app[STATE_KEY].api_key}":
        return problem(401, "Unauthenticated", "You did not pass a valid authentication token")
    return await handler(request)


async def _create_official(request: web.Request) -> web.Response:
    ref = f"{request.match_info['owner']}/{request.match_info['name']}"
    model = MODELS.get(ref)
    if model is None or not model.official:
        return problem(404, "Not found", f"Model {ref} not found, or not an official model: run it by version")
    return await _create(request, model, allowed=_TOP_LEVEL - {"version"})


async def _create_version(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        body = None
    version = str(body.get("version") or "") if isinstance(body, dict) else ""
    model = next((m for m in MODELS.values() if version.rsplit(":", 1)[-1] == m.version), None)
    if model is None:
        return problem(422, "Invalid version or not permitted",
                       "The specified version does not exist (or perhaps you don't have permission to use it?)")
    return await _create(request, model, allowed=_TOP_LEVEL)


async def _create(request: web.Request, model: ReplicateModel, *, allowed: set[str]) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = await request.json()
    except ValueError:
        return problem(400, "Bad request", "Request body is not valid JSON")
    if not isinstance(body, dict):
        body = {}
    invalid = [{"type": "additional_property_not_allowed", "field": "",
                "description": f"Additional property {key} is not allowed"} for key in body if key not in allowed]
    if not isinstance(body.get("input"), dict):
        invalid.append({"type": "required", "field": "", "description": "input is required"})
    else:
        invalid += check_input(model, body["input"])
    if invalid:
        return problem(422, "Input validation failed", "; ".join(i["description"] for i in invalid),
                       invalid_fields=invalid)
    knobs, path = state.knobs, request.path
    plan = knobs.take("plan", path)
    slow = knobs.take("slow", path)
    failed = knobs.take("failed", path)
    nsfw = knobs.take("nsfw", path) is not None
    pred = _Prediction(
        id=uuid.uuid4().hex[:26], model=model, input=body["input"],
        plan=[str(s) for s in plan["statuses"]] if plan else None,
        done_at=time.monotonic() + float((slow or {}).get("seconds", 0.0)),
        steps=int((plan or {}).get("steps", 4)),
        error=("NSFW content detected. Try running it again, or try a different prompt." if nsfw
               else str(failed.get("error", "prediction failed")) if failed is not None else None),
        as_data=knobs.take("data_url", path) is not None,
    )
    state.predictions[pred.id] = pred
    wait = _wait_s(request.headers.get("Prefer"))
    if pred.plan is None and wait:
        left = pred.done_at - time.monotonic()
        if left > 0:
            await asyncio.sleep(min(left, wait))
    elif pred.plan is None:
        return web.json_response(_json(request, pred, "starting"), status=201)
    return web.json_response(_json(request, pred, pred.status()), status=201)


def _wait_s(prefer: str | None) -> float:
    """Seconds ``Prefer: wait[=N]`` holds the answer (0: no wait asked)."""
    for part in (prefer or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return float(min(60, max(1, int(value)))) if value else 60.0
            except ValueError:
                return 0.0
    return 0.0


def _json(request: web.Request, pred: _Prediction, status: str) -> dict[str, Any]:
    origin = f"{request.scheme}://{request.host}"
    state = request.app[STATE_KEY]
    done = status in ("succeeded", "failed", "canceled")
    if status == "succeeded" and pred.output is None:
        pred.output = _render(state, pred, origin, request.path)
    get = f"{origin}/v1/predictions/{pred.id}"
    return {
        "id": pred.id, "model": pred.model.ref, "version": pred.model.version if not pred.model.official else "hidden",
        "input": pred.input, "logs": _logs(pred, status), "output": pred.output if status == "succeeded" else None,
        "error": pred.error if status == "failed" else None, "status": status,
        "created_at": _stamp(pred.created), "started_at": _stamp(pred.created) if status != "starting" else None,
        "completed_at": _stamp(time.time()) if done else None, "data_removed": False,
        "metrics": {"predict_time": 0.42, "total_time": 0.5} if done else {},
        "urls": {"get": get, "cancel": get + "/cancel", "stream": f"{origin}/stream/{pred.id}",
                 "web": f"https://replicate.com/p/{pred.id}"},
        "deadline": None, "deployment": None,
    }


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(at))


def _logs(pred: _Prediction, status: str) -> str:
    if status == "starting":
        return ""
    seed = pred.input.get("seed", 4242)
    if pred.plan is not None and status == "processing":
        done = min(pred.steps, pred.plan[: pred.gets + 1].count("processing"))
    else:
        done = pred.steps if status != "processing" else 0
    bars = [f"{step * 100 // pred.steps:3d}%|{'#' * (step * 10 // pred.steps):<10}| {step}/{pred.steps} "
            "[00:00<00:00,  9.9it/s]" for step in range(1, done + 1)]
    return "\n".join([f"Using seed: {seed}", *bars])


def _render(state: _State, pred: _Prediction, origin: str, path: str) -> list[str]:
    knobs = state.knobs
    many = knobs.take("many_images", path)
    hostile = knobs.take("image_url", path)
    width, height, fmt = pred.model.size_of(pred.input)
    count = int(many.get("images", 300)) if many is not None else int(pred.input.get("num_outputs", 1))
    seed = int(pred.input.get("seed", 4242))
    urls = []
    for i in range(count):
        data = make_image(64, 64, "", 0, fmt) if many else make_image(width, height, pred.input["prompt"], seed + i,
                                                                      "jpeg" if fmt == "jpg" else fmt)
        if pred.as_data:
            urls.append(f"data:{_CONTENT_TYPES[fmt]};base64," + base64.b64encode(data).decode())
            continue
        token = uuid.uuid4().hex
        state.files[token] = (data, _CONTENT_TYPES[fmt])
        urls.append(hostile["url"] if hostile else f"{origin}/delivery/{token}.{fmt}")
    return urls


async def _get(request: web.Request) -> web.Response:
    pred = request.app[STATE_KEY].predictions.get(request.match_info["id"])
    if pred is None:
        return problem(404, "Not found", "Not found.")
    pred.gets += 1
    return web.json_response(_json(request, pred, pred.status()))


async def _cancel(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    pred = state.predictions.get(request.match_info["id"])
    if pred is None:
        return problem(404, "Not found", "Not found.")
    if pred.status() not in ("succeeded", "failed", "canceled"):
        pred.canceled = True
        state.canceled.append(pred.id)
    return web.json_response(_json(request, pred, pred.status()))


async def _model(request: web.Request) -> web.Response:
    model = MODELS.get(f"{request.match_info['owner']}/{request.match_info['name']}")
    if model is None:
        return problem(404, "Not found", "Not found.")
    return web.json_response(model.model_json())


async def _version(request: web.Request) -> web.Response:
    model = MODELS.get(f"{request.match_info['owner']}/{request.match_info['name']}")
    if model is None or model.version != request.match_info["version"]:
        return problem(404, "Not found", "Not found.")
    return web.json_response(model.version_json())


async def _account(request: web.Request) -> web.Response:
    return web.json_response({"type": "user", "username": "emulator", "name": "Replicate Emulator",
                              "github_url": None})


async def _file(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    entry = state.files.get(request.match_info["name"].split(".", 1)[0])
    if entry is None:
        return web.Response(status=404, text="Not Found")
    junk = state.knobs.take("not_image", request.path)
    if junk is not None:
        return await send_junk(request, int(junk.get("size", 0)), headers={"Content-Type": entry[1]},
                               short_body=b"<Error><Code>AccessDenied</Code></Error>")
    return web.Response(body=entry[0], content_type=entry[1])


if __name__ == "__main__":  # python -m imagegate.testing replicate --port 8087
    from imagegate.testing.cli import main

    raise SystemExit(main(kind="replicate"))
