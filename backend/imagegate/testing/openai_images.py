"""An OpenAI Images API stand-in (``/v1/images/generations``, ``/v1/models``, ``/files/...``).

Checks what api.openai.com checks: ``Authorization: Bearer <api_key>`` (401
``invalid_api_key``, with the key masked in the message as OpenAI does), a JSON object,
``prompt`` a non-empty string, ``n`` an integer in 1..10, ``size`` ``"WxH"``, and, per model
(``_RULES``, sources beside it), the sizes, ``n``, prompt length and fields each model takes:
a field another model takes is 400 ``unknown_parameter`` (``response_format`` to a GPT image
model, ``moderation`` to DALL-E), a size the model does not make is 400 ``invalid_value``.
``emulator-image`` stands for a compatible server's own model: any ``WxH``, every field.
Every error is ``{"error": {"message", "type", "param", "code"}}``.

Two flavours. The default is an OpenAI-compatible server such as imagegate's own: an absent
``model`` means ``emulator-image``, and the extension fields imagegate's server reads
(``seed``, ``negative_prompt``, ``steps``, ``guidance_scale``) are accepted.
``create_app(official=True)`` is api.openai.com itself: only OpenAI's models, an absent
``model`` means ``dall-e-2`` (the documented default), and the extensions are unknown
parameters (``Unknown parameter: 'seed'.``, verified live by Talevia/talevia's
OpenAiImageGenWireBodyTest, see notes/clients.md §4).

A 200 is ``{"created", "data": [{"b64_json"} | {"url"}], "size", "output_format"}``; ``url``
answers point at this server's ``/files/<token>.<ext>`` (no auth, like a presigned URL).

Emulator knobs, besides the shared ones (latency, status, reset, stall, stall_body):
``knobs.arm("content_filter")`` -> 400 ``content_policy_violation``;
``arm("insufficient_quota")`` -> 429 ``insufficient_quota``; ``arm("url_answer", host=...)``
-> answer URLs even when b64 was asked (optionally on another host name for the same
server, e.g. ``localhost``), or ``arm("url_answer", url=...)`` -> that URL as every image's ``url``
(hostile: a URL to anywhere); ``arm("not_image")`` -> base64 of bytes that are no image;
``arm("many_images", images=3000)`` -> ``images`` images whatever ``n`` asked (hostile).

    python -m imagegate.testing openai --port 8081 --tls --api-key sk-test [--official]
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs, misbehaviour_middleware, record_json_body

__all__ = ["KNOBS_KEY", "MODELS", "create_app"]

KNOBS_KEY = web.AppKey("knobs", Knobs)
_GENERATIONS = "/v1/images/generations"
_SIZE = re.compile(r"^(\d{2,4})x(\d{2,4})$")
_MAX_FILES = 64
_COMMON = frozenset({"prompt", "model", "n", "size", "user", "quality"})
_EXTENSIONS = frozenset({"seed", "negative_prompt", "steps", "guidance_scale"})  # imagegate's


@dataclass(frozen=True)
class _Rules:
    """What one model accepts."""

    sizes: tuple[str, ...] | None  # None: any "WxH"
    n_max: int
    prompt_max: int
    fields: frozenset[str]
    formats: tuple[str, ...] = ("png",)


# Per model. Sizes, n and prompt length: openai-python ``types/image_generate_params.py``
# @04448952 (the gpt-image-1 era docstrings: dall-e-2 256/512/1024 squares, n 1-10, prompt
# <= 1000; dall-e-3 1024x1024/1792x1024/1024x1792, n = 1, prompt <= 4000; gpt-image-1
# 1024x1024/1536x1024/1024x1536/auto, n 1-10, prompt <= 32000); openai 3.57's ImageModel adds
# gpt-image-1-mini, gpt-image-1.5 and chatgpt-image-latest to the GPT image family.
# Fields: ``response_format`` and ``style`` are legacy (DALL-E only; GPT image models answer
# 400 unknown_parameter: vercel/ai#6102, LLMTornado#155); ``background``, ``moderation``,
# ``output_format``, ``output_compression`` are GPT image only (dall-e-3 answers 400
# "Unknown parameter: 'moderation'.": laravel/ai#255).
_DALLE2 = _Rules(("256x256", "512x512", "1024x1024"), 10, 1000, _COMMON | {"response_format"})
_DALLE3 = _Rules(("1024x1024", "1792x1024", "1024x1792"), 1, 4000,
                 _COMMON | {"response_format", "style"})
_GPT_IMAGE = _Rules(("1024x1024", "1536x1024", "1024x1536", "auto"), 10, 32000,
                    _COMMON | {"background", "moderation", "output_format", "output_compression"},
                    ("png", "jpeg", "webp"))
_RULES: dict[str, _Rules] = {
    "gpt-image-1": _GPT_IMAGE,
    "gpt-image-1-mini": _GPT_IMAGE,
    "gpt-image-1.5": _GPT_IMAGE,
    "chatgpt-image-latest": _GPT_IMAGE,
    "dall-e-3": _DALLE3,
    "dall-e-2": _DALLE2,
}
_COMPATIBLE = _Rules(None, 10, 32000, _DALLE3.fields | _GPT_IMAGE.fields, ("png", "jpeg", "webp"))
MODELS = (*_RULES, "emulator-image")


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


def _supported(values: tuple[str, ...]) -> str:
    """OpenAI's list: 'a', 'b', and 'c' (an Oxford "and" before the last)."""
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _validate(body: Any, *, official: bool) -> web.Response | None:
    """The error response for a request api.openai.com would refuse, else None."""
    if not isinstance(body, dict):
        return _error(400, "We could not parse the JSON body of your request.", code=None)
    model = body.get("model", "dall-e-2" if official else "emulator-image")
    rules = _RULES.get(model) if isinstance(model, str) else None
    if rules is None and not official and model == "emulator-image":
        rules = _COMPATIBLE
    if rules is None:
        return _error(400, f"Invalid value for 'model': {model!r}.", code="invalid_value", param="model")
    known = rules.fields if official else rules.fields | _EXTENSIONS
    unknown = sorted(set(body) - known)
    if unknown:
        return _error(400, f"Unknown parameter: '{unknown[0]}'.", code="unknown_parameter", param=unknown[0])
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return _error(400, "Missing required parameter: 'prompt'.", code="missing_required_parameter", param="prompt")
    if len(prompt) > rules.prompt_max:  # message shape UNCONFIRMED (no real body found)
        return _error(400, f"'prompt' is too long: maximum {rules.prompt_max} characters.",
                      code="string_above_max_length", param="prompt")
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
        return _error(400, f"Invalid 'n': integer in 1..10 expected (got {n!r}).", code="invalid_value", param="n")
    if n > rules.n_max:  # dall-e-3 refuses n > 1 (openai-php/client#509); body UNCONFIRMED
        return _error(400, f"Invalid 'n': {model} supports n={rules.n_max} at most (got {n}).",
                      code="invalid_value", param="n")
    size = body.get("size", "1024x1024" if rules.sizes else "auto")
    if rules.sizes is not None and size not in rules.sizes:
        # "Invalid value: '512x512'. Supported values are: '1024x1024', '1024x1536',
        # '1536x1024', and 'auto'." (gpt-image; notes/clients.md §3c; the same form for dall-e-3)
        return _error(400, f"Invalid value: {size!r}. Supported values are: {_supported(rules.sizes)}.",
                      code="invalid_value", param="size")
    if rules.sizes is None and size != "auto" and not (isinstance(size, str) and _SIZE.match(size)):
        return _error(400, f"Invalid 'size': 'WIDTHxHEIGHT' expected (got {size!r}).", code="invalid_value",
                      param="size")
    fmt = body.get("response_format")
    if fmt is not None and fmt not in ("url", "b64_json"):
        return _error(400, f"Invalid 'response_format': {fmt!r}.", code="invalid_value", param="response_format")
    if body.get("output_format", "png") not in rules.formats:
        return _error(400, f"Invalid value: {body['output_format']!r}. Supported values are: "
                      f"{_supported(rules.formats)}.", code="invalid_value", param="output_format")
    for key, types in (("seed", (int,)), ("steps", (int,)), ("guidance_scale", (int, float)),
                       ("negative_prompt", (str,))):
        value = body.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            return _error(400, f"Invalid type for '{key}'.", code="invalid_type", param=key)
    return None


