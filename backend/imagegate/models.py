"""The data that flows through imagegate: requests, deadlines, images, attempts, results, health."""

from __future__ import annotations

import io
import reprlib
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from imagegate.capabilities import Adjustment, Capabilities
from imagegate.errors import ErrorKind, InvalidRequest

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "Attempt",
    "BackendHealth",
    "BreakerState",
    "Deadline",
    "GeneratedImage",
    "ImageFormat",
    "ImageRequest",
    "ImageResult",
    "Outcome",
    "SkipKind",
    "validation_message",
]

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock by which the whole request must be done."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at


class ImageFormat(StrEnum):
    """Image encodings imagegate asks for and returns."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"


class ImageRequest(BaseModel):
    """What the caller wants; validated before anything is sent anywhere.

    Numbers are strict: ``true`` is not a seed and ``"512"`` is not a width.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str = Field(default="", max_length=4000)
    width: int = Field(strict=True, default=1024, ge=64, le=2048, multiple_of=8)
    height: int = Field(strict=True, default=1024, ge=64, le=2048, multiple_of=8)
    steps: int | None = Field(strict=True, default=None, ge=1, le=150)
    guidance_scale: float | None = Field(strict=True, default=None, ge=0, le=30)
    seed: int | None = Field(strict=True, default=None, ge=0, le=MAX_SEED)
    n: int = Field(strict=True, default=1, ge=1, le=8)
    sampler: str | None = Field(default=None, max_length=100)
    model: str | None = Field(default=None, max_length=300)
    output_format: ImageFormat = ImageFormat.PNG

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @classmethod
    def parse(cls, data: Any) -> ImageRequest:
        """Validate ``data`` (a mapping) and raise InvalidRequest naming the field on failure."""
        if not isinstance(data, dict):
            raise InvalidRequest("the request must be a JSON object", field=None)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            field, message = validation_message(exc)
            raise InvalidRequest(message, field=field) from None


def validation_message(exc: ValidationError) -> tuple[str | None, str]:
    """One readable line per problem ("width: must be <= 2048 (got 4096)") and the first field."""
    lines: list[str] = []
    first: str | None = None
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or None
        first = first or loc
        msg = _describe(err)
        lines.append(f"{loc}: {msg}" if loc else msg)
    return first, "; ".join(lines)


def _describe(err: Any) -> str:
    ctx = err.get("ctx") or {}
    got = err.get("input")
    shown = _shown(got)
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return f"{_range_text(err)} (got {shown})"
    if kind == "multiple_of":
        return f"must be a multiple of {ctx.get('multiple_of')} (got {shown})"
    if kind in ("string_too_short", "string_too_long"):
        n = len(got) if isinstance(got, str) else "?"
        return f"length must be {_length_range(err)} characters (got {n})"
    if kind == "missing":
        return "field required"
    if kind in ("int_type", "int_parsing", "float_type", "float_parsing", "int_from_float"):
        what = "a number" if kind.startswith("float") else "an integer"
        field = str(err["loc"][-1]) if err["loc"] else ""
        allowed = f" in {_RANGES[field]}" if field in _RANGES else ""
        return f"must be {what}{allowed} (got {shown})"
    return f"{str(err['msg']).removeprefix('Value error, ')} (got {shown})"


def _shown(value: Any) -> str:
    """The offending value for a message, at most about 60 characters, whatever it is."""
    if isinstance(value, str):
        return repr(value) if len(value) < 60 else f"<{len(value)} chars>"
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int of more digits than Python converts (sys.get_int_max_str_digits)
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= 60 else text[:57] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 2, 6, 6, 4, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 40, 40, 40


def _length_range(err: Any) -> str:
    """"1..4000" for a string field, from the ImageRequest field's own constraints."""
    ctx = err.get("ctx") or {}
    lo, hi = ctx.get("min_length"), ctx.get("max_length")
    info = ImageRequest.model_fields.get(str(err["loc"][-1])) if err["loc"] else None
    for meta in info.metadata if info else ():
        lo = getattr(meta, "min_length", lo)
        hi = getattr(meta, "max_length", hi)
    return f"{lo or 0}..{hi}" if hi is not None else f"at least {lo}"


_RANGES: dict[str, str] = {
    "width": "64..2048, a multiple of 8",
    "height": "64..2048, a multiple of 8",
    "steps": "1..150",
    "guidance_scale": "0..30",
    "seed": f"0..{MAX_SEED}",
    "n": "1..8",
}


def _range_text(err: Any) -> str:
    field = str(err["loc"][-1]) if err["loc"] else ""
    if field in _RANGES:
        return f"must be in {_RANGES[field]}"
    return str(err["msg"]).lower()


class GeneratedImage(BaseModel):
    """One image: its encoded bytes and what we know of it."""

    model_config = ConfigDict(frozen=True)

    data: bytes = Field(repr=False, exclude=True)
    format: ImageFormat
    width: int
    height: int
    seed: int | None = None
    info: dict[str, Any] = Field(default_factory=dict)

    def to_pil(self) -> Image.Image:
        """Decode the bytes with Pillow."""
        from PIL import Image

        img = Image.open(io.BytesIO(self.data))
        img.load()
        return img


Outcome = Literal["ok", "skipped", "waited", "cancelled", "raced"] | ErrorKind
"""What became of one attempt: it answered (``ok``); it was passed over without a call
(``skipped``, the reason in ``error``); the request waited for its breaker to reopen
(``waited``); it lost a race or the caller gave up (``cancelled``); another backend's
connection was ready first, so nothing was sent to it (``raced``: both handshake times in
``timings``, the winner in ``error``); or it failed with an error of that ``kind``."""

SkipKind = Literal[
    "circuit_open", "half_open_busy", "disabled", "saturated", "not_tried", "unsupported"
]
"""Why a candidate was skipped: its breaker is open, its half-open trial is taken, it is
disabled (auth/quota), all its slots are busy, the request ended before reaching it, or it
cannot serve the request (its capabilities; decided before any I/O)."""

BreakerState = Literal["closed", "open", "half_open", "disabled"]


class Attempt(BaseModel):
    """One try (or skip) of one backend for one request."""

    backend: str
    outcome: Outcome
    elapsed_s: float = 0.0
    error: str | None = None
    status: int | None = None
    hedge: bool = False
    timings: dict[str, float] = Field(default_factory=dict)
    # what was changed in an answer that was used all the same (extra images dropped)
    note: str | None = None


class ImageResult(BaseModel):
    """The answer to one request: images, who served them, and the whole attempt trail."""

    images: list[GeneratedImage]
    backend: str
    attempts: list[Attempt]
    elapsed_s: float
    adjustments: list[Adjustment] = Field(default_factory=list)
    """What was changed to fit the backend that served it (``[service] adapt``)."""


class BackendHealth(BaseModel):
    """What the service knows of one backend right now."""

    name: str
    kind: str
    state: BreakerState = "closed"
    ok: bool | None = None
    last_probe_at: float | None = None
    last_error_kind: str | None = None
    last_error: str | None = None
    detail: str | None = None
    open_until: float | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    in_flight: int = 0
    max_concurrency: int | None = None
    latency_ewma_s: float | None = None
    # over the backend's recent requests (its last ``recent_requests`` attempts that ended)
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    success_rate: float | None = None
    recent_requests: int = 0
    breaker_reason: str | None = Field(
        default=None, description="why the breaker is open, half-open or disabled"
    )
    capabilities: Capabilities | None = None
