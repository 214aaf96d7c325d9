"""What happens to one generation while it runs, as typed events, and how a backend reports it.

The events, in the order a request meets them::

    queued     the provider (or imagegate's own slot queue) holds the request: position
               (1 = next), queue_size, eta_s
    started    an attempt on a backend begins (hedge: it races another one)
    progress   fraction 0..1, step of steps, eta_s: what the provider says of its work
    preview    a small image of the work so far (only when the listener asked for previews)
    failover   from one backend to another, and why (hedge: the first is still running)
    completed  the result                                  \\
    failed     error kind, message and the attempt trail    > terminal: exactly one, last
    cancelled  the caller (or a client that went away) gave up  /

Backends say only what their provider tells (``queued``, ``progress``, ``preview``) through
the :class:`Reporter` of the attempt they run in, found with :func:`current_reporter` (or
``ImageBackend.reporter``); routing emits ``started``, ``failover`` and the terminal event.
When nobody listens the reporter is :data:`SILENT`: every call returns at once and a backend
checks ``reporter.listening`` before it polls for progress at all, so a request nobody
watches costs nothing more than before.

A reporter must be called from the event loop's thread (gradio_client's status is read there
too); a listener's exception is logged and dropped, never raised into the generation.
"""

from __future__ import annotations

import base64
import contextvars
import io
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_serializer,
    field_validator,
)

from imagegate.logging import get_logger
from imagegate.models import Attempt, ImageResult

__all__ = [
    "SILENT",
    "TERMINAL",
    "CancelledEvent",
    "CompletedEvent",
    "Event",
    "EventSink",
    "EventType",
    "FailedEvent",
    "FailoverEvent",
    "PreviewEvent",
    "ProgressEvent",
    "QueuedEvent",
    "Reporter",
    "StartedEvent",
    "current_reporter",
    "event_json",
    "parse_event",
    "use_reporter",
]

log = get_logger(__name__)

EventType = Literal[
    "queued", "started", "progress", "preview", "failover", "completed", "failed", "cancelled"
]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
ETA_STEP_S = 1.0  # a progress report whose only change is an ETA moved by less is dropped


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    at: float = Field(default_factory=time.time, description="unix time of the event")
    backend: str | None = None


class QueuedEvent(_Event):
    """The request waits in a queue: the provider's, or imagegate's own for a full backend."""

    type: Literal["queued"] = "queued"
    position: int | None = Field(default=None, ge=1, description="1 = next to run")
    queue_size: int | None = Field(default=None, ge=0)
    eta_s: float | None = Field(default=None, ge=0)


class StartedEvent(_Event):
    """An attempt on ``backend`` begins (a retry of the same backend is another attempt)."""

    type: Literal["started"] = "started"
    backend: str
    attempt: int = Field(ge=1)
    hedge: bool = False


class ProgressEvent(_Event):
    """What the provider says of its work; any field may be unknown (None)."""

    type: Literal["progress"] = "progress"
    fraction: float | None = Field(default=None, ge=0, le=1)
    step: int | None = Field(default=None, ge=0)
    steps: int | None = Field(default=None, ge=1)
    eta_s: float | None = Field(default=None, ge=0)


