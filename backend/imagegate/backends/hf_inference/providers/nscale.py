"""``nscale``: Nscale's OpenAI-shaped images API behind the router.

huggingface_hub 2.4.0 ``inference/_providers/nscale.py`` (``NscaleTextToImageTask``):

- ``POST {base_url}/nscale/v1/images/generations``;
- body ``{"response_format": "b64_json", "prompt", "model": providerId, "size": "WxH"}``;
  ``num_inference_steps`` is dropped (and ``cfg_scale``); the other parameters
  (negative_prompt, guidance_scale, seed) are passed on as they are;
- 200: ``{"created", "data": [{"b64_json": ...}]}``.

Decided (a difference from huggingface_hub, listed in the differential test): only the
fields Nscale's API reference documents are sent -- ``model``, ``prompt``, ``size`` (and
``n``, which stays 1) (https://docs.nscale.com/api-reference/inferencing/create-image) --
so no negative prompt, guidance or seed: a seed the provider may ignore would be reported as
the one that made the image. The router then drops those fields with an adjustment.
Nscale's own docs answer 429 for "Insufficient credit": such a 429 is quota_exhausted.
"""

from __future__ import annotations

from typing import Any

from imagegate.backends.hf_inference.wire import (
    Call,
    Image,
    Provider,
    Target,
    b64_image,
    json_object,
)
from imagegate.capabilities import Capabilities
from imagegate.errors import BackendError, QuotaExhausted
from imagegate.models import ImageRequest

__all__ = ["PROVIDER"]

_TAKES = ("size", "model")
_CAPABILITIES = Capabilities(
    source="built-in: nscale text-to-image through the HF router (Nscale's API reference)",
    takes=_TAKES,
)


def build(request: ImageRequest, target: Target, seed: int | None) -> Call:
    body = {"response_format": "b64_json", "prompt": request.prompt, "model": target.provider_id,
            "size": f"{request.width}x{request.height}"}
    return Call("/nscale/v1/images/generations", body)


def parse(body: bytes, backend: str) -> Image:
    return b64_image(json_object(body, backend), backend)


def error(status: int, doc: dict[str, Any], message: str, backend: str) -> BackendError | None:
    """429 "Insufficient credit" (docs.nscale.com, image-generation troubleshooting)."""
    if status == 429 and "credit" in message.lower():
        return QuotaExhausted(f"no credit left at nscale: {message}", backend=backend, status=429)
    return None


PROVIDER = Provider(
    name="nscale",
    source="huggingface_hub 2.4.0 inference/_providers/nscale.py; docs.nscale.com create-image",
    takes=_TAKES,
    build=build,
    parse=parse,
    capabilities=lambda target: _CAPABILITIES,
    error=error,
)
