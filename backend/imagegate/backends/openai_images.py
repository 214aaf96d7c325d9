"""Any server that speaks the OpenAI Images API: aggregators, self-hosted servers, another imagegate.

Wire (openai-python 3.54 ``types/image_generate_params.py``, ``images_response.py``):

- ``POST {base_url}/v1/images/generations``, ``Authorization: Bearer <key>`` (no header at
  all when ``api_key_required = false`` and the variable is unset), JSON
  ``{model, prompt, n, size: "WxH", response_format: "b64_json"}``.
- 200: ``{"created", "data": [{"b64_json"?, "url"?, "revised_prompt"?}], ...}``; each item
  may carry either form. A ``url`` is downloaded at once under the same deadline and
  ``max_image_bytes`` cap; a ``data:`` URL is decoded in place.
- Errors: ``{"error": {"message", "type", "param", "code"}}``; the message is kept.
  ``code`` content_policy_violation / moderation_blocked -> content_filtered;
  402, or code insufficient_quota / billing_hard_limit_reached (OpenAI sends these with 429
  and 400) -> quota_exhausted; 401/403 -> auth_failed; 429 -> rate_limited with
  ``retry-after-ms`` or ``Retry-After``; 503 -> unavailable; other 5xx -> server_error;
  other 4xx -> rejected.

Decided:

- ``base_url`` may end in ``/v1`` (the openai SDK's ``OPENAI_BASE_URL`` convention); no
  second ``/v1`` is added then.
- ``model`` (request, else config) is left out when unset: the server picks its default.
- Model families (:func:`model_family`): ``dall-e-2`` and ``dall-e-3`` by name;
  ``gpt-image-*`` and ``chatgpt-image-*`` are GPT image models, and on api.openai.com so is
  every other name (OpenAI serves no other family), while an unset model there is
  ``dall-e-2`` (the API's documented default). On any other server an unknown name is the
  server's own model: no per-model rule applies. Each family's sizes, ``n`` per call and
  prompt length (:func:`openai_capabilities`, sources there) let the router fit a request
  before sending it.
- ``response_format: "b64_json"`` is sent except to GPT image models, which always answer
  base64 and reject the parameter with 400 ``unknown_parameter`` on api.openai.com.
  ``output_format`` is sent only when it is not PNG (the default), and only to GPT image
  models or with extensions on; the real format is sniffed anyway.
- Extensions: ``seed``, ``negative_prompt``, ``steps`` and ``guidance_scale`` are not in the
  OpenAI shape. With ``send_extensions`` on, each is sent when the caller set it:
  imagegate's own server reads all of them, and many self-hosted servers read ``seed``.
  api.openai.com rejects unknown fields with 400 ``unknown_parameter``, so the default is
  off when ``base_url`` is api.openai.com and on elsewhere; ``send_extensions`` (or
  ``OPENAI_SEND_EXTENSIONS`` for an environment-only set-up) overrides it. An image reports
  an item's own ``seed`` field when the server sends one, else the sent seed when ``n = 1``.
- The key is sent to download a ``url`` only when the URL has the same origin as
  ``base_url``: presigned storage URLs on other hosts never see it. Downloads follow the
  download policy (download.py: no private address unless it is ``base_url``'s origin or in
  ``download_hosts``), at most ``MAX_DOWNLOADS`` at once.
- More entries in ``data`` than ``n`` asked: the first ``n`` are kept (images.py).
- Probe: ``GET {base_url}/v1/models`` (free). 404/405 there still means "reachable and
  authenticated enough": many image servers have no model list.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

from pydantic import field_validator

from imagegate.backends.http import MAX_DOWNLOADS, Answer, HttpBackend, gather_all
from imagegate.backends.images import check_image, keep_asked
from imagegate.backends.transport import error_for_status, error_text, parse_retry_after
from imagegate.capabilities import Capabilities
from imagegate.config import HttpBackendSettings, url_from_env
from imagegate.errors import BackendError, BadResponse, ContentFiltered, QuotaExhausted
from imagegate.logging import get_logger
from imagegate.models import Deadline, GeneratedImage, ImageFormat, ImageRequest

__all__ = [
    "ImageItem",
    "OpenAIImagesBackend",
    "OpenAISettings",
    "build_request",
    "error_from_response",
    "from_env",
    "model_family",
    "openai_capabilities",
    "parse_response",
]

log = get_logger(__name__)

_GENERATIONS = "/v1/images/generations"
_MODELS = "/v1/models"
_FILTERED_CODES = frozenset({"content_policy_violation", "moderation_blocked"})
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
_MODELS_CAP = 4 * 1024 * 1024
_OFFICIAL_HOST = "api.openai.com"
Family = Literal["dall-e-2", "dall-e-3", "gpt-image"]

# Per family: (sizes, images per call, prompt length, formats). openai-python
# ``types/image_generate_params.py`` @04448952 (the gpt-image-1 era docstrings): dall-e-2
# 256x256/512x512/1024x1024, n 1-10, prompt <= 1000 characters; dall-e-3
# 1024x1024/1792x1024/1024x1792, n = 1, prompt <= 4000; gpt-image-1 1024x1024/1536x1024/
# 1024x1536 (or auto), n 1-10, prompt <= 32000, output_format png|jpeg|webp. DALL-E answers
# PNG only (output_format is GPT image only). openai 3.57 lets gpt-image-2 take any WxH in
# multiples of 16: not used here (the three sizes every GPT image model takes).
_FAMILIES: dict[str, tuple[tuple[tuple[int, int], ...], int, int, tuple[str, ...]]] = {
    "dall-e-2": (((256, 256), (512, 512), (1024, 1024)), 10, 1000, ("png",)),
    "dall-e-3": (((1024, 1024), (1792, 1024), (1024, 1792)), 1, 4000, ("png",)),
    "gpt-image": (((1024, 1024), (1536, 1024), (1024, 1536)), 10, 32000, ("png", "jpeg", "webp")),
}
_EXTENSION_FIELDS = ("negative_prompt", "seed", "steps", "guidance_scale")


_BOOL_TEXT = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def is_official(base_url: str) -> bool:
    """Whether ``base_url`` is OpenAI's own API."""
    return urlsplit(base_url).hostname == _OFFICIAL_HOST


