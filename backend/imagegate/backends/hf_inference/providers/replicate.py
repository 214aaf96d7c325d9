"""``replicate``: Replicate predictions behind the router, held open with ``Prefer: wait``.

huggingface_hub 2.4.0 ``inference/_providers/replicate.py`` (``ReplicateTextToImageTask``):

- ``POST {base_url}/replicate/v1/models/{providerId}/predictions``; a version-pinned id
  (``owner/name:version``) goes to ``/replicate/v1/predictions`` with ``"version"`` in the
  body instead;
- header ``Prefer: wait`` (Replicate holds the request until the prediction ends, up to 60 s:
  https://replicate.com/docs/topics/predictions/create-a-prediction, "sync mode");
- body ``{"input": {"prompt", negative_prompt, height, width, num_inference_steps,
  guidance_scale, seed}}``, and ``input.lora_weights = "https://huggingface.co/{hf_model}"``
  for a LoRA (``adapterWeightsPath`` in the mapping; that URL is fixed to huggingface.co);
- 200: a prediction ``{"id", "status", "output", "error", "urls", ...}``; ``output`` is the
  image URL, or a list whose first item is (huggingface_hub takes ``[0]``).

Decided: a ``failed`` or ``canceled`` prediction is its ``error`` (NSFW -> content_filtered,
else server_error); no ``output`` while it still runs (the wait ran out) is
generation_timeout, as huggingface_hub's ``TimeoutError`` -- the router does not proxy the
prediction's ``urls.get`` (UNCONFIRMED), so it is not polled. Which inputs a model reads
depends on the model (its own schema); everything huggingface_hub sends is sent.
"""

from __future__ import annotations

from typing import Any

from imagegate.backends.hf_inference.wire import (
    Call,
    ImageUrl,
    Provider,
    Target,
    fixed_capabilities,
    image_url,
    json_object,
    parameters,
)
from imagegate.errors import ContentFiltered, GenerationTimeout, ServerError
from imagegate.models import ImageRequest

__all__ = ["PROVIDER"]

_CAPABILITIES = fixed_capabilities(
    "built-in: replicate text-to-image through the HF router (huggingface_hub 2.4 replicate.py)"
)


def build(request: ImageRequest, target: Target, seed: int | None) -> Call:
    pid = target.provider_id
    body: dict[str, Any] = {"input": {"prompt": request.prompt, **parameters(request, seed)}}
    if ":" in pid:
        body["version"] = pid.split(":", 1)[1]
        path = "/replicate/v1/predictions"
    else:
        path = f"/replicate/v1/models/{pid}/predictions"
    if target.adapter_weights_path is not None:
        body["input"]["lora_weights"] = f"https://huggingface.co/{target.hf_model}"
    return Call(path, body, {"Prefer": "wait"})


def parse(body: bytes, backend: str) -> ImageUrl:
    doc = json_object(body, backend)
    status, output = doc.get("status"), doc.get("output")
    if status in ("failed", "canceled"):
        why = str(doc.get("error") or status)
        if "nsfw" in why.lower():
            raise ContentFiltered(f"replicate: {why}", backend=backend)
        raise ServerError(f"replicate prediction {status}: {why}", backend=backend)
    if output is None:
        raise GenerationTimeout(
            f"replicate prediction still {status or 'running'} when the wait ended "
            "(the model may be starting cold)", backend=backend)
    first = output[0] if isinstance(output, list) and output else output
    return image_url(first, "'output'", backend)


PROVIDER = Provider(
    name="replicate",
    source="huggingface_hub 2.4.0 inference/_providers/replicate.py",
    build=build,
    parse=parse,
    capabilities=_CAPABILITIES,
    downloads=True,
)
