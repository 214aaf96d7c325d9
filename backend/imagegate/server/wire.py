"""The OpenAI images wire shape, translated to and from ours (pure: no I/O, no aiohttp).

``parse_generation(raw_body, ...)`` turns the bytes of ``POST /v1/images/generations`` into an
``ImageRequest`` plus the backend to use and the answer format, raising ``InvalidRequest``
naming the field; ``images_response(...)`` builds the OpenAI answer.

Decided: validation is strict JSON typing (``"n": "2"`` is refused, as the OpenAPI document
says); OpenAI-only knobs we cannot honour (``quality``, ``style``, ``background``,
``moderation``, ``output_compression``, ``safety_identifier``) are accepted and ignored so that
existing SDK calls work unchanged; ``stream: true`` is refused; any other field is refused.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imagegate.errors import InvalidRequest
from imagegate.models import MAX_SEED, ImageRequest, ImageResult, validation_message

__all__ = [
    "ANY_BACKEND",
    "SIZE_PATTERN",
    "Generation",
    "GenerationBody",
    "ImagesResponse",
    "images_response",
    "parse_generation",
    "parse_size",
    "resolve_model",
]

ANY_BACKEND = "*"
SIZE_PATTERN = r"^(auto|[0-9]{1,5}x[0-9]{1,5})$"
_SIZE_RE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
DEFAULT_SIZE = (1024, 1024)  # what OpenAI's "auto" and an absent size mean here


class GenerationBody(BaseModel):
    """The body of ``POST /v1/images/generations``: OpenAI's fields plus our extensions."""

    model_config = ConfigDict(extra="forbid", strict=True, title="ImageGenerationRequest")

    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = Field(
        default=None,
        max_length=300,
        description="a backend name or a configured alias; absent: any",
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
    output_format: Literal["png", "jpeg", "webp"] | None = None
    stream: bool | None = Field(default=None, description="only false is supported")
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
    """The answer: OpenAI's ``ImagesResponse`` (plus ``size`` and ``output_format``)."""

    created: int
    data: list[ImageDatum]
    size: str | None = None
    output_format: str | None = None
    warnings: list[str] | None = None  # e.g. the images could not be saved: b64_json instead


@dataclass(frozen=True)
class Generation:
    """A parsed generation call: what to make, where, and how to answer."""

    request: ImageRequest
    backend: str | None
    response_format: Literal["b64_json", "url"]
    user: str | None = None


def parse_generation(
    raw: bytes, *, backends: Collection[str], aliases: Mapping[str, str]
) -> Generation:
    """Validate the request body; raise InvalidRequest naming the field on any problem."""
    body = _validate_body(raw)
    if body.stream:
        raise InvalidRequest("stream: streaming answers are not supported", field="stream")
    width, height = parse_size(body.size)
    fields = {
        "prompt": body.prompt,
        "n": body.n,
        "negative_prompt": body.negative_prompt,
        "seed": body.seed,
        "steps": body.steps,
        "guidance_scale": body.guidance_scale,
        "output_format": body.output_format,
    }
    data = {k: v for k, v in fields.items() if v is not None}
    try:
        request = ImageRequest.parse({**data, "width": width, "height": height})
    except InvalidRequest as exc:
        if exc.field in ("width", "height"):
            raise InvalidRequest(
                f"size: {width}x{height} is not supported: {exc.message}", field="size"
            ) from None
        raise
    backend = resolve_model(body.model, backends, aliases)
    return Generation(request, backend, body.response_format or "b64_json", body.user)


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
    model: str | None, backends: Collection[str], aliases: Mapping[str, str]
) -> str | None:
    """The backend to use for OpenAI's ``model``: a backend name, an alias, or None for any."""
    if model is None:
        return None
    if model in backends:
        return model
    target = aliases.get(model)
    if target is None:
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
    }