class OpenAISettings(HttpBackendSettings):
    """Any server that speaks the OpenAI images API (aggregators, another imagegate)."""

    kind: Literal["openai"] = "openai"
    api_key_env: str | None = "OPENAI_API_KEY"
    api_key_required: bool = True
    # send seed/negative_prompt/steps/guidance_scale/output_format when set (imagegate's own
    # server reads them); None: off for api.openai.com (it rejects unknown fields), else on
    send_extensions: bool | None = None

    @field_validator("send_extensions", mode="before")
    @classmethod
    def _bool_text(cls, value: object) -> object:
        """``OPENAI_SEND_EXTENSIONS=0|1|true|false`` from the environment arrives as text."""
        if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
            return _BOOL_TEXT[value.strip().lower()]
        return value

    @property
    def extensions(self) -> bool:
        """Whether the extension fields are sent (see ``send_extensions``)."""
        if self.send_extensions is not None:
            return self.send_extensions
        return not is_official(self.base_url)

    def secret_env_names(self) -> dict[str, str]:
        return {"api_key": self.api_key_env} if self.api_key_env else {}

    def required_secrets(self) -> tuple[str, ...]:
        return ("api_key",) if self.api_key_env and self.api_key_required else ()


def from_env(env: Mapping[str, str], have_others: bool) -> list[dict[str, Any]]:
    """``OPENAI_BASE_URL`` (+ ``OPENAI_API_KEY`` when the server wants one), priority 40;
    ``OPENAI_SEND_EXTENSIONS`` (true/false) overrides the extensions default.

    Decided: OpenAI's own hosts always want a key, so without ``OPENAI_API_KEY`` that backend
    is disabled at start like any other whose key is missing. Another server may be keyless
    (a local gateway, another imagegate): it is used without a key, and a warning says so at
    start, so that a forgotten key is seen before the first 401.
    """
    if not env.get("OPENAI_BASE_URL", "").strip():
        return []
    base_url = url_from_env(env, "OPENAI_BASE_URL")
    host = (urlsplit(base_url).hostname or "").lower()
    needs_key = host == "openai.com" or host.endswith((".openai.com", ".openai.azure.com"))
    if not needs_key and not env.get("OPENAI_API_KEY", "").strip():
        log.warning(
            "openai_key_missing",
            message="OPENAI_BASE_URL is set but OPENAI_API_KEY is not: its requests go without"
            " a key (fine for a keyless server; set OPENAI_API_KEY if it wants one)",
        )
    table: dict[str, Any] = {
        "name": "openai",
        "kind": "openai",
        "base_url": base_url,
        "priority": 40,
        "api_key_required": needs_key,
    }
    if env.get("OPENAI_SEND_EXTENSIONS"):
        table["send_extensions"] = env["OPENAI_SEND_EXTENSIONS"]
    return [table]


