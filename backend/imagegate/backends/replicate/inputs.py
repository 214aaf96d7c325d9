"""A Replicate model's inputs: its OpenAPI ``Input`` schema read, a request written in its
names, and what it accepts (pure).

Every model names its own inputs (cog writes them from ``predict()``'s arguments). The
common ones are diffusers' names, which Hugging Face's replicate helper also sends
(notes/hf_providers.md §3.2): ``prompt``, ``negative_prompt``, ``width``/``height``,
``num_outputs``, ``num_inference_steps``, ``guidance_scale``, ``seed``, ``scheduler``; FLUX
models take ``aspect_ratio`` instead of pixels and some ``guidance``. A request field is
sent only under a name the schema has (an unknown input is refused with 422: changelog
2024-05-01), so the schema also says what the model takes, its ranges (``minimum``,
``maximum``) and its choices (``enum``, inline or behind ``allOf: [{"$ref"}]`` as cog
writes an enum).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagegate.capabilities import Capabilities, Span
from imagegate.models import ImageFormat, ImageRequest

__all__ = [
    "FLUX_SCHNELL", "InputSchema", "build_input", "capabilities_from", "nearest_ratio", "parse_schema",
]

# request field -> the input names that carry it, tried in order
_NAMES: dict[str, tuple[str, ...]] = {
    "negative_prompt": ("negative_prompt",),
    "steps": ("num_inference_steps", "steps"),
    "guidance_scale": ("guidance_scale", "guidance"),
    "seed": ("seed",),
    "sampler": ("scheduler",),
}
_FORMAT_NAMES = {ImageFormat.PNG: ("png",), ImageFormat.JPEG: ("jpg", "jpeg"), ImageFormat.WEBP: ("webp",)}


@dataclass(frozen=True)
class InputSchema:
    """A model's inputs: name -> JSON schema (enums resolved), the required names, the source."""

    properties: Mapping[str, Mapping[str, Any]]
    required: tuple[str, ...]
    source: str

    def name_for(self, field: str) -> str | None:
        return next((n for n in _NAMES.get(field, ()) if n in self.properties), None)

    def enum(self, name: str) -> tuple[str, ...] | None:
        values = (self.properties.get(name) or {}).get("enum")
        return tuple(str(v) for v in values) if isinstance(values, list) and values else None

    def span(self, name: str | None) -> Span | None:
        spec = self.properties.get(name or "") or {}
        lo, hi = spec.get("minimum"), spec.get("maximum")
        if not isinstance(lo, int | float) or not isinstance(hi, int | float):
            return None
        return Span(min=lo, max=hi, step=1 if spec.get("type") == "integer" else None)


def parse_schema(openapi: Any, *, source: str) -> InputSchema | None:
    """The ``Input`` schema of a version's ``openapi_schema`` (None when it has none)."""
    schemas = ((openapi or {}).get("components") or {}).get("schemas") if isinstance(openapi, dict) else None
    found = schemas.get("Input") if isinstance(schemas, dict) else None
    if not isinstance(found, dict) or not isinstance(found.get("properties"), dict):
        return None
    assert isinstance(schemas, dict)
    props = {name: _resolved(spec, schemas) for name, spec in found["properties"].items() if isinstance(spec, dict)}
    required = tuple(str(r) for r in found.get("required") or [] if isinstance(r, str))
    return InputSchema(props, required, source)


