"""A Stability AI stand-in: v2beta Stable Image generate (core, ultra, sd3) and v1 balance.

Speaks Stability's wire format: ``POST /v2beta/stable-image/generate/{engine}`` requires
``authorization: Bearer <key>`` (else 401 ``unauthorized``) and a ``multipart/form-data`` body
(else 400 ``bad_request``), checks the fields (``prompt`` required, enums for
``aspect_ratio``/``output_format``/``model``, ``seed`` 0..4294967294) and answers the image bytes
at Stability's pixel size for the aspect ratio (about 1 MP: 1024x1024 for 1:1, 1344x768 for
16:9) with ``finish-reason``, ``seed`` and ``x-request-id`` headers (or JSON with
``accept: application/json``). Errors are ``{"id", "name", "errors": [...]}``;
``GET /v1/user/balance`` answers ``{"credits": ...}`` (v1 errors: ``{"id", "name", "message"}``).

    knobs.arm("content_filtered")           # 200, finish-reason CONTENT_FILTERED, a blurred image
    knobs.arm("moderation")                 # 403 content_moderation (the prompt was flagged)
    knobs.arm("not_image", size=50_000_000) # 200 with junk bytes (default: a short HTML page)
    knobs.arm("status", status=402)         # any status, with Stability's body for it

    python -m imagegate.testing stability --port 8082 --tls --api-key test-key
"""

from __future__ import annotations

import base64
import io
import random
import uuid
from http import HTTPStatus
from typing import Any

from aiohttp import web
from PIL import Image, ImageFilter

from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs, misbehaviour_middleware, send_junk

__all__ = ["API_KEY", "KNOBS_KEY", "SIZES", "create_app", "error_body", "validate"]

KNOBS_KEY = web.AppKey("knobs", Knobs)
SIZES: dict[str, tuple[int, int]] = {
    "21:9": (1536, 640), "16:9": (1344, 768), "3:2": (1216, 832), "5:4": (1152, 896),
    "1:1": (1024, 1024), "4:5": (896, 1152), "2:3": (832, 1216), "9:16": (768, 1344),
    "9:21": (640, 1536),
}
ENGINES = ("core", "ultra", "sd3")
SD3_MODELS = ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium", "sd3-large", "sd3-large-turbo",
              "sd3-medium")
STYLE_PRESETS = ("3d-model", "analog-film", "anime", "cinematic", "comic-book", "digital-art",
                 "enhance", "fantasy-art", "isometric", "line-art", "low-poly", "modeling-compound",
                 "neon-punk", "origami", "photographic", "pixel-art", "tile-texture")
MAX_SEED = 4294967294
MAX_BODY = 10 * 1024 * 1024
_NAMES = {400: "bad_request", 401: "unauthorized", 402: "payment_required", 403: "forbidden",
          404: "not_found", 413: "payload_too_large", 422: "invalid_parameters",
          429: "rate_limit_exceeded", 500: "internal_error"}
