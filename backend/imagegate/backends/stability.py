"""Stability AI: the v2beta Stable Image API (core, ultra, sd3), one synchronous call per image.

Wire facts (providers.md §3; Stability's OpenAPI as of 2024-12-30):

- ``POST {base_url}/v2beta/stable-image/generate/{core|ultra|sd3}``, ``authorization: Bearer
  <key>``, ``accept: image/*``, body ``multipart/form-data`` (required even with no file):
  ``prompt``, ``negative_prompt``, ``aspect_ratio`` (21:9 16:9 3:2 5:4 1:1 4:5 2:3 9:16 9:21),
  ``seed`` (0..4294967294, 0 = random), ``output_format`` (png|jpeg|webp; sd3: png|jpeg), and
  for sd3 ``model`` (sd3.5-large, sd3.5-large-turbo, sd3.5-medium, sd3-large, sd3-large-turbo,
  sd3-medium). There is no width/height: only the aspect ratio.
- 200: the image bytes, with headers ``finish-reason`` (SUCCESS | CONTENT_FILTERED) and
  ``seed``. CONTENT_FILTERED means the image was blurred by moderation.
- Errors: JSON ``{"id", "name", "errors": [...]}`` (401 ``unauthorized``, 402
  ``payment_required``, 403 ``content_moderation``, 413, 422, 429, 500).
- Probe: ``GET {base_url}/v1/user/balance`` -> ``{"credits": <float>}``; spends nothing.

Decided:

- width/height become the nearest supported aspect ratio (by log-ratio distance, so 2:1 and
  1:2 are equally far from 1:1); the chosen ratio is in ``GeneratedImage.info["aspect_ratio"]``
  and the requested size in ``info["requested_size"]``. The image keeps Stability's own pixel
  size for that ratio (about 1 MP): it is not resized.
- ``seed``: our None is sent as 0 (random). Our seed 0 is also sent as 0 and so is random on
  Stability: the ``seed`` header tells the real one, which is what ``GeneratedImage.seed``
  carries, so the caller can see the substitution. A seed above 4294967294 is refused as
  rejected before anything is sent (another backend may take it).
- ``output_format`` webp on sd3 (which has no webp) asks for png instead (lossless); the result
  says ``format=png``.
- ``negative_prompt`` is sent only when non-empty, and never to sd3 with ``sd3-large-turbo``
  (which does not take it). ``steps``, ``guidance_scale`` and ``sampler`` are not sent: v2beta
  has no such fields. The sd3 ``model`` comes from the config's ``model`` only (a request's
  model names another provider's checkpoint as often as not).
- ``n`` > 1: n calls at once (Stability returns one image per call), seeds ``seed + i`` when a
  seed was given; if one call fails the others are cancelled.
- 403 whose ``name`` is ``content_moderation`` -> content_filtered; 402 or name
  ``payment_required`` -> quota_exhausted; other 401/403 -> auth_failed; 400/404/413/422 ->
  rejected; 429 -> rate_limited (Retry-After parsed); 5xx as usual. The error JSON (name, errors,
  id) is kept in the message.
- A 200 answered as JSON (``{"image": b64, "finish_reason", "seed"}``) is accepted too.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp

from imagegate.backends.http import Answer, HttpBackend, gather_all
from imagegate.backends.images import check_image
from imagegate.backends.transport import error_for_status, error_text, parse_retry_after
from imagegate.capabilities import Capabilities, Span
from imagegate.config import HttpBackendSettings
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    ContentFiltered,
    QuotaExhausted,
    Rejected,
    ServerError,
)
from imagegate.models import Deadline, GeneratedImage, ImageRequest

__all__ = [
    "ASPECT_RATIOS",
    "StabilityBackend",
    "StabilitySettings",
    "build_form",
    "error_for_response",
    "from_env",
    "nearest_aspect_ratio",
    "parse_response",
    "stability_capabilities",
]

_GENERATE = "/v2beta/stable-image/generate/"
_BALANCE = "/v1/user/balance"
MAX_SEED = 4294967294
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "21:9": (21, 9), "16:9": (16, 9), "3:2": (3, 2), "5:4": (5, 4), "1:1": (1, 1),
    "4:5": (4, 5), "2:3": (2, 3), "9:16": (9, 16), "9:21": (9, 21),
}
_NO_NEGATIVE_PROMPT = {"sd3-large-turbo"}
_JSON_CAP = 1024 * 1024


class StabilitySettings(HttpBackendSettings):
    """Stability AI's v2beta Stable Image API."""

    kind: Literal["stability"] = "stability"
    base_url: str = "https://api.stability.ai"
    engine: Literal["core", "ultra", "sd3"] = "core"
    api_key_env: str = "STABILITY_API_KEY"

    def secret_env_names(self) -> dict[str, str]:
        return {"api_key": self.api_key_env}

    def required_secrets(self) -> tuple[str, ...]:
        return ("api_key",)


