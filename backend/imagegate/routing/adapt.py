"""Fitting one request to one backend, before any I/O, and saying so.

``plan(request, capabilities, mode, backend=...)`` is pure: it returns the ``Plan`` for that
backend (the request as it will be sent, the calls it takes, the ``Adjustment`` rows) or a
``Refusal`` (this backend cannot serve the request; the router skips it without a call and
without touching its breaker). ``execute()`` makes the plan's calls and finishes the answer
(format conversion, differences the provider made on its own), ``no_backend_error()`` is the
``InvalidRequest`` when every candidate refused.

The two modes (``[service] adapt``):

- ``nearest`` (default): the size is snapped to the nearest allowed one keeping the aspect
  ratio, steps, guidance and seed are clamped into range, a sampler is spelt the backend's
  way or dropped (its default applies), fields the backend does not take are dropped;
- ``strict``: any of those changes to a value the *caller set* refuses the backend instead
  (values left at their defaults are still fitted).

In both modes (nothing the caller asked for changes): ``n`` above what one call makes is
split into several calls, a field the provider requires is sent empty (a Space's
negative-prompt box with no value), and an image the provider cannot encode as asked is
converted with Pillow. A prompt longer than the backend takes, or a model it does not have
(or says it cannot serve now: ``Capabilities.model_refused``), cannot be fitted: refused in
both modes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from imagegate.backends.base import ImageBackend
from imagegate.backends.http import gather_all
from imagegate.backends.images import convert_image
from imagegate.capabilities import Adjustment, Capabilities, Span
from imagegate.errors import InvalidRequest
from imagegate.logging import get_logger
from imagegate.models import Attempt, Deadline, GeneratedImage, ImageFormat, ImageRequest

__all__ = [
    "Mode", "Plan", "Refusal", "execute", "no_backend_error", "plan", "plan_all", "skip_rows",
]

log = get_logger(__name__)

Mode = Literal["nearest", "strict"]
_CLIP = 60  # longest text shown in an adjustment
# A size within 2 % of an aspect ratio is that ratio (1344x768, SDXL's "16:9", is 1.6 % off).
RATIO_TOLERANCE = 0.02


@dataclass(frozen=True)
class Plan:
    """How one backend will serve a request: what is sent, in how many calls, what changed."""

    backend: str
    request: ImageRequest
    chunks: tuple[int, ...]
    adjustments: tuple[Adjustment, ...]
    output_format: ImageFormat  # what the caller asked for; the answer is converted to it

    def calls(self) -> list[ImageRequest]:
        """One request per call; a given seed continues across calls (seed, seed+n1, ...)."""
        out, done = [], 0
        for n in self.chunks:
            seed = None if self.request.seed is None else self.request.seed + done
            out.append(self.request.model_copy(update={"n": n, "seed": seed}))
            done += n
        return out


@dataclass(frozen=True)
class Refusal:
    """Why a backend cannot serve a request (a trail row; nothing was sent)."""

    backend: str
    field: str
    why: str


class _Refused(Exception):
    def __init__(self, field: str, why: str) -> None:
        super().__init__(why)
        self.field, self.why = field, why


@dataclass
class _Fit:
    request: ImageRequest
    caps: Capabilities
    mode: Mode
    updates: dict[str, Any] = field(default_factory=dict)
    adjustments: list[Adjustment] = field(default_factory=list)

    def change(self, name: str, asked: Any, used: Any, why: str, *, explicit: bool) -> None:
        """Record a change; in strict mode a change to a value the caller set refuses."""
        if explicit and self.mode == "strict":
            raise _Refused(name, f"{_clip(asked)} cannot be served as asked: {why}")
        self.adjustments.append(Adjustment(field=name, asked=_clip(asked), used=_clip(used), why=why))

    def set_by_caller(self, *names: str) -> bool:
        return bool(set(names) & self.request.model_fields_set)

    def not_taken(self, name: str, asked: Any, update: dict[str, Any]) -> bool:
        """Drop a field the backend does not take; True when it was dropped."""
        if name in self.caps.takes:
            return False
        self.change(name, asked, None, "this backend does not take it", explicit=True)
        self.updates.update(update)
        return True

    # -- the fields -----------------------------------------------------------------------

    def prompt(self) -> None:
        limit = self.caps.prompt_max
        if limit is not None and len(self.request.prompt) > limit:
            raise _Refused(
                "prompt", f"{len(self.request.prompt)} characters; this backend takes at most {limit}"
            )

    def model(self) -> None:
        if self.caps.model_refused is not None:
            raise _Refused("model", self.caps.model_refused)
        name = self.request.model
        if name is None or self.not_taken("model", name, {"model": None}):
            return
        known = self.caps.models
        if known is not None and name not in known and name not in self.caps.model_aliases:
            shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "") or "none"
            raise _Refused("model", f"{name!r} is not one of this backend's models ({shown})")

    def size(self) -> None:
        req, caps = self.request, self.caps
        w, h = req.width, req.height
        explicit = self.set_by_caller("width", "height")
        asked = f"{w}x{h}"
        if "size" not in caps.takes:
            if explicit:
                self.change("size", asked, None, "this backend takes no size: the provider decides",
                            explicit=True)
            return
        if caps.aspect_ratios is not None:  # the provider picks the pixels for the ratio
            ratio = nearest_ratio(w, h, caps.aspect_ratios)
            if _ratio_distance(_ratio_value(ratio), w / h) > RATIO_TOLERANCE:
                self.change("size", asked, ratio, "this backend takes only an aspect ratio "
                            f"({', '.join(caps.aspect_ratios)})", explicit=explicit)
            return
        if caps.sizes is not None:
            if (w, h) in caps.sizes:
                return
            fitted = nearest_size(w, h, caps.sizes)
        else:
            fitted = fit_spans(w, h, caps.width, caps.height)
            if fitted == (w, h):
                return
        self.change("size", asked, f"{fitted[0]}x{fitted[1]}", f"allowed: {caps.sizes_text()}",
                    explicit=explicit)
        self.updates.update(width=fitted[0], height=fitted[1])

    def ranged(self, name: str, span: Span | None, *, integer: bool) -> None:
        value = getattr(self.request, name)
        if value is None or self.not_taken(name, value, {name: None}):
            return
        if span is None or span.contains(value):
            return
        used: float = span.nearest(value)
        used = int(used) if integer else used
        self.change(name, value, used, f"allowed: {span.describe()}", explicit=self.set_by_caller(name))
        self.updates[name] = used

    def sampler(self) -> None:
        name = self.request.sampler
        if name is None or self.not_taken("sampler", name, {"sampler": None}):
            return
        known = self.caps.samplers
        if known is None:
            return
        spelt = match_sampler(name, known, self.caps.scheduler_suffixes)
        if spelt == name:
            return
        if spelt is not None:  # the same sampler, spelt the backend's way: not a change
            self.adjustments.append(Adjustment(
                field="sampler", asked=name, used=spelt, why="spelt as this backend lists it"))
            self.updates["sampler"] = spelt
            return
        shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        self.change("sampler", name, None, f"unknown to this backend, whose default is used "
                    f"(it has: {shown})", explicit=True)
        self.updates["sampler"] = None

    def negative_prompt(self) -> None:
        text = self.request.negative_prompt
        if text:
            self.not_taken("negative_prompt", text, {"negative_prompt": ""})
        elif "negative_prompt" in self.caps.required:
            self.adjustments.append(Adjustment(
                field="negative_prompt", asked=None, used="",
                why="the provider requires a value; sent empty"))

    def output_format(self) -> None:
        formats = self.caps.formats
        if formats and self.request.output_format.value not in formats:
            self.updates["output_format"] = ImageFormat("png" if "png" in formats else formats[0])


def plan(request: ImageRequest, caps: Capabilities | None, mode: Mode, *, backend: str) -> Plan | Refusal:
    """How ``backend`` (with ``caps``; None: unknown, take everything) serves ``request``."""
    wanted = request.output_format
    if caps is None:
        return Plan(backend, request, (request.n,), (), wanted)
    fit = _Fit(request, caps, mode)
    try:
        fit.prompt()
        fit.model()
        fit.size()
        fit.ranged("steps", caps.steps, integer=True)
        fit.ranged("guidance_scale", caps.guidance_scale, integer=False)
        fit.ranged("seed", caps.seed, integer=True)
        fit.sampler()
        fit.negative_prompt()
        fit.output_format()
    except _Refused as refused:
        return Refusal(backend, refused.field, refused.why)
    chunks = split(request.n, caps.max_n)
    if len(chunks) > 1:
        fit.adjustments.append(Adjustment(
            field="n", asked=request.n, used=request.n,
            why=f"{len(chunks)} calls: this backend makes at most {caps.max_n} per call"))
    sent = request.model_copy(update=fit.updates) if fit.updates else request
    return Plan(backend, sent, chunks, tuple(fit.adjustments), wanted)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def plan_all(
    request: ImageRequest,
    candidates: Sequence[_Named],
    backends: Mapping[str, ImageBackend[Any]],
    mode: Mode,
) -> tuple[dict[str, Plan], list[Refusal]]:
    """Every candidate's plan, and the refusals; InvalidRequest when every candidate refused."""
    plans: dict[str, Plan] = {}
    refused: list[Refusal] = []
    for candidate in candidates:
        name = candidate.name
        if name in plans:
            continue
        found = plan(request, backends[name].capabilities_for(request), mode, backend=name)
        if isinstance(found, Refusal):
            refused.append(found)
        else:
            plans[name] = found
    if not plans:
        raise no_backend_error(refused)
    return plans, refused


