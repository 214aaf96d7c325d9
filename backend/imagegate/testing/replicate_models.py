"""The models the Replicate stand-in serves: their OpenAPI schemas (as cog writes them), the
input checks the API makes against them, and the pixels each one answers with.

Sources: black-forest-labs/flux-schnell's API page (notes/providers_new.md §3.4) and
stability-ai/sdxl's version 13f35c1d API page (replicate.com/stability-ai/sdxl/versions/
13f35c1d2354fab73101e29a49eb071b45bf24988f11a3b49a061a745356d1d3/api). Cog puts an enum in
a schema of its own and refers to it with ``allOf: [{"$ref": "#/components/schemas/X"}]``
(which is why those pages show such fields with type "None").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

__all__ = ["FLUX", "MODELS", "SDXL", "ReplicateModel", "check_input"]

# 1-megapixel buckets per aspect ratio (UNCONFIRMED for flux-schnell; the common listings)
_FLUX_PIXELS = {
    "1:1": (1024, 1024), "16:9": (1344, 768), "21:9": (1536, 640), "3:2": (1216, 832), "2:3": (832, 1216),
    "4:5": (896, 1088), "5:4": (1088, 896), "3:4": (896, 1152), "4:3": (1152, 896), "9:16": (768, 1344),
    "9:21": (640, 1536),
}
_SCHEDULERS = ["DDIM", "DPMSolverMultistep", "HeunDiscrete", "KarrasDPM", "K_EULER_ANCESTRAL", "K_EULER", "PNDM"]


def _ref_enum(name: str, values: list[str], default: str, order: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the property, the schema it refers to), as cog writes an enum input."""
    prop = {"allOf": [{"$ref": f"#/components/schemas/{name}"}], "default": default, "x-order": order}
    return prop, {"enum": values, "type": "string", "title": name, "description": "An enumeration."}


def _int(default: int | None, lo: int | None, hi: int | None, order: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "integer", "x-order": order}
    spec.update({k: v for k, v in (("default", default), ("minimum", lo), ("maximum", hi)) if v is not None})
    return spec


def _number(default: float, lo: float, hi: float, order: int) -> dict[str, Any]:
    return {"type": "number", "default": default, "minimum": lo, "maximum": hi, "x-order": order}


def _openapi(properties: dict[str, Any], enums: dict[str, Any], required: list[str]) -> dict[str, Any]:
    output = {"type": "array", "items": {"type": "string", "format": "uri"}, "title": "Output"}
    schemas = {"Input": {"type": "object", "title": "Input", "required": required, "properties": properties},
               "Output": output, **enums}
    return {"openapi": "3.0.2", "info": {"title": "Cog", "version": "0.1.0"}, "components": {"schemas": schemas}}


def _flux_schema() -> dict[str, Any]:
    ratio, ratio_enum = _ref_enum("aspect_ratio", list(_FLUX_PIXELS), "1:1", 1)
    fmt, fmt_enum = _ref_enum("output_format", ["webp", "jpg", "png"], "webp", 5)
    mp, mp_enum = _ref_enum("megapixels", ["1", "0.25"], "1", 9)
    props = {
        "prompt": {"type": "string", "title": "Prompt", "x-order": 0},
        "aspect_ratio": ratio, "num_outputs": _int(1, 1, 4, 2), "num_inference_steps": _int(4, 1, 4, 3),
        "seed": _int(None, None, None, 4), "output_format": fmt, "output_quality": _int(80, 0, 100, 6),
        "disable_safety_checker": {"type": "boolean", "default": False, "x-order": 7},
        "go_fast": {"type": "boolean", "default": True, "x-order": 8}, "megapixels": mp,
    }
    return _openapi(props, {"aspect_ratio": ratio_enum, "output_format": fmt_enum, "megapixels": mp_enum},
                    ["prompt"])


def _sdxl_schema() -> dict[str, Any]:
    scheduler, scheduler_enum = _ref_enum("scheduler", _SCHEDULERS, "K_EULER", 6)
    refine, refine_enum = _ref_enum("refine", ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"],
                                    "no_refiner", 11)
    props = {
        "prompt": {"type": "string", "default": "An astronaut riding a rainbow unicorn", "x-order": 0},
        "negative_prompt": {"type": "string", "default": "", "x-order": 1},
        "image": {"type": "string", "format": "uri", "x-order": 2},
        "width": _int(1024, None, None, 3), "height": _int(1024, None, None, 4),
        "num_outputs": _int(1, 1, 4, 5), "scheduler": scheduler, "num_inference_steps": _int(50, 1, 500, 7),
        "guidance_scale": _number(7.5, 1, 50, 8), "prompt_strength": _number(0.8, 0, 1, 9),
        "seed": _int(None, None, None, 10), "refine": refine,
        "apply_watermark": {"type": "boolean", "default": True, "x-order": 12},
    }
    return _openapi(props, {"scheduler": scheduler_enum, "refine": refine_enum}, [])


