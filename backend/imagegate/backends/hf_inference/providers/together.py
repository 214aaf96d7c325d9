"""``together``: Together AI's images API behind the router.

huggingface_hub 2.4.0 ``inference/_providers/together.py`` (``TogetherTextToImageTask``):

- ``POST {base_url}/together/v1/images/generations``;
- body ``{"prompt", "response_format": "base64", negative_prompt, height, width,
  guidance_scale, seed, "steps" (num_inference_steps renamed), "model": providerId}``, the
  model set last; unset values left out;
- 200: ``{"data": [{"b64_json": ...}], ...}`` (it asks ``base64`` and reads ``b64_json``).

Together's API reference (https://docs.together.ai/reference/post-images-generations)
documents all of these fields, so every one is sent. The encoding of the answer depends on
the model (``output_format``, which huggingface_hub does not send): not declared.
"""

from __future__ import annotations

from imagegate.backends.hf_inference.wire import (
    Call,
    Provider,
    Target,
    fixed_capabilities,
    parameters,
    parse_b64,
)
from imagegate.models import ImageRequest

__all__ = ["PROVIDER"]

_CAPABILITIES = fixed_capabilities(
    "built-in: together text-to-image through the HF router (huggingface_hub 2.4 together.py)"
)


def build(request: ImageRequest, target: Target, seed: int | None) -> Call:
    params = parameters(request, seed)
    if "num_inference_steps" in params:
        params["steps"] = params.pop("num_inference_steps")
    body = {"prompt": request.prompt, "response_format": "base64", **params, "model": target.provider_id}
    return Call("/together/v1/images/generations", body)


PROVIDER = Provider(
    name="together",
    source="huggingface_hub 2.4.0 inference/_providers/together.py",
    build=build,
    parse=parse_b64,
    capabilities=_CAPABILITIES,
)
