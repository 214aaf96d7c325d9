"""A small chat-style backend that uses imagegate the recommended way.

    python scripts/chat_backend_example.py --port 8080 [--config imagegate.toml]
    curl -s localhost:8080/chat -d '{"message": "draw a lighthouse at dusk"}'

What it shows:
- one ImageService per process, created at start-up and closed at shutdown (cleanup_ctx);
- a per-request deadline, so a chat turn never waits longer than the user will;
- what to tell the end user when every backend fails (and what to log for the operator).
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from imagegate import AllBackendsFailed, ImageRequest, ImageService, ImageStore, InvalidRequest
from imagegate.backends.registry import load_settings
from imagegate.config import Settings

log = logging.getLogger("chat_backend_example")

SERVICE = web.AppKey("service", ImageService)
STORE = web.AppKey("store", ImageStore)
IMAGE_DEADLINE_S = 45.0  # a chat user will not wait longer than this for a picture
_WANTS_IMAGE = re.compile(r"^\s*(?:/image\b|draw\b|paint\b|picture of\b|image of\b)\s*", re.IGNORECASE)
_SAFE_NAME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}/[0-9]{6}-[0-9a-f]{8}\.(?:png|jpg|webp)$")
SORRY = "Sorry, I couldn't draw that right now: the image services are busy. Try again in a minute?"


def wants_image(message: str) -> str | None:
    """The image prompt if the chat message asks for a picture, else None."""
    match = _WANTS_IMAGE.match(message)
    return message[match.end() :].strip() or None if match else None


BAD_BODY = 'Send JSON like {"message": "draw a lighthouse at dusk"}.'


async def chat(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:  # not JSON at all (or not UTF-8)
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("message", ""), str):
        return web.json_response({"reply": BAD_BODY, "image_url": None}, status=400)
    message = body.get("message", "")
    prompt = wants_image(message)
    if prompt is None:
        return web.json_response({"reply": f"You said: {message}", "image_url": None})
    try:
        image_request = ImageRequest(prompt=prompt, width=512, height=512)
        result = await request.app[SERVICE].generate(image_request, deadline_s=IMAGE_DEADLINE_S)
    except InvalidRequest as exc:
        return web.json_response({"reply": f"I can't draw that: {exc}", "image_url": None})
    except AllBackendsFailed as exc:
        # The operator gets the whole trail; the end user gets a kind sentence.
        log.warning("chat_image_failed: %s", [a.model_dump() for a in exc.attempts])
        return web.json_response({"reply": SORRY, "image_url": None, "backend": None})
    path = request.app[STORE].save(result.images[0], image_request, backend=result.backend)
    relative = path.relative_to(request.app[STORE].root).as_posix()
    return web.json_response(
        {"reply": "Here you go!", "image_url": f"/images/{relative}", "backend": result.backend}
    )


async def image(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if not _SAFE_NAME.match(name):  # never let a client path reach the filesystem unchecked
        raise web.HTTPNotFound()
    path = request.app[STORE].root / name
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)


def create_app(settings: Settings) -> web.Application:
    app = web.Application()

    async def image_service(app: web.Application) -> AsyncIterator[None]:
        async with ImageService(settings) as service:  # start-up ... shutdown
            app[SERVICE] = service
            app[STORE] = ImageStore(settings.service.output_dir)
            yield

    app.cleanup_ctx.append(image_service)
    app.router.add_post("/chat", chat)
    app.router.add_get("/images/{name:.+}", image)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--config", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)  # the application decides; imagegate only emits
    web.run_app(create_app(load_settings(args.config)), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