@dataclass(frozen=True)
class ReplicateModel:
    ref: str
    official: bool
    version: str
    openapi: dict[str, Any]

    def size_of(self, inputs: dict[str, Any]) -> tuple[int, int, str]:
        """The pixels and format this model answers ``inputs`` with."""
        if "aspect_ratio" in self.input_schema()["properties"]:
            w, h = _FLUX_PIXELS[inputs.get("aspect_ratio", "1:1")]
            if inputs.get("megapixels") == "0.25":
                w, h = w // 2, h // 2
            return w, h, str(inputs.get("output_format", "webp"))
        return int(inputs.get("width", 1024)), int(inputs.get("height", 1024)), "png"

    def input_schema(self) -> dict[str, Any]:
        return dict(self.openapi["components"]["schemas"]["Input"])

    def version_json(self) -> dict[str, Any]:
        return {"id": self.version, "created_at": "2024-08-01T00:00:00.000000Z", "cog_version": "0.9.13",
                "openapi_schema": self.openapi}

    def model_json(self) -> dict[str, Any]:
        owner, name = self.ref.split("/")
        return {"url": f"https://replicate.com/{self.ref}", "owner": owner, "name": name, "description": "",
                "visibility": "public", "github_url": None, "paper_url": None, "license_url": None,
                "run_count": 1000, "cover_image_url": None, "default_example": None,
                "latest_version": self.version_json()}


def _version(ref: str) -> str:
    return hashlib.sha256(ref.encode()).hexdigest()  # the emulator's own id (flux: run by name)


FLUX = ReplicateModel("black-forest-labs/flux-schnell", True, _version("black-forest-labs/flux-schnell"),
                      _flux_schema())
SDXL = ReplicateModel("stability-ai/sdxl", False, "13f35c1d2354fab73101e29a49eb071b45bf24988f11a3b49a061a745356d1d3",
                      _sdxl_schema())
MODELS = {m.ref: m for m in (FLUX, SDXL)}


_TYPES: dict[str, type | tuple[type, ...]] = {"integer": int, "number": (int, float), "string": str, "boolean": bool}


def _spec(model: ReplicateModel, name: str) -> dict[str, Any]:
    schemas = model.openapi["components"]["schemas"]
    spec = dict(schemas["Input"]["properties"][name])
    for part in spec.pop("allOf", []):
        spec = {**schemas[part["$ref"].rsplit("/", 1)[-1]], **spec}
    return spec


def check_input(model: ReplicateModel, inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``invalid_fields`` for ``inputs`` against ``model``'s schema ([] when valid)."""
    schema = model.input_schema()
    problems = [{"type": "required", "field": "input", "description": f"input.{name} is required"}
                for name in schema.get("required", []) if name not in inputs]
    for name, value in inputs.items():
        if name not in schema["properties"]:
            continue  # cog ignores an input it does not declare
        spec, field = _spec(model, name), f"input.{name}"
        kind = spec.get("type")
        types = _TYPES.get(kind or "")
        if types is not None and (not isinstance(value, types) or (kind != "boolean" and isinstance(value, bool))):
            problems.append({"type": "type", "field": field, "description": f"{field}: Invalid type. Expected: {kind}"})
            continue
        if "enum" in spec and value not in spec["enum"]:
            allowed = ", ".join(f'"{v}"' for v in spec["enum"])
            problems.append({"type": "enum", "field": field,
                             "description": f"{field} must be one of the following: {allowed}"})
        if "minimum" in spec and value < spec["minimum"]:
            problems.append({"type": "number_gte", "field": field,
                             "description": f"{field}: Must be greater than or equal to {spec['minimum']}"})
        if "maximum" in spec and value > spec["maximum"]:
            problems.append({"type": "number_lte", "field": field,
                             "description": f"{field}: Must be less than or equal to {spec['maximum']}"})
    return problems
