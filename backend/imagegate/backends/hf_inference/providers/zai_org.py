"""``zai-org``: Z.ai's asynchronous image API behind the router: submit, then poll.

huggingface_hub 2.4.0 ``inference/_providers/zai_org.py`` (``ZaiTextToImageTask``):

- ``POST {base_url}/zai-org/api/paas/v4/async/images/generations`` with the headers
  ``Accept-Language: en-US,en`` and ``x-source-channel: hugging_face``;
- body ``{"model": providerId, "prompt", "size": "WxH"}`` plus the other parameters as they
  are (width and height are always moved into ``size``);
- 200: ``{"model", "id", "request_id", "task_status": "PROCESSING"}``; ``FAIL`` is a failure;
- poll ``GET {base_url}/zai-org/api/paas/v4/async-result/{id}`` (same headers) until
  ``task_status`` is ``SUCCESS``: ``image_result[0].url`` is the image; ``FAIL`` ends it.

Decided (differences from huggingface_hub, listed in the differential test): only what Z.ai's
API reference documents is sent -- ``model``, ``prompt``, ``size`` (and ``quality``,
``user_id``, which stay unset) (https://docs.z.ai/api-reference/image/generate-image-async) --
so no negative prompt, steps, guidance or seed. The endpoint serves only GLM-Image: sizes
1024-2048 px in steps of 32 (at most 2^22 pixels, which that range never exceeds). Polled
every 5 s, huggingface_hub's cadence (GLM-Image takes about 20 s in ``hd``, its docs say).
"""

from __future__ import annotations

from typing import Any

from imagegate.backends.hf_inference.wire import (
    Call,
    ImageUrl,
    PollUrl,
    Provider,
    Target,
    field_path,
    image_url,
    json_object,
)
from imagegate.backends.http import Failed, Pending
from imagegate.capabilities import Capabilities, Span
from imagegate.errors import BadResponse, ServerError
from imagegate.models import ImageRequest

__all__ = ["PROVIDER"]

_SUBMIT = "/zai-org/api/paas/v4/async/images/generations"
_RESULT = "/zai-org/api/paas/v4/async-result/"
_HEADERS = {"Accept-Language": "en-US,en", "x-source-channel": "hugging_face"}
_TAKES = ("size", "model")
_SOURCE = "built-in: zai-org text-to-image through the HF router (Z.ai's API reference)"
# docs.z.ai generate-image-async: "Both width and height must be between 1024px-2048px, and
# must be divisible by 32"
_GLM_IMAGE_SIDE = Span(min=1024, max=2048, step=32)


def capabilities(target: Target | None) -> Capabilities:
    if target is not None and target.provider_id != "glm-image":
        return Capabilities(source=_SOURCE, takes=_TAKES)
    return Capabilities(source=_SOURCE, takes=_TAKES, width=_GLM_IMAGE_SIDE, height=_GLM_IMAGE_SIDE)


def build(request: ImageRequest, target: Target, seed: int | None) -> Call:
    body = {"model": target.provider_id, "prompt": request.prompt, "size": f"{request.width}x{request.height}"}
    return Call(_SUBMIT, body, _HEADERS)


def _state(doc: dict[str, Any], task: str, backend: str) -> ImageUrl | Pending | Failed:
    status = doc.get("task_status")
    if status == "SUCCESS":
        return image_url(field_path(doc, "image_result", 0, "url"), "'image_result[0].url'", backend)
    if status == "FAIL":
        return Failed(ServerError(f"zai-org task {task} failed", backend=backend))
    if status == "PROCESSING":
        return Pending("PROCESSING")
    raise BadResponse(f"unknown zai-org task_status {status!r}", backend=backend)


def parse(body: bytes, backend: str) -> ImageUrl | PollUrl:
    doc = json_object(body, backend)
    task = doc.get("id")
    if not isinstance(task, str) or not task:
        raise BadResponse("the answer has no task 'id'", backend=backend)
    result = _state(doc, task, backend)
    if isinstance(result, Failed):
        raise result.error
    if isinstance(result, Pending):
        return PollUrl(_RESULT + task)
    return result


def poll(doc: Any, backend: str) -> ImageUrl | Pending | Failed:
    if not isinstance(doc, dict):
        raise BadResponse("the poll answer is not a JSON object", backend=backend)
    return _state(doc, str(doc.get("id") or "?"), backend)


PROVIDER = Provider(
    name="zai-org",
    source="huggingface_hub 2.4.0 inference/_providers/zai_org.py; docs.z.ai generate-image-async",
    build=build,
    parse=parse,
    poll=poll,
    capabilities=capabilities,
    poll_interval_s=5.0,
    downloads=True,
)
