"""``fal-ai``: fal's synchronous model endpoints behind the router.

huggingface_hub 2.4.0 ``inference/_providers/fal_ai.py`` (``FalAITextToImageTask``, a
``FalAITask``: synchronous, no queue and no polling for text-to-image):

- ``POST {base_url}/fal-ai/{providerId}`` (the id already starts with ``fal-ai/``, so the
  path reads ``/fal-ai/fal-ai/flux/schnell``; confirmed by a router error quoted in
  fal-ai/fal#1043);
- body ``{"prompt", negative_prompt, num_inference_steps, guidance_scale, seed,
  "image_size": {"width", "height"}}`` (width and height moved into ``image_size`` when both
  are set); for a LoRA (the mapping's ``adapterWeightsPath``) ``"loras": [{"path":
  "{hub}/{hf_model}/resolve/main/{adapterWeightsPath}", "scale": 1}]``, and ``"model_name":
  "stabilityai/stable-diffusion-xl-base-1.0"`` when the provider id is ``fal-ai/lora``;
- 200: ``{"images": [{"url", "width", "height", "content_type"}], "seed",
  "has_nsfw_concepts": [bool], ...}`` (fal's FLUX output schema,
  https://fal.ai/models/fal-ai/flux/schnell/api); the image is fetched from ``images[0].url``
  (fal's CDN, a public host: no credentials go there).

Decided: ``has_nsfw_concepts[0]`` true is content_filtered (fal's safety checker then answers
a black image, which is no result). Which fields a fal model reads depends on the model
(FLUX.1-schnell takes 1-12 steps, no negative prompt): everything huggingface_hub sends is
sent, and no range is declared.
"""

from __future__ import annotations

from typing import Any

from imagegate.backends.hf_inference.wire import (
    Call,
    ImageUrl,
    Provider,
    Target,
    field_path,
    fixed_capabilities,
    image_url,
    json_object,
    parameters,
)
from imagegate.errors import ContentFiltered
from imagegate.models import ImageRequest

__all__ = ["PROVIDER"]

_CAPABILITIES = fixed_capabilities(
    "built-in: fal-ai text-to-image through the HF router (huggingface_hub 2.4 fal_ai.py)"
)


def build(request: ImageRequest, target: Target, seed: int | None) -> Call:
    body: dict[str, Any] = {"prompt": request.prompt, **parameters(request, seed)}
    if "width" in body and "height" in body:
        body["image_size"] = {"width": body.pop("width"), "height": body.pop("height")}
    if target.adapter_weights_path is not None:
        path = f"{target.hub}/{target.hf_model}/resolve/main/{target.adapter_weights_path}"
        body["loras"] = [{"path": path, "scale": 1}]
        if target.provider_id == "fal-ai/lora":  # SD-based LoRAs need their base (fal_ai.py)
            body["model_name"] = "stabilityai/stable-diffusion-xl-base-1.0"
    return Call(f"/fal-ai/{target.provider_id}", body)


def parse(body: bytes, backend: str) -> ImageUrl:
    doc = json_object(body, backend)
    if field_path(doc, "has_nsfw_concepts", 0) is True:
        raise ContentFiltered("fal's safety checker flagged the image", backend=backend)
    return image_url(field_path(doc, "images", 0, "url"), "'images[0].url'", backend)


PROVIDER = Provider(
    name="fal-ai",
    source="huggingface_hub 2.4.0 inference/_providers/fal_ai.py",
    build=build,
    parse=parse,
    capabilities=_CAPABILITIES,
    downloads=True,
)