def from_env(env: Mapping[str, str], have_others: bool) -> list[dict[str, Any]]:
    """``STABILITY_API_KEY`` configures Stability (priority 20)."""
    if not env.get("STABILITY_API_KEY"):
        return []
    return [{"name": "stability", "kind": "stability", "priority": 20}]


@functools.lru_cache(maxsize=64)
def stability_capabilities(engine: str, model: str | None) -> Capabilities:
    """What v2beta takes (the OpenAPI above): an aspect ratio, never pixels; a negative prompt
    (not sd3-large-turbo); seed 0..4294967294; png|jpeg|webp (sd3: png|jpeg); prompt up to
    10000 characters; no steps, guidance or sampler; the sd3 model comes from the config."""
    takes = ("size", "seed") + (() if engine == "sd3" and model in _NO_NEGATIVE_PROMPT else ("negative_prompt",))
    return Capabilities(
        source=f"built-in: Stability v2beta {engine} (OpenAPI 2024-12-30)",
        takes=tuple(sorted(takes)), aspect_ratios=tuple(ASPECT_RATIOS), seed=Span(min=0, max=MAX_SEED),
        formats=("png", "jpeg") if engine == "sd3" else ("png", "jpeg", "webp"), prompt_max=10000,
    )


def nearest_aspect_ratio(width: int, height: int) -> str:
    """The supported aspect ratio closest to width:height (pure)."""
    target = math.log(width / height)
    return min(ASPECT_RATIOS, key=lambda r: abs(math.log(ASPECT_RATIOS[r][0] / ASPECT_RATIOS[r][1]) - target))


def build_form(
    request: ImageRequest, *, engine: str, model: str | None, index: int = 0, backend: str | None = None
) -> list[tuple[str, str]]:
    """The multipart fields for image number ``index`` of ``request`` (pure)."""
    seed = 0 if request.seed is None else request.seed + index
    if seed > MAX_SEED:
        raise Rejected(f"seed: Stability accepts 0..{MAX_SEED} (got {seed})", backend=backend)
    fmt = request.output_format.value
    if engine == "sd3" and fmt == "webp":
        fmt = "png"
    fields = [("prompt", request.prompt)]
    if request.negative_prompt and not (engine == "sd3" and model in _NO_NEGATIVE_PROMPT):
        fields.append(("negative_prompt", request.negative_prompt))
    fields += [
        ("aspect_ratio", nearest_aspect_ratio(request.width, request.height)),
        ("seed", str(seed)),
        ("output_format", fmt),
    ]
    if engine == "sd3" and model:
        fields.append(("model", model))
    return fields


