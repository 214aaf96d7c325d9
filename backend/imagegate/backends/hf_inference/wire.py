"""What every router provider shares: the shape of a provider module, and pure helpers.

Every text-to-image call through the router is one ``POST {base_url}/{provider}/{route}``
with a JSON body (huggingface_hub 2.4.0 ``inference/_providers/_common.py``
``TaskProviderHelper.prepare_request``: ``_prepare_base_url`` is
``INFERENCE_PROXY_TEMPLATE.format(provider=...)`` for an ``hf_`` token), the headers
``Authorization: Bearer <token>``, ``Content-Type: application/json`` and ``Accept: image/png``
(``InferenceClient._inner_post`` adds it for every text-to-image provider, also those that
answer JSON), ``X-HF-Bill-To`` when an organisation is billed, and a provider's own extras.
What comes back is the image itself, base64 in JSON, an image URL, or a job to poll.

A provider module holds one :class:`Provider`: its pure ``build`` (request -> :class:`Call`),
``parse`` (answer -> :class:`Image`, :class:`ImageUrl` or :class:`PollUrl`), ``poll`` (a poll
answer -> an outcome, Pending or Failed), the request fields it takes and its capabilities.
The backend (``backend.py``) does the I/O around them.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imagegate.backends.http import Failed, Pending
from imagegate.capabilities import Capabilities
from imagegate.errors import BackendError, BadResponse
from imagegate.models import ImageRequest

__all__ = [
    "ALL_FIELDS",
    "Call",
    "Image",
    "ImageUrl",
    "Outcome",
    "PollUrl",
    "Provider",
    "Target",
    "b64_image",
    "field_path",
    "fixed_capabilities",
    "image_url",
    "json_object",
    "parameters",
    "parse_b64",
]


@dataclass(frozen=True)
class Target:
    """The model one call is for: the Hub id, the provider's own id for it (the Hub mapping's
    ``providerId``), a LoRA's weights file (``adapterWeightsPath``), and the Hub's base URL."""

    hf_model: str
    provider_id: str
    adapter_weights_path: str | None = None
    hub: str = "https://huggingface.co"


@dataclass(frozen=True)
class Call:
    """One POST: the path after ``base_url``, the JSON body, the provider's extra headers."""

    path: str
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Image:
    """The image bytes are in the answer (raw, or decoded from base64)."""

    data: bytes


@dataclass(frozen=True)
class ImageUrl:
    """The image is at this URL (fetched under the download policy, without credentials)."""

    url: str


@dataclass(frozen=True)
class PollUrl:
    """A job: poll ``GET {base_url}{path}`` with the same headers until it ends."""

    path: str


Outcome = Image | ImageUrl | PollUrl
Build = Callable[[ImageRequest, Target, int | None], Call]
Parse = Callable[[bytes, str], Outcome]
Poll = Callable[[Any, str], "ImageUrl | Pending | Failed"]
ErrorHook = Callable[[int, dict[str, Any], str, str], "BackendError | None"]


@dataclass(frozen=True)
class Provider:
    """One router provider's text-to-image wire format (pure functions only)."""

    name: str
    source: str  # where the wire format comes from
    build: Build  # (request, target, seed) -> Call
    parse: Parse  # (answer body, backend name) -> Outcome
    capabilities: Callable[[Target | None], Capabilities]
    poll: Poll | None = None  # (poll answer JSON, backend name) -> ImageUrl | Pending | Failed
    # (status, JSON body or {}, message, backend name) -> an error the common mapping would miss
    error: ErrorHook | None = None
    poll_interval_s: float = 2.0
    downloads: bool = False  # the image comes as a URL to fetch

    @property
    def takes(self) -> tuple[str, ...]:
        """The request fields sent at all (``capabilities.REQUEST_FIELDS``)."""
        return self.capabilities(None).takes


ALL_FIELDS = ("negative_prompt", "size", "steps", "guidance_scale", "seed", "model")
"""What huggingface_hub's ``text_to_image`` passes every provider (its scheduler is no sampler)."""


def fixed_capabilities(source: str, takes: tuple[str, ...] = ALL_FIELDS) -> Callable[[Target | None], Capabilities]:
    """Capabilities that do not depend on the model: one value, whatever the target."""
    value = Capabilities(source=source, takes=takes)
    return lambda target: value


def parameters(request: ImageRequest, seed: int | None) -> dict[str, Any]:
    """The parameters ``InferenceClient.text_to_image`` passes every provider helper, in its
    order, unset ones left out (its ``filter_none``); an empty negative prompt is unset."""
    found = {
        "negative_prompt": request.negative_prompt or None,
        "height": request.height,
        "width": request.width,
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance_scale,
        "seed": seed,
    }
    return {k: v for k, v in found.items() if v is not None}


def json_object(body: bytes, backend: str) -> dict[str, Any]:
    """The answer as a JSON object; BadResponse otherwise."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise BadResponse(f"unexpected response (not JSON): {exc}", backend=backend) from exc
    if not isinstance(doc, dict):
        raise BadResponse(f"unexpected response: a JSON {type(doc).__name__}, not an object", backend=backend)
    return doc


def field_path(doc: Any, *path: str | int) -> Any:
    """``doc[path[0]][path[1]]...``, or None where a step is missing or of the wrong type."""
    for step in path:
        if isinstance(step, int):
            if not isinstance(doc, list) or len(doc) <= step:
                return None
        elif not isinstance(doc, dict) or step not in doc:
            return None
        doc = doc[step]
    return doc


def b64_image(doc: dict[str, Any], backend: str) -> Image:
    """``data[0].b64_json`` of an OpenAI-shaped answer, decoded (Together, Nscale)."""
    text = field_path(doc, "data", 0, "b64_json")
    if not isinstance(text, str) or not text:
        raise BadResponse("the answer has no 'data[0].b64_json'", backend=backend)
    try:
        return Image(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise BadResponse("'data[0].b64_json' is not valid base64", backend=backend) from exc


def parse_b64(body: bytes, backend: str) -> Image:
    """An OpenAI-shaped JSON answer's first image (Together, Nscale)."""
    return b64_image(json_object(body, backend), backend)


def image_url(value: Any, what: str, backend: str) -> ImageUrl:
    """An http(s) URL string, else BadResponse naming ``what``."""
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise BadResponse(f"the answer has no image URL in {what}", backend=backend)
    return ImageUrl(value)
