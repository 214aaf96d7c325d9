"""The operator page's view of one generation in flight: what it asked, where it runs, how far.

:class:`LiveRequest` follows one request's events (``imagegate.events``) and says what the
page shows: status, backend, queue position, progress and ETA, the failover steps as they
happen, how it ended. Pure: events in, state out; the board (``board.py``) owns the clock
and the listeners.

:data:`JOB_ID` is set by the job runner for the generation it runs, so that the page can
offer a job's cancel button; a synchronous request is known by its ``x-request-id``.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any, Literal

from imagegate.events import (
    CancelledEvent,
    CompletedEvent,
    Event,
    FailedEvent,
    FailoverEvent,
    ProgressEvent,
    QueuedEvent,
    StartedEvent,
)
from imagegate.models import ImageRequest

__all__ = ["JOB_ID", "MAX_FAILOVERS", "LiveRequest", "Status"]

JOB_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("imagegate_job_id", default=None)
"""The id of the async job whose generation runs in this task (None: not a job)."""

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
PROMPT_SHOWN = 300  # characters of the prompt the page gets
MAX_FAILOVERS = 20  # steps kept per request (max_attempts is at most 20)
_ENDED: dict[str, Status] = {"completed": "succeeded", "failed": "failed", "cancelled": "cancelled"}


@dataclass
class LiveRequest:
    """One generation as the page shows it (times are unix seconds)."""

    id: str
    job_id: str | None
    prompt: str
    size: str
    steps: int | None
    n: int
    seed: int | None
    pinned: str | None
    started_at: float
    status: Status = "queued"
    backend: str | None = None
    attempt: int = 0
    fraction: float | None = None
    step: int | None = None
    total_steps: int | None = None
    eta_s: float | None = None
    position: int | None = None
    queue_size: int | None = None
    failovers: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    ended_at: float | None = None
    preview: str | None = None  # the last preview as a data: URL (sent on its own)

    @classmethod
    def begin(
        cls, request_id: str, job_id: str | None, request: ImageRequest, pinned: str | None,
        *, now: float,
    ) -> LiveRequest:
        prompt = request.prompt
        if len(prompt) > PROMPT_SHOWN:
            prompt = prompt[:PROMPT_SHOWN - 1] + "…"
        return cls(
            id=request_id, job_id=job_id, prompt=prompt, size=f"{request.width}x{request.height}",
            steps=request.steps, n=request.n, seed=request.seed, pinned=pinned, started_at=now,
        )

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    def apply(self, event: Event, *, now: float) -> bool:
        """Take ``event`` in (``now``: the board's clock, for when it ended); whether the
        status, backend or failover steps changed (the rest, progress, may be sent less often)."""
        before = (self.status, self.backend, len(self.failovers))
        if isinstance(event, QueuedEvent):
            self.status, self.position, self.queue_size = "queued", event.position, event.queue_size
            self.eta_s = event.eta_s
            self.backend = event.backend or self.backend
        elif isinstance(event, StartedEvent):
            self.status, self.backend, self.attempt = "running", event.backend, event.attempt
            self.fraction = self.step = self.total_steps = self.eta_s = None
            self.position = self.queue_size = None
        elif isinstance(event, ProgressEvent):
            self.status, self.fraction, self.eta_s = "running", event.fraction, event.eta_s
            self.step, self.total_steps = event.step, event.steps
            self.position = self.queue_size = None
        elif isinstance(event, FailoverEvent):
            if len(self.failovers) < MAX_FAILOVERS:
                self.failovers.append({"from": event.from_, "to": event.to, "reason": event.reason,
                                       "hedge": event.hedge, "at": event.at})
        elif isinstance(event, CompletedEvent | FailedEvent | CancelledEvent):
            self._end(event, now)
        return before != (self.status, self.backend, len(self.failovers))

    def _end(self, event: CompletedEvent | FailedEvent | CancelledEvent, now: float) -> None:
        self.status, self.ended_at = _ENDED[event.type], now
        self.position = self.queue_size = self.eta_s = None
        if isinstance(event, CompletedEvent):
            self.backend, self.fraction = event.result.backend, 1.0
        elif isinstance(event, FailedEvent):
            self.error = f"{event.error_kind}: {event.message}"
        else:
            self.error = event.reason

    def public(self) -> dict[str, Any]:
        """The page's JSON (without the preview, which travels on its own)."""
        return {
            "id": self.id, "job_id": self.job_id, "prompt": self.prompt, "size": self.size,
            "steps": self.steps, "n": self.n, "seed": self.seed, "pinned": self.pinned,
            "started_at": self.started_at, "status": self.status, "backend": self.backend,
            "attempt": self.attempt,
            "progress": {"fraction": self.fraction, "step": self.step, "steps": self.total_steps,
                         "eta_s": self.eta_s},
            "queue": {"position": self.position, "size": self.queue_size},
            "failovers": list(self.failovers), "error": self.error, "ended_at": self.ended_at,
        }