@dataclass(frozen=True)
class ImageItem:
    """One entry of ``data``: decoded bytes, or a URL still to download."""

    data: bytes | None
    url: str | None
    seed: int | None
    info: dict[str, Any]


def endpoint(base_url: str, path: str) -> str:
    """``base_url + path``, without doubling a ``/v1`` that ``base_url`` already ends in."""
    if base_url.endswith("/v1") and path.startswith("/v1/"):
        path = path[3:]
    return base_url + path


def model_family(model: str | None, *, official: bool = False) -> Family | None:
    """The OpenAI model family of ``model`` (None: a compatible server's own model)."""
    name = (model or "").lower()
    if name.startswith("dall-e-3"):
        return "dall-e-3"
    if name.startswith("dall-e"):
        return "dall-e-2"
    if name.startswith(("gpt-image", "chatgpt-image")):
        return "gpt-image"
    if official:
        return "gpt-image" if name else "dall-e-2"
    return None


@functools.lru_cache(maxsize=64)
def openai_capabilities(model: str | None, *, official: bool, extensions: bool) -> Capabilities:
    """What an OpenAI-shaped server takes for ``model`` (see ``_FAMILIES`` for sources)."""
    family = model_family(model, official=official)
    takes = ("size", "model") + (_EXTENSION_FIELDS if extensions else ())
    if family is None:
        return Capabilities(
            source="built-in: the OpenAI images shape (a compatible server's own model)",
            takes=takes, formats=None if extensions else ("png",),
        )
    sizes, max_n, prompt_max, formats = _FAMILIES[family]
    return Capabilities(
        source=f"built-in: {family} (openai-python image_generate_params)", takes=takes,
        sizes=sizes, max_n=max_n, prompt_max=prompt_max, formats=formats,
    )


def build_request(
    request: ImageRequest, *, model: str | None, extensions: bool = True, official: bool = False
) -> dict[str, Any]:
    """The generations JSON body (pure)."""
    model = request.model or model
    gpt_image = model_family(model, official=official) == "gpt-image"
    payload: dict[str, Any] = {"prompt": request.prompt, "n": request.n, "size": f"{request.width}x{request.height}"}
    if model:
        payload["model"] = model
    if not gpt_image:
        payload["response_format"] = "b64_json"
    if request.output_format is not ImageFormat.PNG and (extensions or gpt_image):
        payload["output_format"] = request.output_format.value
    if extensions:
        extra = {
            "seed": request.seed,
            "negative_prompt": request.negative_prompt or None,
            "steps": request.steps,
            "guidance_scale": request.guidance_scale,
        }
        payload.update({k: v for k, v in extra.items() if v is not None})
    return payload


