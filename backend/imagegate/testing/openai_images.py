"""An OpenAI Images API stand-in (``/v1/images/generations``, ``/v1/models``, ``/files/...``).

Checks what api.openai.com checks: ``Authorization: Bearer <api_key>`` (401
``invalid_api_key``, with the key masked in the message as OpenAI does), a JSON object,
``prompt`` a non-empty string of at most 32000 characters, ``n`` an integer in 1..10,
``size`` ``"WxH"`` (or ``"auto"``), ``response_format`` ``url|b64_json`` and refused for
``gpt-image*`` models (400 ``unknown_parameter``), ``output_format`` ``png|jpeg|webp``, and
no unknown fields (400 ``unknown_parameter``). It also accepts the extension fields
imagegate's own server reads: ``seed``, ``negative_prompt``, ``steps``, ``guidance_scale``. Every error is ``{"error": {"message", "type", "param", "code"}}``.

A 200 is ``{"created", "data": [{"b64_json"} | {"url"}], "size", "output_format"}``; ``url``
answers point at this server's ``/files/<token>.<ext>`` (no auth, like a presigned URL).

Emulator knobs, besides the shared ones (latency, status, reset, stall, stall_body):
``knobs.arm("content_filter")`` -> 400 ``content_policy_violation``;
``arm("insufficient_quota")`` -> 429 ``insufficient_quota``; ``arm("url_answer", host=...)``
-> answer URLs even when b64 was asked (optionally on another host name for the same
server, e.g. ``localhost``), or ``arm("url_answer", url=...)`` -> that URL as every image's ``url``
(hostile: a URL to anywhere); ``arm("not_image")`` -> base64 of bytes that are no image;
``arm("many_images", count=3000)`` -> ``count`` images whatever ``n`` asked (hostile).

    python -m imagegate.testing openai --port 8081 --tls --api-key sk-test
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs, misbehaviour_middleware, record_json_body

__all__ = ["KNOBS_KEY", "MODELS", "create_app"]

KNOBS_KEY = web.AppKey("knobs", Knobs)
MODELS = ("gpt-image-1", "dall-e-3", "dall-e-2", "emulator-image")
_GENERATIONS = "/v1/images/generations"
_KNOWN_FIELDS = frozenset(
    {
        "prompt", "model", "n", "size", "response_format", "output_format", "output_compression",
        "quality", "style", "background", "moderation", "user",
        "seed", "negative_prompt", "steps", "guidance_scale",  # imagegate's extensions
    }
)
_SIZE = re.compile(r"^(\d{2,4})x(\d{2,4})$")
_MAX_FILES = 64


def _error(status: int, message: str, *, code: str | None, param: str | None = None,
           type_: str = "invalid_request_error") -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status)


def _error_body(status: int) -> dict[str, Any]:
    codes = {
        400: ("invalid_request_error", "invalid_value"),
        401: ("invalid_request_error", "invalid_api_key"),
        403: ("invalid_request_error", "unsupported_country_region_territory"),
        429: ("requests", "rate_limit_exceeded"),
        500: ("server_error", None),
        503: ("server_error", None),
    }
    type_, code = codes.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": f"emulated error {status}", "type": type_, "param": None, "code": code}}


def _mask(key: str) -> str:
    return key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "***"


def _validate(body: Any) -> web.Response | None:
    """The error response for a request api.openai.com would refuse, else None."""
    if not isinstance(body, dict):
        return _error(400, "We could not parse the JSON body of your request.", code=None)
    unknown = sorted(set(body) - _KNOWN_FIELDS)
    if unknown:
        return _error(400, f"Unknown parameter: '{unknown[0]}'.", code="unknown_parameter", param=unknown[0])
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return _error(400, "Missing required parameter: 'prompt'.", code="missing_required_parameter", param="prompt")
    if len(prompt) > 32000:
        return _error(400, "'prompt' is too long: maximum 32000 characters.", code="string_above_max_length",
                      param="prompt")
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
        return _error(400, f"Invalid 'n': integer in 1..10 expected (got {n!r}).", code="invalid_value", param="n")
    size = body.get("size", "auto")
    if size != "auto" and not (isinstance(size, str) and _SIZE.match(size)):
        return _error(400, f"Invalid 'size': 'WIDTHxHEIGHT' expected (got {size!r}).", code="invalid_value",
                      param="size")
    model = body.get("model", "dall-e-2")
    if not isinstance(model, str) or model not in MODELS:
        return _error(400, f"Invalid value for 'model': {model!r}.", code="invalid_value", param="model")
    fmt = body.get("response_format")
    if fmt is not None and model.startswith("gpt-image"):
        return _error(400, "Unknown parameter: 'response_format'.", code="unknown_parameter", param="response_format")
    if fmt is not None and fmt not in ("url", "b64_json"):
        return _error(400, f"Invalid 'response_format': {fmt!r}.", code="invalid_value", param="response_format")
    if body.get("output_format", "png") not in ("png", "jpeg", "webp"):
        return _error(400, "Invalid 'output_format'.", code="invalid_value", param="output_format")
    for key, types in (("seed", (int,)), ("steps", (int,)), ("guidance_scale", (int, float)),
                       ("negative_prompt", (str,))):
        value = body.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            return _error(400, f"Invalid type for '{key}'.", code="invalid_type", param=key)
    return None


def create_app(*, knobs: Knobs | None = None, api_key: str | None = "test-key") -> web.Application:
    """The emulator app; ``api_key=None`` serves callers that send no key at all."""
    knobs = knobs or Knobs()
    files: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
    routes = web.RouteTableDef()

    def auth_error(request: web.Request) -> web.Response | None:
        if api_key is None:
            return None
        sent = request.headers.get("Authorization", "")
        if not sent.startswith("Bearer "):
            return _error(401, "You didn't provide an API key. You need to provide your API key in an "
                          "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                          code=None)
        if sent[7:] != api_key:
            return _error(401, f"Incorrect API key provided: {_mask(sent[7:])}.", code="invalid_api_key")
        return None

    @routes.post(_GENERATIONS)
    async def generations(request: web.Request) -> web.Response:
        refused = auth_error(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            body = None
        refused = _validate(body) or _policy_fault(knobs, request.path)
        if refused is not None:
            return refused
        armed = knobs.take("url_answer", request.path)
        as_url = armed is not None or body.get("response_format") == "url"
        url_params = armed or {}
        origin = _origin(request, url_params.get("host"))
        many = knobs.take("many_images", request.path)
        if many is not None:
            body = {**body, "n": int(many.get("count", 3000))}
        answer = _answer(knobs, request.path, body, files, origin if as_url else None)
        if url_params.get("url"):
            answer["data"] = [{"url": url_params["url"]} for _ in answer["data"]]
        return web.json_response(answer)

    @routes.get("/files/{name}")
    async def download(request: web.Request) -> web.Response:
        entry = files.get(request.match_info["name"])
        if entry is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=entry[0], content_type=entry[1])

    @routes.get("/v1/models")
    async def models(request: web.Request) -> web.Response:
        refused = auth_error(request)
        if refused is not None:
            return refused
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "emulator"} for m in MODELS]
        return web.json_response({"object": "list", "data": data})

    app = web.Application(
        middlewares=[
            misbehaviour_middleware(knobs, error_body=_error_body, generation_paths=(_GENERATIONS,), record_body=record_json_body)
        ],
        client_max_size=4 * 1024**2,
    )
    app[KNOBS_KEY] = knobs
    app.add_routes(routes)
    return app


def _origin(request: web.Request, host: str | None) -> str:
    port = request.url.port
    return f"{request.scheme}://{host or request.url.host}:{port}"


def _policy_fault(knobs: Knobs, path: str) -> web.Response | None:
    if knobs.take("content_filter", path) is not None:
        return _error(400, "Your request was rejected as a result of our safety system.",
                      code="content_policy_violation", type_="image_generation_user_error")
    if knobs.take("insufficient_quota", path) is not None:
        return _error(429, "You exceeded your current quota, please check your plan and billing details.",
                      code="insufficient_quota", type_="insufficient_quota")
    return None


def _answer(
    knobs: Knobs, path: str, body: dict[str, Any], files: OrderedDict[str, tuple[bytes, str]], origin: str | None
) -> dict[str, Any]:
    size = body.get("size", "auto")
    width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
    fmt = body.get("output_format", "png")
    seed = body.get("seed")
    seed = secrets.randbelow(2**32) if seed is None else seed
    broken = knobs.take("not_image", path) is not None
    count = body.get("n", 1)
    if count > 10:  # a hostile answer (many_images): small, identical images, quickly made
        width = height = 64
    data: list[dict[str, Any]] = []
    for i in range(count):
        if count > 10 and data:  # many_images: the first entry again (one stored file)
            data.append(dict(data[0]))
            continue
        image = b"<html>not an image</html>" if broken else make_image(width, height, body["prompt"], seed + i, fmt)
        if origin is None:
            data.append({"b64_json": base64.b64encode(image).decode()})
            continue
        name = f"{secrets.token_urlsafe(12)}.{fmt}"
        files[name] = (image, f"image/{fmt}")
        while len(files) > _MAX_FILES:
            files.popitem(last=False)
        data.append({"url": f"{origin}/files/{name}"})
    return {"created": int(time.time()), "data": data, "size": f"{width}x{height}", "output_format": fmt}


if __name__ == "__main__":  # python -m imagegate.testing.openai_images --port 8081
    from imagegate.testing.cli import main

    raise SystemExit(main(kind="openai"))
