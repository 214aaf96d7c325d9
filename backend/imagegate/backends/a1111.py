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
from typing import Any, Literal

import aiohttp
from pydantic import Field

from imagegate.backends.http import HttpBackend
from imagegate.backends.images import check_image, keep_asked
from imagegate.config import HttpBackendSettings
from imagegate.errors import BadResponse
from imagegate.models import Deadline, GeneratedImage, ImageRequest

__all__ = ["A1111Backend", "A1111Settings", "build_request", "from_env", "parse_response"]

_TXT2IMG = "/sdapi/v1/txt2img"
_PROGRESS = "/sdapi/v1/progress?skip_current_image=true"
_PROBE_CAP = 1024 * 1024


class A1111Settings(HttpBackendSettings):
    """A local AUTOMATIC1111 webui started with ``--api``."""

    kind: Literal["a1111"] = "a1111"
    base_url: str = "http://127.0.0.1:7860"
    connect_timeout_s: float = Field(default=5.0, gt=0, le=600)
    read_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    max_concurrency: int = Field(default=1, ge=1, le=1024)
    queue: bool = True
    username_env: str | None = None
    password_env: str | None = None

    def secret_env_names(self) -> dict[str, str]:
        names = {}
        if self.username_env:
            names["username"] = self.username_env
        if self.password_env:
            names["password"] = self.password_env
        return names

    def required_secrets(self) -> tuple[str, ...]:
        return tuple(self.secret_env_names())


def from_env(env: Mapping[str, str], have_others: bool) -> list[dict[str, Any]]:
    """``A1111_URL`` alone configures a local webui."""
    if not env.get("A1111_URL"):
        return []
    return [{"name": "a1111", "kind": "a1111", "base_url": env["A1111_URL"]}]


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


def parse_response(
    body: Any, *, backend: str, asked: int | None = None
) -> tuple[list[tuple[bytes, int | None]], dict[str, Any]]:
    """Decode the images and pair each with its real seed (pure); with ``asked``, only the
    first ``asked`` are decoded and the note says how many more there were (images.py)."""
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
    note: dict[str, Any] = {}
    if asked is not None:
        images, note = keep_asked(images, asked, backend=backend)
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
    return out, note


def _basic_auth_headers(user: str | None, password: str | None) -> dict[str, str]:
    """``--api-auth`` credentials as an Authorization header (aiohttp's BasicAuth is deprecated)."""
    if not user:
        return {}
    token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


class A1111Backend(HttpBackend[A1111Settings]):
    """A local AUTOMATIC1111 webui."""

    kind = "a1111"

    def __init__(
        self, settings: A1111Settings, *, secrets: Mapping[str, str], session: aiohttp.ClientSession
    ) -> None:
        super().__init__(settings, secrets=secrets, session=session)
        self._headers = _basic_auth_headers(secrets.get("username"), secrets.get("password"))

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        payload = build_request(request, model=self.settings.model)
        # base64 in JSON: 4/3 of the image bytes, plus the info text
        cap = self.settings.max_image_bytes * request.n * 2
        answer = await self.send("POST", self.base_url + _TXT2IMG, json=payload, deadline=deadline, cap=cap)
        pairs, note = parse_response(answer.json(backend=self.name), backend=self.name, asked=request.n)
        return [
            check_image(data, backend=self.name, seed=seed, info=note if i == 0 else None)
            for i, (data, seed) in enumerate(pairs)
        ]

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        answer = await self.send(
            "GET", self.base_url + _PROGRESS, deadline=deadline, cap=_PROBE_CAP, timings=timings
        )
        body = answer.json(backend=self.name)
        if not isinstance(body, dict):
            raise BadResponse("progress answer is not a JSON object", backend=self.name)
        job = (body.get("state") or {}).get("job") or "idle"
        return f"progress {float(body.get('progress') or 0):.0%}, job: {job}"