def skip_rows(refused: Sequence[Refusal]) -> list[Attempt]:
    """The trail rows of backends skipped because they cannot serve the request."""
    rows = []
    for r in refused:
        why = f"cannot serve it: {r.field} {r.why}"
        log.info("backend_skipped", backend=r.backend, kind="unsupported", reason=why)
        rows.append(Attempt(backend=r.backend, outcome="skipped", error=why))
    return rows


def no_backend_error(refusals: Sequence[Refusal]) -> InvalidRequest:
    """The caller's error when no candidate can serve the request: the field, and what each
    configured backend said."""
    first = refusals[0].field if refusals else None
    detail = "; ".join(f"{r.backend}: {r.field} {r.why}" for r in refusals)
    field_name = first if first else "request"
    return InvalidRequest(f"{field_name}: no configured backend can serve this request ({detail})",
                          field=first)


async def execute(
    backend: ImageBackend[Any], plan: Plan, deadline: Deadline
) -> tuple[list[GeneratedImage], list[Adjustment]]:
    """Make the plan's calls (at once; the first failure cancels the rest), then convert the
    images to the asked format and note what the provider changed on its own."""
    batches = await gather_all(backend.generate(r, deadline=deadline) for r in plan.calls())
    images = [image for batch in batches for image in batch]
    return await finish(images, plan)


