"""The providers that answer in one exchange: fal-ai, together, nscale, replicate.

Each route speaks what its provider takes and answers (sources in
``imagegate.backends.hf_inference.providers``; the request checks and error shapes in
``checks.py``). Images come back the way each provider sends them: fal and Replicate as a URL
on this stand-in (``/files/...``, the provider's CDN), Together and Nscale as base64. The
encoding is each provider's documented default where there is one (fal FLUX ``output_format``
jpeg; Replicate flux-schnell webp; Together jpeg), else PNG.

Knobs: ``arm("nsfw")`` -> fal's ``has_nsfw_concepts: [true]``; ``arm("job_failed")`` -> a
failed Replicate prediction; ``arm("no_output")`` -> a Replicate prediction still
``processing`` when the wait ended; ``arm("image_url", url=...)`` -> that URL instead of ours.
"""

from __future__ import annotations

import base64
import random
import re
import time
from typing import Any

from aiohttp import web

from imagegate.testing.hf_inference.checks import NUMBER, admitted, first_problem, refused
from imagegate.testing.hf_inference.state import RouterState, image_path
from imagegate.testing.images import make_image

__all__ = ["sync_routes"]

# fal's ImageSize enum (https://fal.ai/models/fal-ai/flux/schnell/api: image_size)
_FAL_SIZES = {
    "square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576),
}
_FAL_RULES = {"prompt": ((str,), True), "negative_prompt": ((str,), False),
              "num_inference_steps": ((int,), False), "guidance_scale": (NUMBER, False),
              "seed": ((int,), False), "image_size": ((str, dict), False), "loras": ((list,), False),
              "model_name": ((str,), False)}
# Together's images API reference (https://docs.together.ai/reference/post-images-generations)
_TOGETHER_RULES = {"model": ((str,), True), "prompt": ((str,), True), "width": ((int,), False),
                   "height": ((int,), False), "steps": ((int,), False), "seed": ((int,), False),
                   "n": ((int,), False), "negative_prompt": ((str,), False),
                   "guidance_scale": (NUMBER, False), "response_format": ((str,), False)}
# Nscale's create-image reference (https://docs.nscale.com/api-reference/inferencing/create-image)
_NSCALE_RULES = {"model": ((str,), True), "prompt": ((str,), True), "size": ((str,), False),
                 "n": ((int,), False), "response_format": ((str,), False)}
_REPLICATE_BODY = {"input": ((dict,), True), "version": ((str,), False)}
_REPLICATE_INPUT = {"prompt": ((str,), True), "negative_prompt": ((str,), False),
                    "width": ((int,), False), "height": ((int,), False),
                    "num_inference_steps": ((int,), False), "guidance_scale": (NUMBER, False),
                    "seed": ((int,), False), "lora_weights": ((str,), False)}
_SIZE = re.compile(r"(\d{2,5})x(\d{2,5})")


def image_url(state: RouterState, request: web.Request, width: int, height: int, seed: int,
              prompt: str, fmt: str) -> str:
    """Where an answer says its image is: this stand-in's ``/files``, or ``arm("image_url")``."""
    hostile = state.knobs.take("image_url", request.path)
    if hostile is not None:
        return str(hostile["url"])
    return f"{request.scheme}://{request.host}{image_path(width, height, seed, prompt, fmt)}"


def _seed(body: dict[str, Any]) -> int:
    seed = body.get("seed")
    return seed if isinstance(seed, int) else random.randrange(2**31)


def _b64(width: int, height: int, prompt: str, seed: int, fmt: str) -> str:
    return base64.b64encode(make_image(width, height, prompt, seed, fmt)).decode()


