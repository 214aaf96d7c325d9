"""An AUTOMATIC1111 ``--api`` stand-in: txt2img with real PNGs, progress, options, models.

Speaks the webui's wire format (modules/api/api.py): txt2img answers
``{"images": [b64], "parameters": {...}, "info": "<JSON string with all_seeds>"}``; a body
that fails validation gets FastAPI's 422 ``{"detail": [{"loc", "msg", "type"}]}``; an unknown
sampler gets 400 ``{"error": "HTTPException", "detail": "Sampler not found"}``; generations are
serialised by one lock like the real webui. Optional HTTP Basic auth (``--api-auth``).

Knobs, besides the shared ones: ``arm("not_image")`` -> an image that is HTML;
``arm("many_images", count=3000)`` -> ``count`` small images whatever ``batch_size`` asked
(hostile: a provider that does not honour the request).

    python -m imagegate.testing a1111 --port 7860
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from http import HTTPStatus
from typing import Any

from aiohttp import web

from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs, misbehaviour_middleware, record_json_body

__all__ = ["KNOBS_KEY", "create_app"]

KNOBS_KEY = web.AppKey("knobs", Knobs)
SAMPLERS = ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM"]
MODELS = [
    {"title": "sd_xl_base_1.0.safetensors [31e35c80fc]", "model_name": "sd_xl_base_1.0",
     "hash": "31e35c80fc", "sha256": None, "filename": "/models/sd_xl_base_1.0.safetensors", "config": None},
]
_INT_FIELDS = ("width", "height", "steps", "seed", "batch_size", "n_iter")
_NUM_FIELDS = ("cfg_scale",)
_STR_FIELDS = ("prompt", "negative_prompt", "sampler_name", "sampler_index")


def _error_body(status: int) -> dict[str, Any]:
    names = {401: "Incorrect username or password", 500: "OutOfMemoryError"}
    detail = names.get(status) or _phrase(status)
    return {"error": "HTTPException", "detail": detail, "body": "", "errors": ""}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"



def _validate(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]
    problems = []
    for key in _INT_FIELDS:
        if key in body and (not isinstance(body[key], int) or isinstance(body[key], bool)):
            problems.append({"loc": ["body", key], "msg": "value is not a valid integer", "type": "type_error.integer"})
    for key in _NUM_FIELDS:
        if key in body and not isinstance(body[key], int | float):
            problems.append({"loc": ["body", key], "msg": "value is not a valid float", "type": "type_error.float"})
    for key in _STR_FIELDS:
        if key in body and not isinstance(body[key], str):
            problems.append({"loc": ["body", key], "msg": "str type expected", "type": "type_error.str"})
    return problems


def create_app(
    *, knobs: Knobs | None = None, username: str | None = None, password: str | None = None
) -> web.Application:
    """The emulator app; pass ``username``/``password`` to require Basic auth."""
    knobs = knobs or Knobs()
    lock = asyncio.Lock()
    routes = web.RouteTableDef()
    expected_auth = (
        "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode() if username else None
    )

    @web.middleware
    async def basic_auth(request: web.Request, handler: Any) -> web.StreamResponse:
        protected = expected_auth and request.path.startswith("/sdapi/")
        if protected and request.headers.get("Authorization") != expected_auth:
            return web.json_response({"detail": "Incorrect username or password"}, status=401)
        return await handler(request)

    @routes.post("/sdapi/v1/txt2img")
    async def txt2img(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response(
                {"detail": [{"loc": ["body"], "msg": "Expecting value", "type": "value_error.jsondecode"}]},
                status=422,
            )
        problems = _validate(body)
        if problems:
            return web.json_response({"detail": problems}, status=422)
        sampler = body.get("sampler_name") or body.get("sampler_index") or "Euler"
        if sampler not in SAMPLERS:
            return web.json_response({"error": "HTTPException", "detail": "Sampler not found"}, status=400)
        width, height = body.get("width", 512), body.get("height", 512)
        count = body.get("batch_size", 1) * body.get("n_iter", 1)
        seed = body.get("seed", -1)
        if seed == -1:
            seed = random.randrange(2**32)
        prompt = body.get("prompt", "")
        async with lock:  # the webui's queue_lock: one generation at a time
            many = knobs.take("many_images", request.path)
            if knobs.take("not_image", request.path) is not None:
                images = [base64.b64encode(b"<html>not an image</html>").decode()]
            elif many is not None:  # hostile: far more images than were asked for
                one = base64.b64encode(make_image(64, 64, prompt, seed)).decode()
                images, count = [one] * int(many.get("count", 3000)), int(many.get("count", 3000))
            else:
                images = [
                    base64.b64encode(make_image(width, height, prompt, seed + i)).decode()
                    for i in range(count)
                ]
        info = {
            "prompt": prompt,
            "all_prompts": [prompt] * count,
            "negative_prompt": body.get("negative_prompt", ""),
            "seed": seed,
            "all_seeds": [seed + i for i in range(count)],
            "subseed": seed,
            "all_subseeds": [seed + i for i in range(count)],
            "width": width,
            "height": height,
            "sampler_name": sampler,
            "cfg_scale": body.get("cfg_scale", 7.0),
            "steps": body.get("steps", 50),
            "batch_size": body.get("batch_size", 1),
            "sd_model_name": "sd_xl_base_1.0",
            "sd_model_hash": MODELS[0]["hash"],
            "index_of_first_image": 0,
            "infotexts": [f"{prompt}\nSteps: {body.get('steps', 50)}, Seed: {seed + i}" for i in range(count)],
        }
        return web.json_response({"images": images, "parameters": body, "info": json.dumps(info)})

    @routes.get("/sdapi/v1/progress")
    async def progress(request: web.Request) -> web.Response:
        busy = lock.locked()
        return web.json_response(
            {
                "progress": 0.5 if busy else 0.0,
                "eta_relative": 1.0 if busy else 0.0,
                "state": {"job": "txt2img" if busy else "", "job_count": int(busy), "interrupted": False,
                          "skipped": False, "sampling_step": 0, "sampling_steps": 0},
                "current_image": None,
                "textinfo": None,
            }
        )

    @routes.get("/sdapi/v1/options")
    async def options(request: web.Request) -> web.Response:
        return web.json_response({"sd_model_checkpoint": MODELS[0]["title"], "samples_format": "png"})

    @routes.get("/sdapi/v1/sd-models")
    async def sd_models(request: web.Request) -> web.Response:
        return web.json_response(MODELS)

    @routes.get("/sdapi/v1/samplers")
    async def samplers(request: web.Request) -> web.Response:
        return web.json_response([{"name": s, "aliases": [], "options": {}} for s in SAMPLERS])

    @routes.get("/internal/ping")
    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application(
        middlewares=[
            basic_auth,
            misbehaviour_middleware(
                knobs, error_body=_error_body, generation_paths=("/sdapi/v1/txt2img",), record_body=record_json_body
            ),
        ],
        client_max_size=16 * 1024**2,
    )
    app[KNOBS_KEY] = knobs
    app.add_routes(routes)
    return app



if __name__ == "__main__":  # python -m imagegate.testing.a1111 --port 7860
    from imagegate.testing.cli import main

    raise SystemExit(main(kind="a1111"))
