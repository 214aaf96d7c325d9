"""Together AI images: FLUX and SDXL at an OpenAI-like ``/v1/images/generations``.

Wire facts (togethercomputer/openapi ``openapi.yaml`` @090263aa, ``/images/generations``,
``ImageResponse``, ``ErrorData``, ``/models``; notes/providers_new.md §4):

- ``POST {base_url}/v1/images/generations``, ``Authorization: Bearer <key>``, JSON with
  ``prompt`` and ``model`` required; ``steps`` (spec default 20), ``seed``, ``n`` (default 1),
  ``width``/``height`` (default 1024), ``negative_prompt``, ``guidance_scale`` (3.5),
  ``response_format`` ``base64|url`` (not OpenAI's ``b64_json``), ``output_format``
  ``jpeg|png`` (default **jpeg**).
- 200: ``{"id", "model", "object": "list", "data": [{"index", "b64_json", "type":
  "b64_json"}]}`` (``{"index", "url", "type": "url"}`` for URLs; ``type`` is new in 2025).
- Errors: ``{"error": {"message", "type", "param", "code"}}`` (e.g. 401 ``invalid_api_key``).
- ``GET {base_url}/v1/models`` is a bare JSON array of ``{id, object, created, type, ...}``
  (``type`` one of chat, language, code, image, ...): free, authenticated.

Decided:

- Its own kind, not a profile of ``openai``: the field names differ (``steps``, ``width`` and
  ``height`` instead of ``size``, ``response_format: "base64"``), the default format is JPEG,
  and the model list is a bare array whose ``type`` tells an image model. As a profile it
  would be four switches in openai_images.py; as a module it is this one file.
- Always ``response_format: "base64"`` (no second request to a CDN; Together's image host
  refuses an empty User-Agent: docs images-overview) and ``output_format`` ``png`` or
  ``jpeg`` as asked (webp is converted by the router). ``steps``, ``seed``,
  ``guidance_scale`` and ``negative_prompt`` are sent only when set: the model's own
  defaults apply (FLUX.1-schnell: 4 steps, per the docs; the spec's 20 is generic).
- A ``url`` item (a server answering URLs anyway) is downloaded under the download policy.
- Capabilities: ``n`` 1..4 (docs: "1-4"); no size, steps or guidance range is in the spec
  or docs (the docs advise multiples of 8), so none is claimed: Together's own 4xx is
  ``rejected``.
- Probe: ``GET /v1/models``; when the configured model is listed, its ``type`` must be
  ``image`` (else the probe fails, naming it: a chat model would take every request and
  fail it).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, Literal

from imagegate.backends.http import MAX_DOWNLOADS, Answer, HttpBackend, gather_all
from imagegate.backends.images import check_image, keep_asked
from imagegate.backends.transport import error_for_status, error_text, parse_retry_after
from imagegate.capabilities import Capabilities
from imagegate.config import HttpBackendSettings
from imagegate.errors import BackendError, BadResponse, Rejected
from imagegate.models import Deadline, GeneratedImage, ImageFormat, ImageRequest

__all__ = [
    "CAPABILITIES",
    "TogetherBackend",
    "TogetherSettings",
    "build_request",
    "error_from_response",
    "from_env",
    "parse_models",
    "parse_response",
]

_GENERATIONS = "/v1/images/generations"
_MODELS = "/v1/models"
_MODELS_CAP = 8 * 1024 * 1024  # the whole catalogue: a few hundred models with pricing
_DEFAULT_MODEL = "black-forest-labs/FLUX.1-schnell"
# n 1..4: docs.together.ai images-overview ("n: 1-4"); output_format jpeg|png: the spec.
CAPABILITIES = Capabilities(
    source="built-in: Together openapi.yaml /images/generations and the images docs",
    takes=("negative_prompt", "size", "steps", "guidance_scale", "seed", "model"),
    max_n=4, formats=("png", "jpeg"),
    defaults={"guidance_scale": 3.5, "width": 1024},
)


class TogetherSettings(HttpBackendSettings):
    """Together AI's images endpoint (FLUX, SDXL)."""

    kind: Literal["together"] = "together"
    base_url: str = "https://api.together.xyz"
    model: str | None = _DEFAULT_MODEL
    api_key_env: str = "TOGETHER_API_KEY"

    def secret_env_names(self) -> dict[str, str]:
        return {"api_key": self.api_key_env}

    def required_secrets(self) -> tuple[str, ...]:
        return ("api_key",)


def from_env(env: Mapping[str, str], have_others: bool) -> list[dict[str, Any]]:
    """``TOGETHER_API_KEY`` configures Together (priority 35)."""
    if not env.get("TOGETHER_API_KEY", "").strip():
        return []
    return [{"name": "together", "kind": "together", "priority": 35}]


