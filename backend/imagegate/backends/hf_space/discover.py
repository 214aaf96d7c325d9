"""What a Space takes: its endpoint's parameters, read from app.py (built in) or from the
running app (its Gradio ``/config`` and API info), and the capabilities they give a backend.

Pure: no I/O, no gradio_client. A Gradio app tells, per endpoint (``dependencies[i]`` of
``/config``, gradio 4+): its input components in API order, each with ``props``
(``minimum``, ``maximum``, ``step``, ``value``, ``choices``, ``max_length``), and its output
components (a ``gr.Image``'s ``props.format``: "webp" by default in gradio 4.44+, no such
prop before 4.22, when the answer was PNG). The API info (``/gradio_api/info``, which
``Client.view_api`` returns) gives the same parameters by name, in the same order, with
``parameter_has_default``: false means *required* (a component with no initial value, such
as SD3-medium's negative-prompt box: gradio ``blocks.py``), and gradio_client then refuses
the call before sending anything when it is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagegate.capabilities import REQUEST_FIELDS, Capabilities, Span

__all__ = ["Interface", "Param", "interface_capabilities", "interface_from_gradio"]

_IMAGE_TYPES = ("image", "gallery", "imageeditor", "annotatedimage", "imageslider")


@dataclass(frozen=True)
class Param:
    """One input of a Space's endpoint."""

    name: str
    component: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    value: Any = None
    required: bool = False
    choices: tuple[str, ...] | None = None
    max_length: int | None = None

    @property
    def span(self) -> Span | None:
        if self.minimum is None or self.maximum is None:
            return None
        return Span(min=self.minimum, max=self.maximum, step=self.step or None)


@dataclass(frozen=True)
class Interface:
    """One endpoint of a Space: its name, inputs in API order, the format its image comes in."""

    api_name: str
    params: tuple[Param, ...]
    output_format: str | None
    source: str


def interface_from_gradio(
    config: Mapping[str, Any], info: Mapping[str, Any], api_name: str, *, source: str
) -> Interface | None:
    """``api_name``'s interface from ``/config`` and the API info, or None when either lacks it."""
    endpoint = (info.get("named_endpoints") or {}).get(api_name)
    components = {c.get("id"): c for c in config.get("components") or [] if isinstance(c, dict)}
    dependency = next(
        (d for d in config.get("dependencies") or []
         if isinstance(d, dict) and f"/{str(d.get('api_name')).lstrip('/')}" == api_name),
        None,
    )
    if not isinstance(endpoint, dict) or dependency is None:
        return None
    shown = [components.get(i) or {} for i in dependency.get("inputs") or []]
    shown = [c for c in shown if not c.get("skip_api")]
    parameters = [p for p in endpoint.get("parameters") or [] if isinstance(p, dict)]
    if len(shown) != len(parameters):  # the two do not describe the same inputs: trust neither
        return None
    params = tuple(_param(p, c) for p, c in zip(parameters, shown, strict=True))
    outputs = [components.get(i) or {} for i in dependency.get("outputs") or []]
    image = next((c for c in outputs if str(c.get("type", "")).lower() in _IMAGE_TYPES), None)
    fmt = None
    if image is not None:
        fmt = str((image.get("props") or {}).get("format") or "png").lower()
    return Interface(api_name, params, fmt, source)


def _param(parameter: Mapping[str, Any], component: Mapping[str, Any]) -> Param:
    props = component.get("props") or {}
    choices = props.get("choices")
    return Param(
        name=str(parameter.get("parameter_name") or parameter.get("label") or ""),
        component=str(parameter.get("component") or component.get("type") or ""),
        minimum=_number(props.get("minimum")),
        maximum=_number(props.get("maximum")),
        step=_number(props.get("step")),
        value=props.get("value"),
        required=not parameter.get("parameter_has_default", False),
        choices=tuple(str(c[-1] if isinstance(c, list | tuple) else c) for c in choices)
        if isinstance(choices, list) else None,
        max_length=int(props["max_length"]) if isinstance(props.get("max_length"), int) else None,
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def interface_capabilities(interface: Interface, inputs: Mapping[str, str]) -> Capabilities:
    """What a backend with this ``inputs`` mapping can send through ``interface``."""
    by_name = {p.name: p for p in interface.params}
    mapped = {field: by_name.get(name) for field, name in inputs.items()}
    field_of = {"width": "size", "height": "size"}
    takes = {field_of.get(f, f) for f, p in mapped.items() if p is not None and f != "prompt"}
    width, height = mapped.get("width"), mapped.get("height")
    prompt, sampler, model = mapped.get("prompt"), mapped.get("sampler"), mapped.get("model")
    return Capabilities(
        source=interface.source,
        takes=tuple(f for f in REQUEST_FIELDS if f in takes),
        width=width.span if width else None,
        height=height.span if height else None,
        steps=_span(mapped.get("steps")),
        guidance_scale=_span(mapped.get("guidance_scale")),
        seed=_span(mapped.get("seed")),
        formats=(interface.output_format,) if interface.output_format else None,
        prompt_max=prompt.max_length if prompt else None,
        required=tuple(f for f, p in mapped.items() if p is not None and p.required and f != "prompt"),
        samplers=sampler.choices if sampler else None,
        models=model.choices if model else None,
        defaults={f: p.value for f, p in mapped.items()
                  if p is not None and isinstance(p.value, int | float | str) and f != "prompt"},
    )


def _span(param: Param | None) -> Span | None:
    return param.span if param is not None else None