async def finish(images: list[GeneratedImage], plan: Plan) -> tuple[list[GeneratedImage], list[Adjustment]]:
    adjustments = list(plan.adjustments)
    sent, wanted = plan.request, plan.output_format
    other = sorted({i.format.value for i in images if i.format is not wanted})
    if other:
        images = await asyncio.to_thread(lambda: [convert_image(i, wanted) for i in images])
        why = f"converted with Pillow from what the provider answered ({', '.join(other)})"
        adjustments.append(Adjustment(field="output_format", asked=wanted.value,
                                      used=wanted.value, why=why))
    sizes = sorted({(i.width, i.height) for i in images} - {(sent.width, sent.height)})
    if sizes:
        got = ", ".join(f"{w}x{h}" for w, h in sizes)
        adjustments.append(Adjustment(field="size", asked=f"{sent.width}x{sent.height}", used=got,
                                      why="the provider answered another size"))
    return images, adjustments


# -- pure helpers --------------------------------------------------------------------------


def split(n: int, most: int | None) -> tuple[int, ...]:
    """``n`` images as calls of at most ``most`` each."""
    if most is None or n <= most:
        return (n,)
    full, rest = divmod(n, most)
    return (most,) * full + ((rest,) if rest else ())


def _ratio_distance(a: float, b: float) -> float:
    return abs(math.log(a) - math.log(b))


def nearest_size(w: int, h: int, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The allowed size closest in aspect ratio, then in area."""
    return min(sizes, key=lambda s: (round(_ratio_distance(s[0] / s[1], w / h), 6),
                                     abs(math.log(s[0] * s[1] / (w * h)))))


def _ratio_value(ratio: str) -> float:
    a, b = ratio.split(":")
    return int(a) / int(b)


def nearest_ratio(w: int, h: int, ratios: Sequence[str]) -> str:
    return min(ratios, key=lambda r: _ratio_distance(_ratio_value(r), w / h))


def fit_spans(w: int, h: int, ws: Span | None, hs: Span | None) -> tuple[int, int]:
    """``(w, h)`` scaled into the spans keeping the aspect ratio where possible, then each
    side snapped to its span's step."""
    lo, hi = 0.0, math.inf
    for value, span in ((w, ws), (h, hs)):
        if span is not None:
            lo, hi = max(lo, span.min / value), min(hi, span.max / value)
    scale = min(max(1.0, lo), hi) if lo <= hi else 1.0
    tw, th = w * scale, h * scale
    return (int(ws.nearest(tw)) if ws else round(tw), int(hs.nearest(th)) if hs else round(th))


def match_sampler(name: str, samplers: Sequence[str], suffixes: Sequence[str]) -> str | None:
    """``name`` spelt as the backend lists it (exact, or ignoring case; an optional scheduler
    suffix kept), or None when the backend does not know it."""
    if name in samplers or any(
        name.endswith(" " + s) and name[: -len(s) - 1] in samplers for s in suffixes
    ):
        return name
    by_lower = {s.lower(): s for s in samplers}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    for suffix in suffixes:
        if name.lower().endswith(" " + suffix.lower()):
            base = by_lower.get(name[: -len(suffix) - 1].lower())
            if base is not None:
                return f"{base} {suffix}"
    return None


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _CLIP:
        return value[: _CLIP - 3] + "..."
    return value