_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def error_body(status: int, *errors: str, name: str | None = None) -> dict[str, Any]:
    """Stability's v2beta error shape."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    return {"id": uuid.uuid4().hex, "name": name or _NAMES.get(status, "error"),
            "errors": list(errors) or [phrase]}


def validate(engine: str, form: dict[str, Any]) -> list[str]:
    """What the real API checks in the form fields."""
    problems = [f"{k}: must be a text field, not a file" for k, v in form.items()
                if not isinstance(v, str) and k != "image"]
    prompt = form.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        problems.append("prompt: is required")
    elif len(prompt) > 10000:
        problems.append("prompt: must be at most 10000 characters")
    if len(str(form.get("negative_prompt", ""))) > 10000:
        problems.append("negative_prompt: must be at most 10000 characters")
    if form.get("aspect_ratio", "1:1") not in SIZES:
        problems.append(f"aspect_ratio: must be one of {', '.join(SIZES)}")
    formats = ("png", "jpeg") if engine == "sd3" else ("png", "jpeg", "webp")
    if form.get("output_format", "png") not in formats:
        problems.append(f"output_format: must be one of {', '.join(formats)}")
    seed = str(form.get("seed", "0"))
    if not seed.isdigit() or int(seed) > MAX_SEED:
        problems.append(f"seed: must be an integer in [0, {MAX_SEED}]")
    if engine == "sd3" and form.get("model", "sd3.5-large") not in SD3_MODELS:
        problems.append(f"model: must be one of {', '.join(SD3_MODELS)}")
    if engine == "core" and "style_preset" in form and form["style_preset"] not in STYLE_PRESETS:
        problems.append("style_preset: unknown preset")
    return problems


API_KEY = web.AppKey("stability_api_key", str)


def create_app(*, knobs: Knobs | None = None, api_key: str = "test-key") -> web.Application:
    """The emulator app; clients must send ``authorization: Bearer <api_key>``."""
    knobs = knobs or Knobs()
    app = web.Application(
        middlewares=[
            _bearer_auth,
            misbehaviour_middleware(
                knobs, error_body=error_body, generation_paths=("/v2beta/",), record_body=_record
            ),
        ],
        client_max_size=MAX_BODY + 1024 * 1024,
    )
    app[KNOBS_KEY] = knobs
    app[API_KEY] = api_key
    app.router.add_post("/v2beta/stable-image/generate/{engine}", _generate)
    app.router.add_get("/v1/user/balance", _balance)
    return app


@web.middleware
async def _bearer_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.headers.get("Authorization") == f"Bearer {request.app[API_KEY]}":
        return await handler(request)
    if request.path.startswith("/v1/"):  # v1 has its own error shape
        body = {"id": uuid.uuid4().hex, "name": "unauthorized",
                "message": "missing or invalid authorization header"}
        return web.json_response(body, status=401)
    if request.path.startswith("/v2beta/"):
        return web.json_response(
            error_body(401, "authorization: invalid or missing header value"), status=401
        )
    return await handler(request)


async def _record(request: web.Request) -> Any:
    if not request.can_read_body:
        return None
    if request.content_type == "multipart/form-data":
        try:
            post = await request.post()
        except ValueError:
            return None
        return {k: v if isinstance(v, str) else {"file": type(v).__name__} for k, v in post.items()}
    return await request.read()


def _refusal(request: web.Request, engine: str) -> web.Response | None:
    """The 4xx the real API gives before it looks at the fields, if any."""
    if engine not in ENGINES:
        return web.json_response(error_body(404, f"engine {engine!r} not found"), status=404)
    if (request.content_length or 0) > MAX_BODY:
        return web.json_response(error_body(413, "request body exceeds 10 MiB"), status=413)
    if request.content_type != "multipart/form-data":
        return web.json_response(error_body(400, "content-type: must be multipart/form-data"),
                                 status=400)
    accept = request.headers.get("Accept", "image/*")
    if not any(a in accept for a in ("image/*", "application/json", "*/*")):
        return web.json_response(error_body(400, "accept: must be image/* or application/json"),
                                 status=400)
    return None


async def _generate(request: web.Request) -> web.StreamResponse:
    knobs, engine = request.app[KNOBS_KEY], request.match_info["engine"]
    refused = _refusal(request, engine)
    if refused is not None:
        return refused
    form = dict(await request.post())
    problems = validate(engine, form)
    if problems:
        return web.json_response(error_body(400, *problems), status=400)
    if knobs.take("moderation", request.path) is not None:
        body = error_body(403, "Your request was flagged by our content moderation system.",
                          name="content_moderation")
        return web.json_response(body, status=403)
    junk = knobs.take("not_image", request.path)
    if junk is not None:
        html = b"<html><body>upstream error</body></html>"
        headers = {"finish-reason": "SUCCESS", "seed": "1", "Content-Type": "image/png"}
        return await send_junk(request, int(junk.get("size", 0)), headers=headers, short_body=html)
    filtered = knobs.take("content_filtered", request.path) is not None
    return _image_response(form, request.headers.get("Accept", "image/*"), filtered=filtered)


async def _balance(request: web.Request) -> web.Response:
    return web.json_response({"credits": 42.5})


def _image_response(form: dict[str, Any], accept: str, *, filtered: bool) -> web.Response:
    width, height = SIZES[form.get("aspect_ratio", "1:1")]
    fmt = form.get("output_format", "png")
    seed = int(form.get("seed", "0")) or random.randrange(1, MAX_SEED)
    data = make_image(width, height, form["prompt"], seed, fmt)
    if filtered:
        data = _blurred(data, fmt)
    reason = "CONTENT_FILTERED" if filtered else "SUCCESS"
    request_id = uuid.uuid4().hex
    if "application/json" in accept and "image/*" not in accept:
        body = {"image": base64.b64encode(data).decode(), "finish_reason": reason, "seed": seed}
        return web.json_response(body, headers={"x-request-id": request_id},
                                 content_type=f"application/json; type={_MIME[fmt]}")
    headers = {"finish-reason": reason, "seed": str(seed), "x-request-id": request_id,
               "Content-Type": _MIME[fmt]}
    return web.Response(body=data, headers=headers)


def _blurred(data: bytes, fmt: str) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        small = img.convert("RGB").resize((img.width // 32, img.height // 32)).resize(img.size)
        small = small.filter(ImageFilter.BoxBlur(8))
        out = io.BytesIO()
        small.save(out, format={"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt])
        return out.getvalue()


if __name__ == "__main__":  # python -m imagegate.testing.stability --port 8082 --tls
    from imagegate.testing.cli import main

    raise SystemExit(main(kind="stability"))
