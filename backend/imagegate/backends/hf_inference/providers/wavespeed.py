"""``wavespeed``: WaveSpeedAI's task API behind the router: submit, then poll.

huggingface_hub 2.4.0 ``inference/_providers/wavespeed.py`` (``WavespeedAITextToImageTask``):

- ``POST {base_url}/wavespeed/api/v3/{providerId}``; body ``{"prompt", negative_prompt,
  height, width, num_inference_steps, guidance_scale, seed}``;
- 200: ``{"code": 200, "message", "data": {"id", "status", "outputs": [], "urls": {"get":
  "https://api.wavespeed.ai/api/v3/predictions/{id}/result"}, "has_nsfw_contents", "error"}}``
  (WaveSpeed's submit response, https://wavespeed.ai/docs/shared/submit-response);
- the result is polled at the *path* of ``urls.get`` under the router's ``/wavespeed``
  prefix (huggingface_hub keeps only the path and adds the prefix for the router host), with
  the POST's headers; ``data.status`` ``created``/``processing`` -> poll again, ``completed`` ->
  ``data.outputs[0]`` is the image URL, ``failed`` -> ``data.error``.

Decided: polled every 2 s (WaveSpeed asks for "at least 2 seconds between checks" for image
tasks, https://wavespeed.ai/docs/get-result; huggingface_hub polls every 0.5 s), unless
``poll_interval_s`` says otherwise; a submit answer that is already ``completed`` is used as
it is; ``has_nsfw_contents[0]`` true is content_filtered.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from imagegate.backends.hf_inference.wire import (
    Call,
    ImageUrl,
    PollUrl,
    Provider,
    Target,
    field_path,
    fixed_capabilities,
    image_url,
    json_object,
    parameters,
)
from imagegate.backends.http import Failed, Pending
from imagegate.errors import BadResponse, ContentFiltered, ServerError
from imagegate.models import ImageRequest

__all__ = ["PROVIDER"]

_CAPABILITIES = fixed_capabilities(
    "built-in: wavespeed text-to-image through the HF router (huggingface_hub 2.4 wavespeed.py)"
)
_RUNNING = ("created", "processing")


def build(request: ImageRequest, target: Target, seed: int | None) -> Call:
    return Call(f"/wavespeed/api/v3/{target.provider_id}", {"prompt": request.prompt, **parameters(request, seed)})


def _state(data: Any, backend: str) -> ImageUrl | Pending | Failed:
    if not isinstance(data, dict):
        raise BadResponse("the answer has no 'data' object", backend=backend)
    status = data.get("status")
    if status == "completed":
        if field_path(data, "has_nsfw_contents", 0) is True:
            return Failed(ContentFiltered("wavespeed flagged the image as NSFW", backend=backend))
        return image_url(field_path(data, "outputs", 0), "'data.outputs[0]'", backend)
    if status == "failed":
        return Failed(ServerError(f"wavespeed task failed: {data.get('error') or 'no detail'}", backend=backend))
    if status in _RUNNING:
        return Pending(str(status))
    raise BadResponse(f"unknown wavespeed task status {status!r}", backend=backend)


def parse(body: bytes, backend: str) -> ImageUrl | PollUrl:
    data = json_object(body, backend).get("data")
    result = _state(data, backend)
    if isinstance(result, Failed):
        raise result.error
    if isinstance(result, ImageUrl):
        return result
    get = field_path(data, "urls", "get")
    if not isinstance(get, str) or not urlsplit(get).path:
        raise BadResponse("the answer has no result URL in 'data.urls.get'", backend=backend)
    return PollUrl("/wavespeed" + urlsplit(get).path)


def poll(doc: Any, backend: str) -> ImageUrl | Pending | Failed:
    return _state(field_path(doc, "data"), backend)


PROVIDER = Provider(
    name="wavespeed",
    source="huggingface_hub 2.4.0 inference/_providers/wavespeed.py",
    build=build,
    parse=parse,
    poll=poll,
    capabilities=_CAPABILITIES,
    poll_interval_s=2.0,
    downloads=True,
)
