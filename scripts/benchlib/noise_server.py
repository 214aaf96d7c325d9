"""An OpenAI-compatible images server whose PNGs weigh what real ones weigh (for ``memory``).

imagegate's own emulator draws flat rectangles that compress to a few kB; a 1024x1024 PNG from
a diffusion model is 1.3-1.8 MB. This server answers every ``POST /v1/images/generations``
with a noisy gradient of the requested size (about 1.6 MB at 1024x1024, encoded once per size
and kept), after ``--latency`` seconds, so that many requests are in flight at once.

    python scripts/benchlib/noise_server.py --port 8090 --latency 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import re

from aiohttp import web
from PIL import Image, ImageChops

_SIZE = re.compile(r"^(\d{2,4})x(\d{2,4})$")


def noisy_png(width: int, height: int, sigma: float = 6.0) -> bytes:
    """A gradient with Gaussian noise: compresses about as badly as a photo-like image."""
    grad = Image.linear_gradient("L").resize((width, height))
    bands = [
        ImageChops.add(Image.effect_noise((width, height), sigma), grad, scale=2.0)
        for _ in range(3)
    ]
    out = io.BytesIO()
    Image.merge("RGB", bands).save(out, format="PNG", compress_level=6)
    return out.getvalue()


def create_app(latency_s: float) -> web.Application:
    answers: dict[tuple[int, int], bytes] = {}

    async def generations(request: web.Request) -> web.Response:
        body = await request.json()
        match = _SIZE.match(str(body.get("size", "1024x1024")))
        size = (int(match[1]), int(match[2])) if match else (1024, 1024)
        if size not in answers:
            png = noisy_png(*size)
            answers[size] = json.dumps(
                {"created": 0, "data": [{"b64_json": base64.b64encode(png).decode()}]}
            ).encode()
        await asyncio.sleep(latency_s)
        return web.Response(body=answers[size], content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "dall-e-2", "object": "model"}]}
        )

    app = web.Application(client_max_size=1024**2)
    app.router.add_post("/v1/images/generations", generations)
    app.router.add_get("/v1/models", models)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.5)
    args = parser.parse_args()
    web.run_app(
        create_app(args.latency), host="127.0.0.1", port=args.port, print=None, access_log=None
    )


if __name__ == "__main__":
    main()