def create_app(
    *, knobs: Knobs | None = None, api_key: str | None = "test-key", render: bool = False,
    official: bool = False,
) -> web.Application:
    """The emulator app; ``api_key=None`` serves callers that send no key at all;
    ``render=True`` draws and encodes every image anew (no cache), as a real provider would;
    ``official=True`` behaves as api.openai.com (see the module docstring)."""
    draw = make_image.__wrapped__ if render else make_image
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
        refused = _validate(body, official=official) or _policy_fault(knobs, request.path)
        if refused is not None:
            return refused
        armed = knobs.take("url_answer", request.path)
        url_params = armed or {}
        # DALL-E answers URLs unless b64_json is asked (the API reference: response_format
        # "defaults to url"); GPT image models always answer base64.
        dalle = body.get("model", "dall-e-2" if official else None) in ("dall-e-2", "dall-e-3")
        wanted = body.get("response_format", "url" if dalle else "b64_json")
        as_url = armed is not None or wanted == "url"
        origin = _origin(request, url_params.get("host"))
        many = knobs.take("many_images", request.path)
        if many is not None:
            body = {**body, "n": int(many.get("images", 3000))}
        answer = _answer(knobs, request.path, body, files, origin if as_url else None, draw)
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
        served = [m for m in MODELS if m in _RULES or not official]
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "emulator"} for m in served]
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
    knobs: Knobs, path: str, body: dict[str, Any], files: OrderedDict[str, tuple[bytes, str]], origin: str | None,
    draw: Callable[[int, int, str, int, str], bytes] = make_image,
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
        image = b"<html>not an image</html>" if broken else draw(width, height, body["prompt"], seed + i, fmt)
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
