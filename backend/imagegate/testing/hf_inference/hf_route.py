"""``POST /hf-inference/models/{owner}/{name}``: HF's own provider behind the router.

The Bearer token must be the stand-in's (else 401 ``{"error": "Invalid credentials in
Authorization header"}``); the body ``{"inputs": str, "parameters": {...}}`` is checked for
types (400 for a body that is no JSON object, 422 naming the field otherwise); a model
hf-inference does not serve gets 404 plain "Not Found"; the answer is the raw image bytes
(``image/png``), with ``x-inference-provider`` and ``x-request-id`` headers
(``/work/shared/providers.md`` §4).

Knobs: ``arm("loading", estimated_time=20)`` -> 503 ``{"error": "Model ... is currently
loading", "estimated_time": 20}``; ``arm("no_balance")`` -> 402 with ``X-Error-Code:
NOT_ENOUGH_BALANCE``; ``arm("mislabel")`` -> PNG bytes labelled ``image/jpeg``;
``arm("jpeg")`` -> real JPEG bytes; ``arm("not_image")`` -> an HTML page with status 200.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from aiohttp import web

from imagegate.testing.hf_inference.hub import unauthorized
from imagegate.testing.hf_inference.state import RouterState
from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs

__all__ = ["PREFIX", "hf_inference_routes", "no_balance"]

PREFIX = "/hf-inference/models/"
_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "negative_prompt": (str,),
    "width": (int,),
    "height": (int,),
    "num_inference_steps": (int,),
    "guidance_scale": (int, float),
    "seed": (int,),
    "scheduler": (str,),
}


def _validate(body: Any) -> tuple[int, str] | None:
    """(status, message) for a body the real service refuses, else None."""
    if not isinstance(body, dict):
        return 400, "Invalid JSON body: expected an object with 'inputs'"
    inputs = body.get("inputs")
    if not isinstance(inputs, str) or not inputs:
        return 422, "Input validation error: `inputs` must be a non-empty string"
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        return 422, "Input validation error: `parameters` must be an object"
    for key, types in _PARAM_TYPES.items():
        value = params.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            return 422, f"Input validation error: `parameters.{key}` has the wrong type"
    for key in ("width", "height"):
        if key in params and not 64 <= params[key] <= 2048:
            return 422, f"Input validation error: `parameters.{key}` must be in 64..2048"
    return None


def no_balance(knobs: Knobs, path: str) -> web.Response | None:
    """``arm("no_balance")``: the router's 402 when the account's credits are spent."""
    if knobs.take("no_balance", path) is None:
        return None
    message = "You have exceeded your monthly included credits for Inference Providers."
    return web.json_response(
        {"error": message}, status=402,
        headers={"X-Error-Code": "NOT_ENOUGH_BALANCE", "X-Error-Message": message},
    )


def hf_inference_routes(state: RouterState) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.post(PREFIX + "{model:.+}")
    async def text_to_image(request: web.Request) -> web.StreamResponse:
        if not state.authorized(request):
            return unauthorized()
        model = request.match_info["model"]
        if state.served("hf-inference", model) is None:
            return web.Response(status=404, text="Not Found")
        try:
            body = await request.json()
        except ValueError:
            body = None
        problem = _validate(body)
        if problem is not None:
            return web.json_response({"error": problem[1]}, status=problem[0])
        early = _model_state_fault(state.knobs, request.path, model)
        if early is not None:
            return early
        return _image_response(state.knobs, request.path, body)

    return routes


def _model_state_fault(knobs: Knobs, path: str, model: str) -> web.Response | None:
    loading = knobs.take("loading", path)
    if loading is not None:
        estimated = float(loading.get("estimated_time", 20.0))
        return web.json_response(
            {"error": f"Model {model} is currently loading", "estimated_time": estimated}, status=503
        )
    return no_balance(knobs, path)


def _image_response(knobs: Knobs, path: str, body: dict[str, Any]) -> web.Response:
    params = body.get("parameters") or {}
    width, height = params.get("width", 1024), params.get("height", 1024)
    seed = params.get("seed")
    seed = random.randrange(2**32) if seed is None else seed
    headers = {"x-inference-provider": "hf-inference", "x-request-id": uuid.uuid4().hex}
    if knobs.take("not_image", path) is not None:
        return web.Response(body=b"<html><body>Service starting</body></html>", content_type="text/html",
                            headers=headers)
    if knobs.take("jpeg", path) is not None:
        data, content_type = make_image(width, height, body["inputs"], seed, "jpeg"), "image/jpeg"
    else:
        data = make_image(width, height, body["inputs"], seed, "png")
        content_type = "image/jpeg" if knobs.take("mislabel", path) is not None else "image/png"
    return web.Response(body=data, content_type=content_type, headers=headers)
