"""The OpenAI images wire shape, translated to and from ours (pure: no I/O, no aiohttp).

``parse_generation(raw_body, ...)`` turns the bytes of ``POST /v1/images/generations`` into an
``ImageRequest`` plus the backend to use and the answer format, raising ``InvalidRequest``
naming the field; ``images_response(...)`` builds the OpenAI answer.

Decided, so that the clients people already run work unchanged (their request shapes, with
sources, are in tests/server/test_clients.py):

- validation is strict JSON typing (``"n": "2"`` is refused, as the OpenAPI document says);
- ``model``: a backend name, an alias, or (``[service] unknown_model = "route"``, the default)
  any other name, served by the normal routing -- Open WebUI sends ``dall-e-2`` or
  ``gpt-image-1``, LiteLLM always sends one; ``"reject"`` refuses unknown names (400);
- the A1111/ComfyUI names such clients pass on (``cfg_scale``, ``sampler_name``) map to ours
  (``guidance_scale``, ``sampler``); ``steps``, ``seed`` and ``negative_prompt`` are ours;
- OpenAI-only knobs we cannot honour (``quality``, ``style``, ``background``, ``moderation``,
  ``output_compression``, ``safety_identifier``) are accepted and ignored;
- any other field is ignored and named in the ``x-imagegate-ignored`` answer header
  (``[service] strict_fields = true``: refused, as api.openai.com refuses it);
- ``stream: true`` answers Server-Sent Events in OpenAI's shapes (``sse.py``);
  ``partial_images`` (0-3) is how many previews become partial images (and, for an async job,
  whether it asks for previews at all); ``webhook_url`` is for async jobs only
  (``Prefer: respond-async``, ``jobs.py``).
"""

from __future__ import annotations

import base64
import dataclasses
import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imagegate.capabilities import Adjustment
from imagegate.errors import InvalidRequest
from imagegate.models import MAX_SEED, ImageRequest, ImageResult, validation_message

__all__ = [
    "ANY_BACKEND",
    "IGNORED_HEADER",
    "SIZE_PATTERN",
    "Generation",
    "GenerationBody",
    "ImagesResponse",
    "adjustments_header",
    "generation_from_json",
    "generation_json",
    "ignored_header",
    "images_response",
    "parse_generation",
    "parse_size",
    "resolve_model",
]

ANY_BACKEND = "*"
IGNORED_HEADER = "x-imagegate-ignored"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_MAX_NAMED = 20
SIZE_PATTERN = r"^(auto|[0-9]{1,5}x[0-9]{1,5})$"
_SIZE_RE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
DEFAULT_SIZE = (1024, 1024)  # what OpenAI's "auto" and an absent size mean here


class GenerationBody(BaseModel):
    """The body of ``POST /v1/images/generations``: OpenAI's fields plus our extensions."""

    model_config = ConfigDict(extra="allow", strict=True, title="ImageGenerationRequest")

    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = Field(
        default=None,
        max_length=300,
        description="a backend name or a configured alias; absent or another name: any "
        '(unless [service] unknown_model = "reject")',
    )
    n: int | None = Field(default=None, ge=1, le=8)
    size: str | None = Field(
        default=None,
        max_length=11,
        json_schema_extra={"pattern": SIZE_PATTERN},
        description='"WIDTHxHEIGHT" (64..2048, multiples of 8) or "auto" (1024x1024)',
    )
    response_format: Literal["b64_json", "url"] | None = None
    user: str | None = Field(default=None, max_length=256)
    negative_prompt: str | None = Field(default=None, max_length=4000)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    steps: int | None = Field(default=None, ge=1, le=150)
    guidance_scale: float | None = Field(default=None, ge=0, le=30)
    cfg_scale: float | None = Field(default=None, ge=0, le=30, description="= guidance_scale")
    sampler_name: str | None = Field(default=None, min_length=1, max_length=100)
    output_format: Literal["png", "jpeg", "webp"] | None = None
    stream: bool | None = Field(
        default=None, description="true: answer text/event-stream in OpenAI's image stream shape"
    )
    partial_images: int | None = Field(
        default=None, ge=0, le=3, description="previews sent as partial images (stream, jobs)"
    )
    webhook_url: str | None = Field(
        default=None, max_length=2048,
        description="async jobs: POSTed the signed job record when it ends ([service] webhook_hosts)",
    )
    quality: str | None = Field(default=None, max_length=32, description="accepted, ignored")
    style: str | None = Field(default=None, max_length=32, description="accepted, ignored")
    background: str | None = Field(default=None, max_length=32, description="accepted, ignored")
    moderation: str | None = Field(default=None, max_length=32, description="accepted, ignored")
    output_compression: int | None = Field(default=None, ge=0, le=100, description="ignored")
    safety_identifier: str | None = Field(default=None, max_length=256, description="ignored")


