"""An AUTOMATIC1111 ``--api`` stand-in: txt2img with real images, progress, options, models.

Speaks the webui's wire format (modules/api/api.py): txt2img answers
``{"images": [b64], "parameters": {...}, "info": "<JSON string with all_seeds>"}``; a body
that fails validation gets FastAPI's 422 ``{"detail": [{"loc", "msg", "type"}]}``;
generations are serialised by one lock like the real webui. Optional HTTP Basic auth
(``--api-auth``). The webui's defaults and silent fallbacks, as in 1.9+:

- omitted fields take the API's defaults (``StableDiffusionProcessingTxt2Img``): 512x512,
  **50 steps** (not the UI's 20), cfg 7.0, sampler ``sampler_index`` "Euler";
- the sampler is resolved like ``sd_samplers.get_sampler_and_scheduler``: a trailing
  scheduler name ("DPM++ 2M Karras") is split off, the rest is looked up by exact name in
  ``all_samplers_map``, and an **unknown name silently becomes ``samplers[0]``** ("DPM++
  2M" since 1.9), which ``validate_sampler_name`` then accepts: no error reaches the caller;
- ``override_settings.sd_model_checkpoint`` naming no known checkpoint (any of
  ``CheckpointInfo.ids``: title, name, model_name, hash, sha256, ...) is **silently dropped**
  and the loaded checkpoint is used (``processing.process_images``);
- images are encoded in ``opts.samples_format`` (png by default; ``create_app(
  samples_format="webp")``), which ``GET /sdapi/v1/options`` reports.

``GET /sdapi/v1/samplers``, ``/schedulers`` (1.9+) and ``/sd-models`` list what the
emulator knows, in the webui's shapes.

``flavor`` makes it one of the forks that speak this API, where they differ (errors,
samplers, defaults, routes; ``a1111_forks.py`` with sources): ``"forge"``, ``"reforge"``,
``"sdnext"`` (under ``--api-only``).

Progress is the webui's own (``a1111_webui.py``, with sources): ``force_task_id``, sampling
steps over time (``step_s`` seconds each; 0 by default: instant), ``/internal/progress`` with
live previews, the global ``/sdapi/v1/progress``, and ``/sdapi/v1/interrupt``. A client that
goes away does not stop its job, as in the webui; an interrupt does.

Knobs, besides the shared ones: ``arm("not_image")`` -> an image that is HTML;
``arm("many_images", images=3000)`` -> ``images`` small images whatever ``batch_size`` asked
(hostile: a provider that does not honour the request).

    python -m imagegate.testing a1111 --port 7860 [--step-s 0.05]
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from typing import Any

from aiohttp import web

from imagegate.testing.a1111_forks import A1111_SAMPLERS, A1111_SCHEDULERS, FLAVORS, Flavor
from imagegate.testing.a1111_webui import Latent, Webui, add_progress_routes
from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs, misbehaviour_middleware, record_json_body

__all__ = ["FLAVORS", "KNOBS_KEY", "create_app"]

KNOBS_KEY = web.AppKey("knobs", Knobs)
# samplers[0] first: A1111 1.9 moved "DPM++ 2M" to the head of samplers_k_diffusion
# (modules/sd_samplers_kdiffusion.py), so it is the fallback for an unknown name.
SAMPLERS = A1111_SAMPLERS
SCHEDULERS = A1111_SCHEDULERS  # (name, label, aliases), as GET /sdapi/v1/schedulers lists them
MODELS = [
    {"title": "sd_xl_base_1.0.safetensors [31e35c80fc]", "model_name": "sd_xl_base_1.0",
     "hash": "be9edd61", "sha256": "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
     "filename": "/models/Stable-diffusion/sd_xl_base_1.0.safetensors", "config": None},
    {"title": "dreamshaper_8.safetensors [879db523c3]", "model_name": "dreamshaper_8",
     "hash": "9d40847d", "sha256": "879db523c30d3b9017143d56705015e15a2cb5628762c11d086fed9538abd7fd",
     "filename": "/models/Stable-diffusion/dreamshaper_8.safetensors", "config": None},
]
_FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}


def checkpoint_ids(model: dict[str, Any]) -> list[str]:
    """The names a checkpoint answers to (modules/sd_models.py ``CheckpointInfo.ids``)."""
    name = str(model["title"]).rsplit(" [", 1)[0]
    stem = str(model["filename"]).rsplit("/", 1)[-1].rsplit(".", 1)[0]
    short = str(model["sha256"])[:10]
    return [model["hash"], model["model_name"], model["title"], name, stem, f"{name} [{model['hash']}]",
            short, model["sha256"], f"{name} [{short}]", f"{stem} [{short}]"]


def resolve_sampler(name: str | None, flavor: Flavor = FLAVORS["a1111"]) -> tuple[str | None, str]:
    """(sampler, scheduler label) as A1111 1.9+ (and Forge, reForge) resolves a requested
    name: exact names only, an unknown one silently replaced by ``samplers[0]``. SD.Next has
    no schedulers to split off and refuses an unknown name: None."""
    samplers, schedulers = flavor.samplers, flavor.schedulers or []
    name = name or samplers[0]
    scheduler = schedulers[0][1] if schedulers else "Default"
    for sched_name, label, aliases in schedulers:
        for option in (label, sched_name, *(aliases or [])):
            if name.endswith(" " + option):
                scheduler, name = label, name[: -len(option) - 1]
                break
    if name in samplers:
        return name, scheduler
    return (None if flavor.unknown_sampler_404 else samplers[0]), scheduler


_INT_FIELDS = ("width", "height", "steps", "seed", "batch_size", "n_iter")
_NUM_FIELDS = ("cfg_scale",)
_STR_FIELDS = ("prompt", "negative_prompt", "sampler_name", "sampler_index")


def _validate(body: Any, flavor: Flavor) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]
    problems = []
    for key in _INT_FIELDS:
        if key in body and (not isinstance(body[key], int) or isinstance(body[key], bool)):
            problems.append(flavor.problem(key, "int", body[key]))
    for key in _NUM_FIELDS:
        if key in body and not isinstance(body[key], int | float):
            problems.append(flavor.problem(key, "float", body[key]))
    for key in _STR_FIELDS:
        if key in body and not isinstance(body[key], str):
            problems.append(flavor.problem(key, "str", body[key]))
    return problems


def create_app(
    *,
    knobs: Knobs | None = None,
    username: str | None = None,
    password: str | None = None,
    samples_format: str = "png",
    webui: Webui | None = None,
    step_s: float | None = None,
    flavor: str = "a1111",
) -> web.Application:
    """The emulator app; pass ``username``/``password`` to require Basic auth,
    ``samples_format`` (png, jpg, webp) for the webui's image format setting, ``webui``
    (or just ``step_s``, seconds per sampling step) to shape its progress, and ``flavor``
    (a1111, forge, reforge, sdnext) for the fork it behaves as."""
    knobs = knobs or Knobs()
    fmt = _FORMATS[samples_format]
    loaded = MODELS[0]
    fork = FLAVORS[flavor]
    defaults = fork.defaults
    webui = webui or Webui()
    webui.internal_api = webui.internal_api and fork.internal_api
    webui.honours_force_task_id = webui.honours_force_task_id and fork.honours_force_task_id
    if step_s is not None:
        webui.step_s = step_s
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
        problems = _validate(body, fork)
        if problems:
            return web.json_response({"detail": problems}, status=422)
        sampler, scheduler = resolve_sampler(
            body.get("sampler_name") or body.get("sampler_index") or defaults["sampler"], fork)
        if sampler is None:
            return web.json_response(fork.error(404, "Sampler not found"), status=404)
        wanted = (body.get("override_settings") or {}).get("sd_model_checkpoint")
        model = next((m for m in MODELS if wanted in checkpoint_ids(m)), loaded)  # unknown: ignored
        width, height = body.get("width", defaults["width"]), body.get("height", defaults["height"])
        steps = body.get("steps", defaults["steps"])
        count = body.get("batch_size", 1) * body.get("n_iter", 1)
        seed = body.get("seed", -1)
        if seed == -1:
            seed = random.randrange(2**32)
        prompt = body.get("prompt", "")

        def render() -> list[str]:
            many = knobs.take("many_images", request.path)
            if knobs.take("not_image", request.path) is not None:
                return [base64.b64encode(b"<html>not an image</html>").decode()]
            if many is not None:  # hostile: far more images than were asked for
                one = base64.b64encode(make_image(64, 64, prompt, seed)).decode()
                return [one] * int(many.get("images", 3000))
            return [
                base64.b64encode(make_image(width, height, prompt, seed + i, fmt)).decode()
                for i in range(count)
            ]

        job = webui.submit(  # the webui's queue_lock: one generation at a time
            webui.task_id(body), steps=steps, n_iter=body.get("n_iter", 1),
            latent=Latent(prompt, seed, width, height), render=render,
        )
        images = await asyncio.shield(job)  # a client that goes away leaves the job running
        count = max(count, len(images))
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
            "extra_generation_params": {"Schedule type": scheduler},
            "cfg_scale": body.get("cfg_scale", defaults["cfg_scale"]),
            "steps": steps,
            "batch_size": body.get("batch_size", 1),
            "sd_model_name": model["model_name"],
            "sd_model_hash": model["hash"],
            "index_of_first_image": 0,
            "infotexts": [f"{prompt}\nSteps: {steps}, Seed: {seed + i}" for i in range(count)],
        }
        return web.json_response({"images": images, "parameters": body, "info": json.dumps(info)})

    @routes.get("/sdapi/v1/options")
    async def options(request: web.Request) -> web.Response:
        return web.json_response({"sd_model_checkpoint": loaded["title"], "samples_format": samples_format})

    @routes.get("/sdapi/v1/sd-models")
    async def sd_models(request: web.Request) -> web.Response:
        return web.json_response(MODELS)

    @routes.get("/sdapi/v1/samplers")
    async def samplers(request: web.Request) -> web.Response:
        return web.json_response([{"name": s, "aliases": [], "options": {}} for s in fork.samplers])

    async def schedulers(request: web.Request) -> web.Response:
        return web.json_response([
            {"name": n, "label": label, "aliases": aliases, "default_rho": -1, "need_inner_model": False}
            for n, label, aliases in fork.schedulers or []
        ])

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    @web.middleware
    async def process_time(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.monotonic()
        response = await handler(request)
        if fork.process_time and not response.prepared:
            response.headers["X-Process-Time"] = f"{time.monotonic() - started:.4f}"
        return response

    app = web.Application(
        middlewares=[
            process_time,
            basic_auth,
            misbehaviour_middleware(
                knobs, error_body=fork.error, generation_paths=("/sdapi/v1/txt2img",), record_body=record_json_body
            ),
        ],
        client_max_size=16 * 1024**2,
    )
    app[KNOBS_KEY] = knobs
    app.add_routes(routes)
    if fork.schedulers is not None:
        app.router.add_get("/sdapi/v1/schedulers", schedulers)
    if fork.internal_api:
        app.router.add_get("/internal/ping", ping)
    add_progress_routes(app, webui)
    return app



if __name__ == "__main__":  # python -m imagegate.testing.a1111 --port 7860
    from imagegate.testing.cli import main

    raise SystemExit(main(kind="a1111"))