def parse_response(body: Any, *, backend: str, sent_seed: int | None) -> list[ImageItem]:
    """The images of a 200 answer, decoded or as URLs to fetch (pure)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not data:
        raise BadResponse("images answer has no 'data' list", backend=backend)
    items = []
    for entry in data:
        if not isinstance(entry, dict):
            raise BadResponse("an entry of 'data' is not an object", backend=backend)
        seed = entry.get("seed")
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else (sent_seed if len(data) == 1 else None)
        info = {"revised_prompt": entry["revised_prompt"]} if entry.get("revised_prompt") else {}
        b64, url = entry.get("b64_json"), entry.get("url")
        if isinstance(url, str) and url.startswith("data:"):
            b64, url = url.partition(",")[2], None
        if isinstance(b64, str) and b64:
            items.append(ImageItem(_b64decode(b64, backend), None, seed, info))
        elif isinstance(url, str) and url:
            items.append(ImageItem(None, url, seed, info))
        else:
            raise BadResponse("an entry of 'data' has neither 'b64_json' nor 'url'", backend=backend)
    return items


def _b64decode(text: str, backend: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadResponse("'b64_json' is not valid base64", backend=backend) from exc


def _retry_after(headers: Mapping[str, str]) -> float | None:
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    return parse_retry_after(headers.get("Retry-After"))


def error_from_response(status: int, body: bytes, headers: Mapping[str, str], *, backend: str) -> BackendError:
    """The taxonomy's error for a non-200 answer, keeping the server's message (pure)."""
    error: Any = None
    try:
        doc = json.loads(body)
        error = doc.get("error") if isinstance(doc, dict) else None
    except ValueError:
        pass
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("code") or "no detail")
        code = str(error.get("code") or error.get("type") or "")
    else:
        message, code = (str(error) if error else error_text(body) or "no detail"), ""
    message = error_text(message) + (f" [{code}]" if code and code not in message else "")
    retry_after = _retry_after(headers)
    if code in _FILTERED_CODES:
        return ContentFiltered(message, backend=backend, status=status)
    if status == 402 or code in _QUOTA_CODES:
        return QuotaExhausted(message, backend=backend, status=status)
    return error_for_status(status, message, backend=backend, retry_after=retry_after)


class OpenAIImagesBackend(HttpBackend[OpenAISettings]):
    """An OpenAI-compatible ``/v1/images/generations`` server."""

    kind = "openai"

    @property
    def capabilities(self) -> Capabilities:
        return self.capabilities_for(None)

    def capabilities_for(self, request: ImageRequest | None) -> Capabilities:
        model = (request.model if request else None) or self.settings.model
        return openai_capabilities(
            model, official=is_official(self.base_url), extensions=self.settings.extensions
        )

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        payload = build_request(
            request, model=self.settings.model, extensions=self.settings.extensions,
            official=is_official(self.base_url),
        )
        url = endpoint(self.base_url, _GENERATIONS)
        cap = (self.settings.max_image_bytes * 4 // 3 + 4096) * request.n  # base64 inflates 4/3
        answer = await self.send("POST", url, json=payload, deadline=deadline, cap=cap)
        items = parse_response(answer.json(backend=self.name), backend=self.name, sent_seed=payload.get("seed"))
        items, note = keep_asked(items, request.n, backend=self.name)
        return await gather_all(
            (self._image(item, url, deadline, note if i == 0 else {}) for i, item in enumerate(items)),
            limit=MAX_DOWNLOADS,
        )

    def error_for(self, answer: Answer) -> BackendError:
        return error_from_response(answer.status, answer.body, answer.headers, backend=self.name)

    async def _image(
        self, item: ImageItem, base: str, deadline: Deadline, note: dict[str, Any]
    ) -> GeneratedImage:
        """One entry of ``data`` as an image: decoded in place, or downloaded (policy: download.py)."""
        info = {**item.info, **note}
        if item.data is not None:
            return check_image(item.data, backend=self.name, seed=item.seed, info=info)
        data = await self.download(urljoin(base, item.url or ""), deadline)
        return check_image(data, backend=self.name, seed=item.seed, info=info, quote=False)

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        answer = await self.send(
            "GET", endpoint(self.base_url, _MODELS), deadline=deadline, cap=_MODELS_CAP,
            ok=(200, 404, 405), timings=timings,
        )
        if answer.status in (404, 405):
            return f"reachable (no model list: HTTP {answer.status})"
        doc = answer.json(backend=self.name)
        models = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(models, list):
            return "reachable (model list not understood)"
        names = [str(m.get("id")) for m in models if isinstance(m, dict)]
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return f"{len(names)} models" + (f": {shown}" if names else "")