class PreviewEvent(_Event):
    """A small image of the work so far (a live preview, or a generator's intermediate output)."""

    type: Literal["preview"] = "preview"
    image: bytes = Field(repr=False)
    format: str
    width: int | None = None
    height: int | None = None

    @field_serializer("image", when_used="json")
    def _b64(self, value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")

    @field_validator("image", mode="before")
    @classmethod
    def _from_b64(cls, value: Any) -> Any:
        return base64.b64decode(value, validate=True) if isinstance(value, str) else value


class FailoverEvent(_Event):
    """The request moves on from one backend (``from``) to another (``to``)."""

    type: Literal["failover"] = "failover"
    from_: str = Field(serialization_alias="from", validation_alias=AliasChoices("from", "from_"))
    to: str
    reason: str
    error_kind: str | None = None
    hedge: bool = Field(default=False, description="the first attempt still runs: a race")


class CompletedEvent(_Event):
    """The result (its images' bytes are not in the JSON form: see the HTTP API's shapes)."""

    type: Literal["completed"] = "completed"
    result: ImageResult


class FailedEvent(_Event):
    """No backend produced an image."""

    type: Literal["failed"] = "failed"
    error_kind: str
    message: str
    attempts: list[Attempt] = Field(default_factory=list)
    deadline_exceeded: bool = False


class CancelledEvent(_Event):
    """The caller gave up (a cancelled job, a client that went away)."""

    type: Literal["cancelled"] = "cancelled"
    reason: str = "cancelled by the caller"


Event = Annotated[
    QueuedEvent | StartedEvent | ProgressEvent | PreviewEvent | FailoverEvent | CompletedEvent
    | FailedEvent | CancelledEvent,
    Field(discriminator="type"),
]
EventSink = Callable[[Event], None]
"""Where events go: called with each event, on the event loop, must not block."""

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def event_json(event: _Event) -> dict[str, Any]:
    """The JSON form of ``event`` (``from`` spelt as such; a preview's image in base64)."""
    return event.model_dump(mode="json", by_alias=True)


def parse_event(data: Any) -> Event:
    """An event from its JSON form (what a client of the event stream reads)."""
    return _ADAPTER.validate_python(data)


class Reporter:
    """What one attempt tells its listener. Backends call it; it drops repeats.

    ``listening`` is False for :data:`SILENT`: then do not poll for progress at all.
    ``previews`` says whether the listener wants preview images (fetching them costs).
    """

    __slots__ = ("_last", "_last_eta", "_last_preview", "_sink", "backend", "listening", "previews")

    def __init__(self, sink: EventSink | None, *, backend: str | None, previews: bool = False) -> None:
        self._sink = sink
        self.backend = backend
        self.listening = sink is not None
        self.previews = previews and sink is not None
        self._last: tuple[Any, ...] | None = None
        self._last_eta: float | None = None
        self._last_preview = b""

    def queued(
        self, *, position: int | None = None, queue_size: int | None = None, eta_s: float | None = None
    ) -> None:
        """The provider holds the request in its queue (``position`` 1 = next)."""
        if self._sink is None or self._repeat(("q", position, queue_size), eta_s):
            return
        self._emit(QueuedEvent(
            backend=self.backend,
            position=None if position is None else max(1, position),
            queue_size=None if queue_size is None else max(0, queue_size),
            eta_s=_eta(eta_s),
        ))

    def progress(
        self,
        *,
        fraction: float | None = None,
        step: int | None = None,
        steps: int | None = None,
        eta_s: float | None = None,
    ) -> None:
        """The provider's work so far; ``fraction`` is derived from ``step/steps`` if absent."""
        if self._sink is None:
            return
        if steps is not None and steps < 1:
            steps = None
        if fraction is None and step is not None and steps:
            fraction = step / steps
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
        if self._repeat(("p", None if fraction is None else round(fraction, 3), step, steps), eta_s):
            return
        self._emit(ProgressEvent(
            backend=self.backend, fraction=fraction, step=None if step is None else max(0, step),
            steps=steps, eta_s=_eta(eta_s),
        ))

    def preview(self, data: bytes, *, format: str | None = None) -> None:
        """A preview image (encoded bytes); dropped unless the listener asked for previews,
        and when it is the same image as the last one."""
        if self._sink is None or not self.previews or not data or data == self._last_preview:
            return
        self._last_preview = data
        fmt, width, height = _describe_image(data)
        self._emit(PreviewEvent(
            backend=self.backend, image=data, format=format or fmt or "png", width=width, height=height
        ))

    def _repeat(self, key: tuple[Any, ...], eta_s: float | None) -> bool:
        """Whether this report says nothing new: same state, ETA within ETA_STEP_S."""
        same_eta = (eta_s is None) == (self._last_eta is None) and (
            eta_s is None or self._last_eta is None or abs(eta_s - self._last_eta) < ETA_STEP_S
        )
        if key == self._last and same_eta:
            return True
        self._last, self._last_eta = key, eta_s
        return False

    def _emit(self, event: Event) -> None:
        if self._sink is not None:
            self._sink(event)


SILENT = Reporter(None, backend=None)
"""The reporter when nobody listens: every method returns at once."""

_CURRENT: contextvars.ContextVar[Reporter] = contextvars.ContextVar("imagegate_reporter", default=SILENT)


def current_reporter() -> Reporter:
    """The reporter of the attempt running in this task (:data:`SILENT` outside one)."""
    return _CURRENT.get()


def use_reporter(reporter: Reporter) -> None:
    """Make ``reporter`` the current one for the rest of this task (an attempt's own task)."""
    _CURRENT.set(reporter)


def _eta(value: float | None) -> float | None:
    return None if value is None else max(0.0, float(value))


def _describe_image(data: bytes) -> tuple[str | None, int | None, int | None]:
    """Format and size from the image's header (no pixel decode); Nones if unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = (img.format or "").lower() or None
            return ("jpeg" if fmt == "jpg" else fmt), img.width, img.height
    except Exception:  # noqa: BLE001 - a preview that does not decode still carries its bytes
        return None, None, None