def build_request(request: ImageRequest, *, model: str | None, backend: str | None = None) -> dict[str, Any]:
    """The generations JSON body (pure)."""
    chosen = request.model or model
    if not chosen:
        raise Rejected("model: Together needs a model; set 'model' in the config", backend=backend)
    payload: dict[str, Any] = {
        "model": chosen,
        "prompt": request.prompt,
        "n": request.n,
        "width": request.width,
        "height": request.height,
        "response_format": "base64",
        "output_format": "jpeg" if request.output_format is ImageFormat.JPEG else "png",
    }
    optional = {
        "steps": request.steps,
        "seed": request.seed,
        "guidance_scale": request.guidance_scale,
        "negative_prompt": request.negative_prompt or None,
    }
    payload.update({k: v for k, v in optional.items() if v is not None})
    return payload


def parse_response(body: Any, *, backend: str) -> list[bytes | str]:
    """Each ``data`` item as decoded bytes (``b64_json``) or a URL to fetch, in ``index``
    order (pure)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not data:
        raise BadResponse("images answer has no 'data' list", backend=backend)
    items: list[tuple[int, bytes | str]] = []
    for position, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise BadResponse("an entry of 'data' is not an object", backend=backend)
        index = entry.get("index")
        order = index if isinstance(index, int) and not isinstance(index, bool) else position
        b64, url = entry.get("b64_json"), entry.get("url")
        if isinstance(b64, str) and b64:
            try:
                items.append((order, base64.b64decode(b64, validate=True)))
            except (binascii.Error, ValueError) as exc:
                raise BadResponse("'b64_json' is not valid base64", backend=backend) from exc
        elif isinstance(url, str) and url.startswith(("http://", "https://")):
            items.append((order, url))
        else:
            raise BadResponse("an entry of 'data' has neither 'b64_json' nor an http(s) 'url'", backend=backend)
    return [item for _, item in sorted(items, key=lambda pair: pair[0])]


def parse_models(body: Any, model: str | None, *, backend: str) -> str:
    """The probe's detail from ``/v1/models`` (a bare array); Rejected when ``model`` is
    listed but is not an image model (pure)."""
    if not isinstance(body, list):
        raise BadResponse("/v1/models answer is not a JSON array", backend=backend)
    types = {str(m.get("id")): str(m.get("type")) for m in body if isinstance(m, dict)}
    images = sum(1 for t in types.values() if t == "image")
    if model and model in types and types[model] != "image":
        raise Rejected(f"model {model!r} is a {types[model]} model, not an image model", backend=backend)
    listed = "listed" if model in types else "not in the list (a dedicated endpoint?)"
    return f"{len(types)} models, {images} image models; {model} {listed}"


def error_from_response(status: int, body: bytes, headers: Mapping[str, str], *, backend: str) -> BackendError:
    """The taxonomy's error for Together's ``{"error": {...}}`` answer, its message kept (pure)."""
    message, code = "", ""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        code = str(error.get("code") or "")
    text = error_text(message or body.decode("utf-8", "replace")) or "no detail"
    if code and code not in text:
        text += f" [{code}]"
    retry_after = parse_retry_after(headers.get("Retry-After"))
    return error_for_status(status, text, backend=backend, retry_after=retry_after)


class TogetherBackend(HttpBackend[TogetherSettings]):
    """Together AI's ``/v1/images/generations``."""

    kind = "together"

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        payload = build_request(request, model=self.settings.model, backend=self.name)
        cap = (self.settings.max_image_bytes * 4 // 3 + 4096) * request.n  # base64 inflates 4/3
        answer = await self.send(
            "POST", self.base_url + _GENERATIONS, json=payload, deadline=deadline, cap=cap
        )
        items, note = keep_asked(parse_response(answer.json(backend=self.name), backend=self.name),
                                 request.n, backend=self.name)
        seed = request.seed if request.n == 1 else None  # which seeds the others got: not said
        blobs = await gather_all((self._bytes(item, deadline) for item in items), limit=MAX_DOWNLOADS)
        return [
            check_image(data, backend=self.name, seed=seed if i == 0 else None,
                        info=note if i == 0 else None, quote=isinstance(items[i], bytes))
            for i, data in enumerate(blobs)
        ]

    async def _bytes(self, item: bytes | str, deadline: Deadline) -> bytes:
        return item if isinstance(item, bytes) else await self.download(item, deadline, auth=False)

    def error_for(self, answer: Answer) -> BackendError:
        return error_from_response(answer.status, answer.body, answer.headers, backend=self.name)

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        answer = await self.send(
            "GET", self.base_url + _MODELS, deadline=deadline, cap=_MODELS_CAP, timings=timings
        )
        return parse_models(answer.json(backend=self.name), self.settings.model, backend=self.name)
