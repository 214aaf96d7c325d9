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
    Provider,
    Target,
    fixed_capabilities,
    parse_b64,
)
from imagegate.errors import BackendError, QuotaExhausted
from imagegate.models import ImageRequest

__all__ = ["PROVIDER"]

_CAPABILITIES = fixed_capabilities(
    "built-in: nscale text-to-image through the HF router (Nscale's API reference)", ("size", "model")
)


def build(request: ImageRequest, target: Target, seed: int | None) -> Call:
    body = {"response_format": "b64_json", "prompt": request.prompt, "model": target.provider_id,
            "size": f"{request.width}x{request.height}"}
    return Call("/nscale/v1/images/generations", body)


def error(status: int, doc: dict[str, Any], message: str, backend: str) -> BackendError | None:
    """429 "Insufficient credit" (docs.nscale.com, image-generation troubleshooting)."""
    if status == 429 and "credit" in message.lower():
        return QuotaExhausted(f"no credit left at nscale: {message}", backend=backend, status=429)
    return None


PROVIDER = Provider(
    name="nscale",
    source="huggingface_hub 2.4.0 inference/_providers/nscale.py; docs.nscale.com create-image",
    build=build,
    parse=parse_b64,
    capabilities=_CAPABILITIES,
    error=error,
)
