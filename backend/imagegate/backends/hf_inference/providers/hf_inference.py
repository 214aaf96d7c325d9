"""``hf-inference``: Hugging Face's own serverless inference, the router's first provider.

huggingface_hub 2.4.0 ``inference/_providers/hf_inference.py`` (``HFInferenceTask``):

- ``POST {base_url}/hf-inference/models/{model}``, the Hub id itself in the path (no
  provider-side id); body ``{"inputs": prompt, "parameters": {negative_prompt, height, width,
  num_inference_steps, guidance_scale, seed}}``, unset values left out; ``Accept: image/png``.
- 200: the body is the image. Its Content-Type is not trusted (``image/jpeg`` for PNG bytes
  at times): the bytes are sniffed and verified.
- 503 ``{"error", "estimated_time": s}`` while a model loads (the router's common mapping reads
  it); 404 plain "Not Found" for a model it does not serve.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from imagegate.backends.hf_inference.wire import Call, Image, Provider, Target, parameters
from imagegate.capabilities import Capabilities
from imagegate.models import ImageRequest

__all__ = ["CAPABILITIES", "PROVIDER", "build_request"]

# InferenceClient.text_to_image's parameters (scheduler is no sampler name); no count (one
# image per call); the answer is the image itself, PNG as asked by ``Accept: image/png``.
# Ranges depend on the model and are not published: none here.
CAPABILITIES = Capabilities(
    source="built-in: hf-inference text-to-image (huggingface_hub 2.4 InferenceClient)",
    takes=("negative_prompt", "size", "steps", "guidance_scale", "seed", "model"),
    formats=("png",),
)


def build_request(request: ImageRequest, *, seed: int | None) -> dict[str, Any]:
    """The JSON body for one image with ``seed`` (pure)."""
    return {"inputs": request.prompt, "parameters": parameters(request, seed)}


def build(request: ImageRequest, target: Target, seed: int | None) -> Call:
    return Call(f"/hf-inference/models/{quote(target.hf_model, safe='/')}", build_request(request, seed=seed))


def parse(body: bytes, backend: str) -> Image:
    return Image(body)


PROVIDER = Provider(
    name="hf-inference",
    source="huggingface_hub 2.4.0 inference/_providers/hf_inference.py",
    build=build,
    parse=parse,
    capabilities=lambda target: CAPABILITIES,
)
