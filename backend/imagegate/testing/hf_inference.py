"""A Hugging Face router stand-in: ``hf-inference`` text-to-image, plus the Hub model-info and
whoami routes the backend's probe uses.

- ``POST /hf-inference/models/{owner}/{name}``: Bearer token must equal ``api_key`` (else
  401 ``{"error": "Invalid credentials in Authorization header"}``); body
  ``{"inputs": str, "parameters": {...}}`` checked for types (400 for a body that is no
  JSON object, 422 naming the field otherwise); a model not in ``SERVED_MODELS`` gets 404
  plain "Not Found"; answers the raw image bytes (``image/png``), with
  ``x-inference-provider`` and ``x-request-id`` headers.
- ``GET /api/models/{owner}/{name}`` and ``GET /api/whoami-v2``: the Hub's answers, as
  ``huggingface_hub``'s own ``InferenceClient`` calls them (notes/hf_providers.md §4-§5):
  with no query, the model info with ``pipeline_tag`` (``provider="hf-inference"`` checks it
  is ``text-to-image`` before posting) and ``tags``; with ``expand=inferenceProviderMapping``
  (the Python client's form; the JS client sends ``expand[]=``; both, and repeated keys, are
  accepted) only ``_id``, ``id`` and the expanded mapping, as ``model_info``'s docstring
  says ("only the properties in the list will be returned"; UNCONFIRMED on the live Hub);
  404 with ``X-Error-Code: RepoNotFound`` for an unknown model.

Emulator knobs, besides the shared ones (latency, status, reset, stall, stall_body):
``knobs.arm("loading", estimated_time=20)`` -> 503 ``{"error": "Model ... is currently
loading", "estimated_time": 20}``; ``arm("no_balance")`` -> 402 with
``X-Error-Code: NOT_ENOUGH_BALANCE``; ``arm("mislabel")`` -> PNG bytes labelled
``image/jpeg``; ``arm("jpeg")`` -> real JPEG bytes; ``arm("not_image")`` -> an HTML page
with status 200.

    python -m imagegate.testing hf_inference --port 8080 --tls --api-key hf_test
"""

from __future__ import annotations

import random
import uuid
from http import HTTPStatus
from typing import Any

from aiohttp import web

from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs, misbehaviour_middleware, record_json_body

__all__ = ["KNOBS_KEY", "SERVED_MODELS", "create_app"]

KNOBS_KEY = web.AppKey("knobs", Knobs)
SERVED_MODELS = frozenset(
    {
        "black-forest-labs/FLUX.1-schnell",
        "black-forest-labs/FLUX.1-dev",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "emulator/tiny",
    }
)
_GENERATION_PREFIX = "/hf-inference/models/"
_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "negative_prompt": (str,),
    "width": (int,),
    "height": (int,),
    "num_inference_steps": (int,),
    "guidance_scale": (int, float),
    "seed": (int,),
    "scheduler": (str,),
}


def _error_body(status: int) -> Any:
    if status == 404:
        return "Not Found"
    try:
        return {"error": HTTPStatus(status).phrase}
    except ValueError:
        return {"error": "error"}


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


def create_app(*, knobs: Knobs | None = None, api_key: str | None = "test-key") -> web.Application:
    """The emulator app; requests must carry ``Authorization: Bearer <api_key>``
    (``api_key=None`` accepts any caller)."""
    knobs = knobs or Knobs()
    routes = web.RouteTableDef()

    def authorized(request: web.Request) -> bool:
        return api_key is None or request.headers.get("Authorization") == f"Bearer {api_key}"

    def unauthorized() -> web.Response:
        return web.json_response({"error": "Invalid credentials in Authorization header"}, status=401)

    @routes.post(_GENERATION_PREFIX + "{model:.+}")
    async def text_to_image(request: web.Request) -> web.StreamResponse:
        if not authorized(request):
            return unauthorized()
        model = request.match_info["model"]
        if model not in SERVED_MODELS:
            return web.Response(status=404, text="Not Found")
        try:
            body = await request.json()
        except ValueError:
            body = None
        problem = _validate(body)
        if problem is not None:
            return web.json_response({"error": problem[1]}, status=problem[0])
        early = _model_state_fault(knobs, request.path, model)
        if early is not None:
            return early
        return _image_response(knobs, request.path, body)

    @routes.get("/api/models/{model:.+}")
    async def model_info(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") and not authorized(request):
            return unauthorized()
        model = request.match_info["model"]
        if model not in SERVED_MODELS:
            return web.json_response(
                {"error": "Repository not found"}, status=404, headers={"X-Error-Code": "RepoNotFound"}
            )
        doc: dict[str, Any] = {"_id": uuid.uuid5(uuid.NAMESPACE_URL, model).hex[:24], "id": model}
        expand = request.query.getall("expand", []) + request.query.getall("expand[]", [])
        if not expand:
            doc.update(modelId=model, pipeline_tag="text-to-image", library_name="diffusers",
                       tags=["diffusers", "text-to-image", "safetensors"], private=False)
        if "inferenceProviderMapping" in expand:
            doc["inferenceProviderMapping"] = {
                "hf-inference": {"status": "live", "providerId": model, "task": "text-to-image"}
            }
        return web.json_response(doc)

    @routes.get("/api/whoami-v2")
    async def whoami(request: web.Request) -> web.Response:
        if not request.headers.get("Authorization") or not authorized(request):
            return unauthorized()
        return web.json_response(
            {"type": "user", "name": "emulator-user",
             "auth": {"type": "access_token", "accessToken": {"displayName": "emulator", "role": "read"}}}
        )

    app = web.Application(
        middlewares=[
            misbehaviour_middleware(
                knobs, error_body=_error_body, generation_paths=(_GENERATION_PREFIX,), record_body=record_json_body
            )
        ],
        client_max_size=4 * 1024**2,
    )
    app[KNOBS_KEY] = knobs
    app.add_routes(routes)
    return app


def _model_state_fault(knobs: Knobs, path: str, model: str) -> web.Response | None:
    loading = knobs.take("loading", path)
    if loading is not None:
        estimated = float(loading.get("estimated_time", 20.0))
        return web.json_response(
            {"error": f"Model {model} is currently loading", "estimated_time": estimated}, status=503
        )
    if knobs.take("no_balance", path) is not None:
        message = "You have exceeded your monthly included credits for Inference Providers."
        return web.json_response(
            {"error": message}, status=402,
            headers={"X-Error-Code": "NOT_ENOUGH_BALANCE", "X-Error-Message": message},
        )
    return None


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


if __name__ == "__main__":  # python -m imagegate.testing.hf_inference --port 8080
    from imagegate.testing.cli import main

    raise SystemExit(main(kind="hf_inference"))
