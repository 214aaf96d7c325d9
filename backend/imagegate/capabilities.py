"""What a backend accepts (``Capabilities``), and what was changed to fit it (``Adjustment``).

A backend describes itself with one small frozen value: which request fields it takes at all,
the allowed sizes (a set of ``(width, height)``, or a ``Span`` per side, or only aspect
ratios when the provider picks the pixels), the ranges of steps, guidance and seed, how many
images one call makes, the formats it answers in, the longest prompt, the fields it requires
even when empty, and the sampler and model names it knows. ``None`` anywhere means "not
limited, as far as we know". Each backend keeps a built-in table (its sources in the code)
and, where the provider can tell, replaces it by what it discovered (a Space's Gradio
``/config``, an AUTOMATIC1111's model and sampler lists); ``source`` says which.

The routing layer (``imagegate.routing.adapt``) reads these to fit a request to a backend or
to skip the backend before any I/O; every change it makes is an ``Adjustment`` on the result.

This module depends on nothing else in imagegate: ``models`` embeds these values in
``BackendHealth`` and ``ImageResult``.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

__all__ = ["REQUEST_FIELDS", "Adjustment", "Capabilities", "Span"]

# The request fields a backend may or may not take (prompt and n are always taken).
REQUEST_FIELDS = (
    "negative_prompt", "size", "steps", "guidance_scale", "seed", "sampler", "model",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Span(_Frozen):
    """A closed range ``min..max``; with ``step``, only ``min + k*step`` (a Gradio slider)."""

    min: float
    max: float
    step: float | None = None

    def contains(self, value: float) -> bool:
        if not self.min <= value <= self.max:
            return False
        if not self.step:
            return True
        k = (value - self.min) / self.step
        return math.isclose(k, round(k), abs_tol=1e-6)

    def nearest(self, value: float) -> float:
        """The allowed value closest to ``value`` (clamped, then snapped to the step)."""
        clamped = min(max(value, self.min), self.max)
        if not self.step:
            return clamped
        k = round((clamped - self.min) / self.step)
        snapped = self.min + k * self.step
        if snapped > self.max:
            snapped -= self.step
        return round(snapped, 6)

    def describe(self) -> str:
        text = f"{_num(self.min)}..{_num(self.max)}"
        return text + (f" in steps of {_num(self.step)}" if self.step else "")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class Capabilities(_Frozen):
    """What one backend accepts; every ``None`` means "not limited, as far as we know"."""

    source: str
    """Where these numbers come from: ``built-in: ...`` or ``discovered: ...``."""
    takes: tuple[str, ...] = REQUEST_FIELDS
    """The optional request fields the backend sends on at all (see ``REQUEST_FIELDS``)."""
    sizes: tuple[tuple[int, int], ...] | None = None
    """An explicit set of allowed ``(width, height)`` (OpenAI's models)."""
    width: Span | None = None
    height: Span | None = None
    aspect_ratios: tuple[str, ...] | None = None
    """Only an aspect ratio is sent ("16:9"); the provider picks the pixels (Stability)."""
    steps: Span | None = None
    guidance_scale: Span | None = None
    seed: Span | None = None
    max_n: int | None = None
    """Images one call can make; above it the router makes several calls."""
    formats: tuple[str, ...] | None = None
    """Encodings the backend can answer in (png, jpeg, webp); others are converted."""
    prompt_max: int | None = None
    required: tuple[str, ...] = ()
    """Fields the provider needs even when the caller left them empty (a Space's
    negative-prompt box with no value): sent as ``""``."""
    samplers: tuple[str, ...] | None = None
    scheduler_suffixes: tuple[str, ...] = ()
    """A sampler may end in one of these (A1111 1.9+: "DPM++ 2M Karras" = sampler + schedule)."""
    models: tuple[str, ...] | None = None
    """Model (checkpoint) names the backend knows, as it lists them."""
    model_aliases: tuple[str, ...] = ()
    """Other names the same models answer to (hashes, file names)."""
    model_refused: str | None = None
    """Why the backend cannot serve the model a request would get, when it knows (a router
    provider the Hub says does not serve it): the router then skips the backend, as for a
    model it does not have."""
    defaults: dict[str, float | int | str] = {}
    """What the backend uses when the caller sets nothing (for the operator; informative)."""

    def sizes_text(self) -> str:
        """The allowed sizes in words, for messages and the operator."""
        if "size" not in self.takes:
            return "no size (the provider decides)"
        if self.sizes is not None:
            return ", ".join(f"{w}x{h}" for w, h in self.sizes)
        if self.aspect_ratios is not None:
            return "aspect ratios " + ", ".join(self.aspect_ratios)
        if self.width is None and self.height is None:
            return "any size"
        w = self.width.describe() if self.width else "any"
        h = self.height.describe() if self.height else "any"
        return f"width {w}" if w == h else f"width {w}, height {h}"


class Adjustment(_Frozen):
    """One change made to a request (or its answer) to fit the backend that served it."""

    field: str
    asked: str | int | float | None
    used: str | int | float | None
    why: str

    def short(self) -> str:
        """``field asked->used``, for a header or a log line."""
        return f"{self.field} {_shown(self.asked)}->{_shown(self.used)}"


def _shown(value: str | float | None) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return _num(value)
    return str(value)