def sync_routes(state: RouterState) -> web.RouteTableDef:
    routes = web.RouteTableDef()
    knobs = state.knobs

    @routes.post("/fal-ai/{pid:.+}")
    async def fal(request: web.Request) -> web.Response:
        body = await admitted(state, request, "fal-ai", _FAL_RULES, path_id=request.match_info["pid"])
        if isinstance(body, web.Response):
            return body
        problem = None
        size = body.get("image_size", "landscape_4_3")
        if isinstance(size, str):
            if size not in _FAL_SIZES:
                problem = problem or ("image_size", f"must be one of {', '.join(_FAL_SIZES)} or an object")
            width, height = _FAL_SIZES.get(size, (1024, 768))
        else:
            width, height = size.get("width"), size.get("height")
            if not isinstance(width, int) or not isinstance(height, int) or width < 1 or height < 1:
                problem = problem or ("image_size", "width and height must be positive integers")
        loras = body.get("loras") or []
        if not all(isinstance(x, dict) and isinstance(x.get("path"), str) for x in loras):
            problem = problem or ("loras", "each entry needs a 'path' string")
        if problem:
            return refused("fal-ai", *problem)
        assert isinstance(width, int) and isinstance(height, int)
        seed, prompt = _seed(body), body["prompt"]
        url = image_url(state, request, width, height, seed, prompt, "jpeg")
        nsfw = knobs.take("nsfw", request.path) is not None
        return web.json_response({
            "images": [{"url": url, "width": width, "height": height, "content_type": "image/jpeg"}],
            "timings": {"inference": 0.01}, "seed": seed, "has_nsfw_concepts": [nsfw], "prompt": prompt,
        })

    @routes.post("/together/v1/images/generations")
    async def together(request: web.Request) -> web.Response:
        body = await admitted(state, request, "together", _TOGETHER_RULES, body_model=True)
        if isinstance(body, web.Response):
            return body
        fmt = body.get("response_format", "url")
        n = body.get("n", 1)
        if fmt not in ("base64", "url"):
            return refused("together", "response_format", "must be 'base64' or 'url'")
        if not 1 <= n <= 4:
            return refused("together", "n", "must be between 1 and 4")
        width, height, seed = body.get("width", 1024), body.get("height", 768), _seed(body)
        data = []
        for i in range(n):
            if fmt == "base64":
                item = {"index": i, "b64_json": _b64(width, height, body["prompt"], seed + i, "jpeg")}
            else:
                item = {"index": i, "url": image_url(state, request, width, height, seed + i, body["prompt"], "jpeg")}
            data.append(item)
        return web.json_response({"id": state.new_id(), "model": body["model"], "object": "list", "data": data})

    @routes.post("/nscale/v1/images/generations")
    async def nscale(request: web.Request) -> web.Response:
        body = await admitted(state, request, "nscale", _NSCALE_RULES, body_model=True)
        if isinstance(body, web.Response):
            return body
        size = _SIZE.fullmatch(body.get("size", "512x512"))
        if size is None:
            return refused("nscale", "size", "must be WIDTHxHEIGHT")
        if body.get("response_format", "b64_json") != "b64_json":
            return refused("nscale", "response_format", "only 'b64_json' is supported")
        width, height = int(size[1]), int(size[2])
        seed = random.randrange(2**31)  # no seed in Nscale's API
        items = [{"b64_json": _b64(width, height, body["prompt"], seed + i, "png")} for i in range(body.get("n", 1))]
        return web.json_response({"created": int(time.time()), "data": items})

    @routes.post("/replicate/v1/models/{owner}/{name}/predictions")
    async def replicate_model(request: web.Request) -> web.Response:
        pid = f"{request.match_info['owner']}/{request.match_info['name']}"
        return await _replicate(request, pid)

    @routes.post("/replicate/v1/predictions")
    async def replicate_version(request: web.Request) -> web.Response:
        return await _replicate(request, None)

    async def _replicate(request: web.Request, pid: str | None) -> web.Response:
        body = await admitted(state, request, "replicate", _REPLICATE_BODY, path_id=pid)
        if isinstance(body, web.Response):
            return body
        if pid is None:  # a version-pinned model: the version names it
            pins = [p["replicate"].provider_id for p in state.mapping.values() if "replicate" in p]
            pid = next((x for x in pins if x.endswith(f":{body.get('version')}")), None)
            if pid is None:
                return refused("replicate", "version", "not a version of a model this account can run")
        inputs = body["input"]
        problem = first_problem(inputs, _REPLICATE_INPUT)
        if problem:
            return refused("replicate", *problem)
        return web.json_response(_prediction(state, request, pid, inputs), status=201)

    return routes


def _prediction(state: RouterState, request: web.Request, pid: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """A Replicate prediction object (https://replicate.com/docs/reference/http#predictions.get):
    ``Prefer: wait`` holds the answer until it ends; without it, it is only ``starting``."""
    knobs, pred = state.knobs, state.new_id()
    model, _, version = pid.partition(":")
    doc: dict[str, Any] = {
        "id": pred, "model": model, "version": version or "hidden", "input": inputs, "logs": "",
        "output": None, "data_removed": False, "error": None, "status": "starting",
        "created_at": "2026-01-01T00:00:00.000Z",
        "urls": {"get": f"https://api.replicate.com/v1/predictions/{pred}",
                 "cancel": f"https://api.replicate.com/v1/predictions/{pred}/cancel"},
    }
    if not request.headers.get("Prefer", "").startswith("wait"):
        return doc
    if knobs.take("job_failed", request.path) is not None:
        return {**doc, "status": "failed", "error": "CUDA out of memory"}
    if knobs.take("nsfw", request.path) is not None:
        return {**doc, "status": "failed", "error": "NSFW content detected. Try running it again, or try a different prompt."}
    if knobs.take("no_output", request.path) is not None:
        return {**doc, "status": "processing"}
    width, height = inputs.get("width", 1024), inputs.get("height", 1024)
    url = image_url(state, request, width, height, _seed(inputs), inputs["prompt"], "webp")
    return {**doc, "status": "succeeded", "output": [url]}
