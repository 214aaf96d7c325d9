"""AUTOMATIC1111 stable-diffusion-webui (started with ``--api``).

Wire facts (modules/api/api.py): ``POST /sdapi/v1/txt2img`` is synchronous and serialised by
the webui's global lock, so the read budget is long (minutes) and ``max_concurrency`` defaults
to 1 with queueing. The answer is ``{"images": [b64...], "parameters": {...}, "info": "<JSON
string>"}``; the real seeds are ``json.loads(info)["all_seeds"]``. Probe:
``GET /sdapi/v1/progress?skip_current_image=true`` (cheap, works with and without
``--nowebui``, behind ``--api-auth`` when that is set).

Decided: ``steps`` and ``guidance_scale`` are sent only when the caller set them (the webui's
own defaults apply otherwise); ``model`` from the request or the config becomes
``override_settings.sd_model_checkpoint`` (slow: the webui reloads weights).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from imagegate.backends.base import (
    Deadline,
    HttpBackend,
    check_image,
    error_for_status,
    error_text,
    parse_retry_after,
    read_capped,
)
from imagegate.errors import BadResponse
from imagegate.models import GeneratedImage, ImageRequest

_TXT2IMG = "/sdapi/v1/txt2img"
_PROGRESS = "/sdapi/v1/progress?skip_current_image=true"


def build_request(request: ImageRequest, *, model: str | None) -> dict[str, Any]:
    """The txt2img JSON body for ``request`` (pure)."""
    payload: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "width": request.width,
        "height": request.height,
        "seed": -1 if request.seed is None else request.seed,
        "batch_size": request.n,
        "n_iter": 1,
        "send_images": True,
        "save_images": False,
    }
    if request.steps is not None:
        payload["steps"] = request.steps
    if request.guidance_scale is not None:
        payload["cfg_scale"] = request.guidance_scale
    if request.sampler:
        payload["sampler_name"] = request.sampler
    checkpoint = request.model or model
    if checkpoint:
        payload["override_settings"] = {"sd_model_checkpoint": checkpoint}
    return payload


def parse_response(body: Any, *, backend: str) -> list[tuple[bytes, int | None]]:
    """Decode the images and pair each with its real seed (pure)."""
    if not isinstance(body, dict) or not isinstance(body.get("images"), list):
        raise BadResponse("txt2img answer has no 'images' list", backend=backend)
    seeds: list[Any] = []
    info = body.get("info")
    if isinstance(info, str):
        try:
            parsed = json.loads(info)
            seeds = list(parsed.get("all_seeds") or [parsed.get("seed")])
            first = int(parsed.get("index_of_first_image") or 0)
        except (ValueError, TypeError, AttributeError):
            first = 0
    else:
        first = 0
    images = body["images"][first:]
    if not images:
        raise BadResponse("txt2img answered with no image", backend=backend)
    out: list[tuple[bytes, int | None]] = []
    for i, b64 in enumerate(images):
        if not isinstance(b64, str):
            raise BadResponse("txt2img image is not a base64 string", backend=backend)
        try:
            data = base64.b64decode(b64.split(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadResponse("txt2img image is not valid base64", backend=backend) from exc
        seed = seeds[i] if i < len(seeds) else None
        out.append((data, int(seed) if isinstance(seed, int | float) else None))
    return out


def _basic_auth_headers(user: str | None, password: str | None) -> dict[str, str]:
    """``--api-auth`` credentials as an Authorization header (aiohttp's BasicAuth is deprecated)."""
    if not user:
        return {}
    token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


class A1111Backend(HttpBackend):
    """A local AUTOMATIC1111 webui."""

    kind = "a1111"

    def __init__(
        self, settings: Any, *, secrets: Mapping[str, str], session: aiohttp.ClientSession
    ) -> None:
        super().__init__(settings, secrets=secrets, session=session)
        self._headers = _basic_auth_headers(secrets.get("username"), secrets.get("password"))

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        payload = build_request(request, model=self.settings.model)
        with self.map_errors(deadline):
            async with self._session.post(
                self.base_url + _TXT2IMG, json=payload, headers=self._headers, **self.request_kwargs(deadline)
            ) as resp:
                if resp.status != 200:
                    raise error_for_status(
                        resp.status,
                        error_text(await resp.read()),
                        backend=self.name,
                        retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                    )
                # base64 in JSON: 4/3 of the image bytes, plus the info text
                cap = self.settings.max_image_bytes * request.n * 2
                body = json.loads(await read_capped(resp, cap, backend=self.name))
        return [
            check_image(data, backend=self.name, seed=seed)
            for data, seed in parse_response(body, backend=self.name)
        ]

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        with self.map_errors(deadline):
            async with self._session.get(
                self.base_url + _PROGRESS, headers=self._headers, **self.request_kwargs(deadline, timings)
            ) as resp:
                if resp.status != 200:
                    raise error_for_status(resp.status, error_text(await resp.read()), backend=self.name)
                body = await resp.json(content_type=None)
        if not isinstance(body, dict):
            raise BadResponse("progress answer is not a JSON object", backend=self.name)
        job = (body.get("state") or {}).get("job") or "idle"
        return f"progress {float(body.get('progress') or 0):.0%}, job: {job}"
