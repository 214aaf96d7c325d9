"""A Together AI stand-in: ``POST /v1/images/generations``, ``GET /v1/models``, ``/files/...``.

What it checks, and where each rule comes from (togethercomputer/openapi ``openapi.yaml``
@090263aa unless said otherwise; notes/providers_new.md §4):

- ``Authorization: Bearer <api_key>``: 401 ``{"error": {"message": "Invalid API key
  provided. ...", "type": "invalid_request_error", "param": null, "code":
  "invalid_api_key"}}`` (the body quoted in harshitv804/LawGPT#4).
- The body is a JSON object with ``prompt`` and ``model`` (``required: [prompt, model]``),
  each a string; ``steps``, ``seed``, ``n``, ``width``, ``height`` integers;
  ``guidance_scale`` a number; ``negative_prompt`` a string; ``response_format``
  ``base64|url``; ``output_format`` ``jpeg|png`` (both enums in the spec; a bad value is 400).
- ``n`` 1..4: docs.together.ai images-overview ("1-4"); the spec has no bound.
- ``model`` must be an image model it serves; another one is 404 ``model_not_available``
  (the code Together answers for an unknown model on its other endpoints: status and
  wording UNCONFIRMED for images).
- Errors are ``ErrorData``: ``{"error": {"message", "type", "param", "code"}}``.
- A 200 is ``ImageResponse``: ``{"id", "model", "object": "list", "data": [{"index",
  "b64_json", "type": "b64_json"}]}``, or ``{"index", "url", "type": "url"}`` items served
  under ``/files/`` with no auth. ``output_format`` defaults to **jpeg**.
- ``GET /v1/models`` answers a bare array (``ModelInfoList``) of ``{id, object, created,
  type, display_name, organization}``; a chat model is listed too (``type: "chat"``).

Not enforced (the spec and docs give no limit): width/height ranges and multiples of 8, the
steps range.

Knobs besides the shared ones: ``arm("not_image")`` -> base64 of bytes that are no image;
``arm("many_images", images=300)`` -> that many items whatever ``n`` asked (hostile);
``arm("url_answer")`` -> URL items even when base64 was asked.

    python -m imagegate.testing together --port 8085 --tls --api-key tg-test
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections import OrderedDict
from typing import Any

from aiohttp import web

from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs, misbehaviour_middleware, record_json_body

__all__ = ["CHAT_MODEL", "IMAGE_MODELS", "KNOBS_KEY", "create_app", "error_body"]

KNOBS_KEY = web.AppKey("knobs", Knobs)
_GENERATIONS = "/v1/images/generations"
# the spec's model enum, and Together's SDXL (docs serverless-models, image section)
IMAGE_MODELS = (
    "black-forest-labs/FLUX.1-schnell", "black-forest-labs/FLUX.1-schnell-Free",
    "black-forest-labs/FLUX.1.1-pro", "stabilityai/stable-diffusion-xl-base-1.0",
)
CHAT_MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
_INTS = ("steps", "seed", "n", "width", "height")
_MAX_FILES = 64
_CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}


def error_body(status: int, message: str | None = None, *, code: str | None = None,
               param: str | None = None, type_: str = "invalid_request_error") -> dict[str, Any]:
    """Together's ``ErrorData``."""
    return {"error": {"message": message or f"emulated error {status}", "type": type_,
                      "param": param, "code": code}}


def _error(status: int, message: str, *, code: str | None = None, param: str | None = None) -> web.Response:
    return web.json_response(error_body(status, message, code=code, param=param), status=status)