def _resolved(spec: dict[str, Any], schemas: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` with the schemas its ``allOf`` refers to merged in (cog's enums)."""
    out = {k: v for k, v in spec.items() if k != "allOf"}
    for part in spec.get("allOf") or []:
        ref = part.get("$ref") if isinstance(part, dict) else None
        target = schemas.get(ref.rsplit("/", 1)[-1]) if isinstance(ref, str) else part
        if isinstance(target, dict):
            out = {**target, **out}
    return out


def _enum(values: tuple[str, ...], default: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "enum": list(values), "default": default, **extra}


# black-forest-labs/flux-schnell as its API page lists it (notes/providers_new.md §3.4)
FLUX_SCHNELL = InputSchema(
    {
        "prompt": {"type": "string"},
        "aspect_ratio": _enum(("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"),
                              "1:1"),
        "num_outputs": {"type": "integer", "minimum": 1, "maximum": 4, "default": 1},
        "num_inference_steps": {"type": "integer", "minimum": 1, "maximum": 4, "default": 4},
        "seed": {"type": "integer"},
        "output_format": _enum(("webp", "jpg", "png"), "webp"),
        "output_quality": {"type": "integer", "minimum": 0, "maximum": 100, "default": 80},
        "disable_safety_checker": {"type": "boolean", "default": False},
        "go_fast": {"type": "boolean", "default": True},
        "megapixels": _enum(("1", "0.25"), "1"),
    },
    ("prompt",),
    "built-in: black-forest-labs/flux-schnell's API page",
)


def nearest_ratio(width: int, height: int, ratios: tuple[str, ...]) -> str:
    """The ``"a:b"`` closest to width/height by log-ratio distance."""
    def distance(ratio: str) -> float:
        a, _, b = ratio.partition(":")
        try:
            return abs(math.log(float(a) / float(b)) - math.log(width / height))
        except (ValueError, ZeroDivisionError):
            return math.inf
    return min(ratios, key=distance)


def build_input(request: ImageRequest, schema: InputSchema | None) -> dict[str, Any]:
    """The ``input`` object for ``request`` in the model's own names (pure). With no schema,
    the common names, each only when set (and one image per call)."""
    if schema is None:
        generic = {"width": request.width, "height": request.height, "seed": request.seed,
                   "num_inference_steps": request.steps, "guidance_scale": request.guidance_scale,
                   "negative_prompt": request.negative_prompt or None}
        return {"prompt": request.prompt, **{k: v for k, v in generic.items() if v is not None}}
    props = schema.properties
    out: dict[str, Any] = {"prompt": request.prompt}
    ratios = schema.enum("aspect_ratio")
    if "width" in props and "height" in props:
        out.update(width=request.width, height=request.height)
    elif ratios:
        out["aspect_ratio"] = nearest_ratio(request.width, request.height, ratios)
    if "num_outputs" in props:
        out["num_outputs"] = request.n
    values = {"negative_prompt": request.negative_prompt or None, "steps": request.steps,
              "guidance_scale": request.guidance_scale, "seed": request.seed, "sampler": request.sampler}
    for field, value in values.items():
        name = schema.name_for(field)
        if value is not None and name:
            out[name] = value
    formats = schema.enum("output_format")
    if formats:
        wanted = next((f for f in _FORMAT_NAMES[request.output_format] if f in formats), None)
        out["output_format"] = wanted or ("png" if "png" in formats else formats[0])
    return out


def capabilities_from(schema: InputSchema | None) -> Capabilities:
    """What the model takes, from its schema (pure)."""
    if schema is None:
        return Capabilities(
            source="built-in: a Replicate model of unknown schema (the common names, sent when set)",
            takes=("negative_prompt", "size", "steps", "guidance_scale", "seed"), max_n=1,
        )
    props = schema.properties
    takes = [field for field in ("negative_prompt", "steps", "guidance_scale", "seed", "sampler")
             if schema.name_for(field)]
    sized = "width" in props and "height" in props
    ratios = None if sized else schema.enum("aspect_ratio")
    if sized or ratios:
        takes.append("size")
    n_span = schema.span("num_outputs")
    formats = schema.enum("output_format")
    return Capabilities(
        source=schema.source, takes=tuple(takes),
        width=schema.span("width") if sized else None, height=schema.span("height") if sized else None,
        aspect_ratios=ratios, steps=schema.span(schema.name_for("steps")),
        guidance_scale=schema.span(schema.name_for("guidance_scale")), seed=schema.span("seed"),
        max_n=int(n_span.max) if n_span else (None if "num_outputs" in props else 1),
        formats=tuple("jpeg" if f == "jpg" else f for f in formats) if formats else ("png",),
        samplers=schema.enum("scheduler") if schema.name_for("sampler") else None,
        defaults={k: v["default"] for k, v in props.items()
                  if k in ("num_inference_steps", "guidance_scale", "scheduler")
                  and isinstance(v.get("default"), int | float | str)},
    )