def parse_response(
    body: bytes, headers: Mapping[str, str], *, backend: str
) -> tuple[bytes, int | None]:
    """The image bytes and the real seed from a 200 answer; ContentFiltered when blurred (pure)."""
    content_type = headers.get("Content-Type", "")
    if content_type.startswith("application/json"):
        try:
            doc = json.loads(body)
            data = base64.b64decode(doc["image"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise BadResponse("JSON answer has no valid base64 'image'", backend=backend) from exc
        reason, seed_text = str(doc.get("finish_reason") or "SUCCESS"), doc.get("seed")
    else:
        data = body
        reason, seed_text = headers.get("finish-reason", "SUCCESS"), headers.get("seed")
    if reason == "CONTENT_FILTERED":
        raise ContentFiltered(
            "Stability's moderation blurred the image (finish-reason CONTENT_FILTERED)", backend=backend
        )
    if reason not in ("SUCCESS", ""):
        raise ServerError(f"generation finished with finish-reason {reason}", backend=backend)
    try:
        seed = int(seed_text) if seed_text not in (None, "") else None
    except (TypeError, ValueError):
        seed = None
    return data, seed


def error_for_response(
    status: int, body: bytes, *, backend: str, retry_after: float | None = None
) -> BackendError:
    """The taxonomy's error for a Stability error answer, its JSON kept in the message (pure)."""
    name, message = "", error_text(body)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        name = str(doc.get("name") or "")
        errors = doc.get("errors") or doc.get("message") or []
        text = "; ".join(map(str, errors)) if isinstance(errors, list) else str(errors)
        message = f"{name or 'error'}: {text or 'no detail'}" + (f" (id {doc['id']})" if doc.get("id") else "")
    cls: type[BackendError] | None = None
    if status == 403 and name == "content_moderation":
        cls = ContentFiltered
    elif status == 402 or name == "payment_required":
        cls = QuotaExhausted
    elif status in (401, 403):
        cls = AuthFailed
    elif status in (400, 404, 413, 422):
        cls = Rejected
    if cls is None:
        return error_for_status(status, message, backend=backend, retry_after=retry_after)
    return cls(message, backend=backend, status=status, retry_after=retry_after)


class StabilityBackend(HttpBackend[StabilitySettings]):
    """Stability AI's v2beta Stable Image API."""

    kind = "stability"

    @property
    def capabilities(self) -> Capabilities:
        return stability_capabilities(self.settings.engine, self.settings.model)

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        engine, model = self.settings.engine, self.settings.model
        forms = [build_form(request, engine=engine, model=model, index=i, backend=self.name)
            for i in range(request.n)]
        return await gather_all(self._one(form, request, deadline) for form in forms)

    def error_for(self, answer: Answer) -> BackendError:
        return error_for_response(
            answer.status, answer.body, backend=self.name,
            retry_after=parse_retry_after(answer.headers.get("Retry-After")),
        )

    async def _one(
        self, fields: list[tuple[str, str]], request: ImageRequest, deadline: Deadline
    ) -> GeneratedImage:
        form = aiohttp.FormData(fields, default_to_multipart=True)
        url = self.base_url + _GENERATE + self.settings.engine
        answer = await self.send(
            "POST", url, data=form, headers={"accept": "image/*"}, deadline=deadline,
            cap=self.settings.max_image_bytes,
        )
        data, seed = parse_response(answer.body, answer.headers, backend=self.name)
        sent = dict(fields)
        info = {
            "aspect_ratio": sent["aspect_ratio"],
            "requested_size": f"{request.width}x{request.height}",
            "engine": self.settings.engine,
        }
        if "model" in sent:
            info["model"] = sent["model"]
        return check_image(data, backend=self.name, seed=seed, info=info)

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        answer = await self.send(
            "GET", self.base_url + _BALANCE, deadline=deadline, cap=_JSON_CAP, timings=timings
        )
        body = answer.json(backend=self.name)
        credits = body.get("credits") if isinstance(body, dict) else None
        if not isinstance(credits, int | float):
            raise BadResponse("/v1/user/balance answer has no numeric 'credits'", backend=self.name)
        return f"{credits:g} credits"