def validate(body: Any) -> web.Response | None:
    """The error answer for a body Together refuses (see the module docstring), else None."""
    if not isinstance(body, dict):
        return _error(400, "Request body must be a JSON object")
    for key in ("prompt", "model"):
        if not isinstance(body.get(key), str) or not body[key]:
            return _error(400, f"'{key}' is required and must be a non-empty string", param=key)
    for key in _INTS:
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return _error(400, f"'{key}' must be an integer", param=key)
    scale = body.get("guidance_scale")
    if scale is not None and (not isinstance(scale, int | float) or isinstance(scale, bool)):
        return _error(400, "'guidance_scale' must be a number", param="guidance_scale")
    if body.get("negative_prompt") is not None and not isinstance(body["negative_prompt"], str):
        return _error(400, "'negative_prompt' must be a string", param="negative_prompt")
    if body.get("response_format", "url") not in ("base64", "url"):
        return _error(400, "'response_format' must be one of: base64, url", param="response_format")
    if body.get("output_format", "jpeg") not in _CONTENT_TYPES:
        return _error(400, "'output_format' must be one of: jpeg, png", param="output_format")
    if not 1 <= body.get("n", 1) <= 4:
        return _error(400, f"'n' must be between 1 and 4 (got {body['n']})", param="n")
    if body["model"] not in IMAGE_MODELS:
        return _error(404, f"Unable to access model {body['model']}. Please visit "
                      "https://api.together.ai/models to view the list of supported models.",
                      code="model_not_available", param="model")
    return None


def create_app(*, knobs: Knobs | None = None, api_key: str = "test-key", render: bool = False) -> web.Application:
    """The emulator app; clients must send ``Authorization: Bearer <api_key>``; ``render``
    draws every image anew (no cache)."""
    knobs = knobs or Knobs()
    draw = make_image.__wrapped__ if render else make_image
    files: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
    routes = web.RouteTableDef()

    def refused(request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"Bearer {api_key}":
            return None
        return _error(401, "Invalid API key provided. You can find your API key at "
                      "https://api.together.xyz/settings/api-keys.", code="invalid_api_key")

    @routes.post(_GENERATIONS)
    async def generations(request: web.Request) -> web.Response:
        if (answer := refused(request)) is not None:
            return answer
        try:
            body = await request.json()
        except ValueError:
            body = None
        if (answer := validate(body)) is not None:
            return answer
        fmt = body.get("output_format", "jpeg")
        seed = body.get("seed", secrets.randbelow(2**32))
        many = knobs.take("many_images", request.path)
        count = int(many.get("images", 300)) if many is not None else body.get("n", 1)
        as_url = knobs.take("url_answer", request.path) is not None or body.get("response_format", "url") == "url"
        broken = knobs.take("not_image", request.path) is not None
        width, height = (64, 64) if many is not None else (body.get("width", 1024), body.get("height", 1024))
        data = []
        for i in range(count):
            image = b"<html>not an image</html>" if broken else draw(width, height, body["prompt"],
                                                                      seed + (0 if many else i), fmt)
            if as_url:
                name = f"{uuid.uuid4().hex}.{fmt}"
                files[name] = (image, _CONTENT_TYPES[fmt])
                while len(files) > _MAX_FILES:
                    files.popitem(last=False)
                data.append({"index": i, "url": f"{request.scheme}://{request.host}/files/{name}", "type": "url"})
            else:
                data.append({"index": i, "b64_json": base64.b64encode(image).decode(), "type": "b64_json"})
        return web.json_response({"id": uuid.uuid4().hex, "model": body["model"], "object": "list", "data": data})

    @routes.get("/files/{name}")
    async def download(request: web.Request) -> web.Response:
        entry = files.get(request.match_info["name"])
        if entry is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=entry[0], content_type=entry[1])

    @routes.get("/v1/models")
    async def models(request: web.Request) -> web.Response:
        if (answer := refused(request)) is not None:
            return answer
        listed = [(m, "image") for m in IMAGE_MODELS] + [(CHAT_MODEL, "chat")]
        return web.json_response([
            {"id": m, "object": "model", "created": 1692896905, "type": t, "display_name": m.split("/")[-1],
             "organization": m.split("/")[0], "link": f"https://huggingface.co/{m}", "license": "",
             "context_length": 0, "pricing": {"input": 0, "output": 0, "base": 0}}
            for m, t in listed
        ])

    app = web.Application(middlewares=[misbehaviour_middleware(
        knobs, error_body=lambda status: error_body(status), generation_paths=(_GENERATIONS, "/files/"),
        record_body=record_json_body,
    )])
    app[KNOBS_KEY] = knobs
    app.add_routes(routes)
    return app


if __name__ == "__main__":  # python -m imagegate.testing.together --port 8085
    from imagegate.testing.cli import main

    raise SystemExit(main(kind="together"))