class ImageDatum(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    """The answer: OpenAI's ``ImagesResponse`` (plus ``size``, ``output_format`` and
    ``adjustments``: what was changed to fit the backend that served it)."""

    created: int
    data: list[ImageDatum]
    size: str | None = None
    output_format: str | None = None
    adjustments: list[Adjustment] = Field(default_factory=list)
    warnings: list[str] | None = None  # e.g. the images could not be saved: b64_json instead


@dataclass(frozen=True)
class Generation:
    """A parsed generation call: what to make, where, and how to answer."""

    request: ImageRequest
    backend: str | None
    response_format: Literal["b64_json", "url"]
    user: str | None = None
    ignored: tuple[str, ...] = ()  # unknown body fields, left out
    stream: bool = False
    partial_images: int = 0
    webhook_url: str | None = None


def generation_json(generation: Generation) -> dict[str, Any]:
    """A generation as JSON, for a job another instance may run (the request keeps which
    fields the caller set: adaptation tells a default from an ask)."""
    doc = dataclasses.asdict(generation)
    doc["request"] = generation.request.model_dump(mode="json", exclude_unset=True)
    doc["ignored"] = list(generation.ignored)
    return doc


def generation_from_json(doc: dict[str, Any]) -> Generation:
    """The generation :func:`generation_json` wrote."""
    fields = {**doc, "request": ImageRequest.model_validate(doc["request"]),
              "ignored": tuple(doc.get("ignored") or ())}
    return Generation(**fields)


def parse_generation(
    raw: bytes,
    *,
    backends: Collection[str],
    aliases: Mapping[str, str],
    unknown_model: Literal["route", "reject"] = "route",
    strict_fields: bool = False,
) -> Generation:
    """Validate the request body; raise InvalidRequest naming the field on any problem."""
    body = _validate_body(raw)
    ignored = tuple(sorted(body.model_extra or {}))
    if ignored and strict_fields:
        name = ignored[0]
        shown = name if _SAFE_NAME.fullmatch(name) else "(a field)"
        raise InvalidRequest(
            f"Unknown parameter: {shown!r} ([service] strict_fields = true)", field=shown
        )
    width, height = parse_size(body.size)
    # "auto" or no size: the request's default, which the router may fit to a backend
    size = {} if body.size in (None, "auto") else {"width": width, "height": height}
    fields = {
        "prompt": body.prompt,
        "n": body.n,
        "negative_prompt": body.negative_prompt,
        "seed": body.seed,
        "steps": body.steps,
        "guidance_scale": _one_of(body, "guidance_scale", "cfg_scale"),
        "sampler": body.sampler_name,
        "output_format": body.output_format,
    }
    data = {k: v for k, v in fields.items() if v is not None}
    try:
        request = ImageRequest.parse({**data, **size})
    except InvalidRequest as exc:
        if exc.field in ("width", "height"):
            raise InvalidRequest(
                f"size: {width}x{height} is not supported: {exc.message}", field="size"
            ) from None
        raise
    backend = resolve_model(body.model, backends, aliases, unknown_model=unknown_model)
    return Generation(
        request, backend, body.response_format or "b64_json", body.user, ignored,
        stream=bool(body.stream), partial_images=body.partial_images or 0,
        webhook_url=body.webhook_url,
    )


def _one_of(body: GenerationBody, ours: str, theirs: str) -> Any:
    """Our field or the client's name for it; both, with different values, is refused."""
    mine, other = getattr(body, ours), getattr(body, theirs)
    if mine is not None and other is not None and mine != other:
        raise InvalidRequest(
            f"{theirs}: {other!r} disagrees with {ours} {mine!r}; send one of them", field=theirs
        )
    return mine if mine is not None else other


def ignored_header(names: Sequence[str]) -> str:
    """The ``x-imagegate-ignored`` value: the ignored names that are safe to echo, at most 20."""
    safe = [n for n in names if _SAFE_NAME.fullmatch(n)]
    shown = safe[:_MAX_NAMED]
    more = len(names) - len(shown)
    return ", ".join(shown + ([f"+{more} more"] if more else []))


def _validate_body(raw: bytes) -> GenerationBody:
    try:
        return GenerationBody.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise InvalidRequest(
                f"the body is not valid JSON: {first['msg']}", field=None
            ) from None
        if not first["loc"]:
            raise InvalidRequest("the body must be a JSON object", field=None) from None
        field, message = validation_message(exc)
        raise InvalidRequest(message, field=field) from None


def parse_size(size: str | None) -> tuple[int, int]:
    """``"WxH"`` (digits only, lower-case x) or ``"auto"``/absent (1024x1024)."""
    if size is None or size == "auto":
        return DEFAULT_SIZE
    match = _SIZE_RE.fullmatch(size)
    if match is None:
        raise InvalidRequest(
            f'size: must be "auto" or "WIDTHxHEIGHT" such as "1024x1024" (got {size!r})',
            field="size",
        )
    return int(match[1]), int(match[2])


def resolve_model(
    model: str | None,
    backends: Collection[str],
    aliases: Mapping[str, str],
    *,
    unknown_model: Literal["route", "reject"] = "route",
) -> str | None:
    """The backend to use for OpenAI's ``model``: a backend name, an alias, or None for any
    (also for an unknown name, unless ``unknown_model`` is ``"reject"``)."""
    if model is None:
        return None
    if model in backends:
        return model
    target = aliases.get(model)
    if target is None:
        if unknown_model == "route":
            return None
        known = ", ".join(sorted([*backends, *aliases])) or "none"
        raise InvalidRequest(
            f"model: {model!r} is neither a backend nor an alias (known: {known}); "
            "omit it to use any backend",
            field="model",
        )
    return None if target == ANY_BACKEND else target


def images_response(
    result: ImageResult, *, urls: Sequence[str] | None = None, created: int | None = None
) -> dict[str, Any]:
    """OpenAI's answer for ``result``: base64 images, or ``urls`` when given."""
    if urls is not None:
        data: list[dict[str, Any]] = [{"url": url} for url in urls]
    else:
        data = [{"b64_json": base64.b64encode(img.data).decode("ascii")} for img in result.images]
    first = result.images[0]
    return {
        "created": int(time.time()) if created is None else created,
        "data": data,
        "size": f"{first.width}x{first.height}",
        "output_format": first.format.value,
        "adjustments": [a.model_dump(mode="json") for a in result.adjustments],
    }


def adjustments_header(result: ImageResult) -> dict[str, str]:
    """``x-imagegate-adjustments: size 128x128->256x256; steps 150->50`` when anything was
    changed (ASCII only: anything else is backslash-escaped), else no header."""
    if not result.adjustments:
        return {}
    text = "; ".join(a.short() for a in result.adjustments)
    safe = text.encode("ascii", "backslashreplace").decode("ascii")
    return {"x-imagegate-adjustments": "".join(c if c.isprintable() else " " for c in safe)[:1024]}
