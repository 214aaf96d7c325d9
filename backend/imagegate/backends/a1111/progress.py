"""Where an AUTOMATIC1111 task is: ``/internal/progress`` and ``/sdapi/v1/progress`` read
(pure), and told to a reporter."""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from dataclasses import dataclass
from typing import Any

from imagegate.events import Reporter

__all__ = [
    "TaskProgress",
    "parse_global_progress",
    "parse_internal_progress",
    "report_progress",
]

_IN_QUEUE = re.compile(r"In queue: (\d+)/(\d+)")


@dataclass(frozen=True)
class TaskProgress:
    """One progress answer, read: where the job is and what it shows."""

    known: bool = True  # False: the webui has never heard of the task id
    queued: bool = False
    active: bool = False
    position: int | None = None
    queue_size: int | None = None
    fraction: float | None = None
    step: int | None = None
    steps: int | None = None
    eta_s: float | None = None
    preview: bytes | None = None
    preview_format: str | None = None
    preview_id: int = -1


def parse_internal_progress(body: Any) -> TaskProgress:
    """``POST /internal/progress``'s answer (pure; tolerant: missing fields are unknown)."""
    if not isinstance(body, dict):
        return TaskProgress(known=False)
    active, queued = bool(body.get("active")), bool(body.get("queued"))
    position = queue_size = None
    match = _IN_QUEUE.search(str(body.get("textinfo") or "")) if queued else None
    if match:
        position, queue_size = int(match[1]), int(match[2])
    preview, fmt = _data_uri(body.get("live_preview"))
    preview_id = body.get("id_live_preview")
    return TaskProgress(
        known=active or queued or bool(body.get("completed")),
        queued=queued, active=active, position=position, queue_size=queue_size,
        fraction=_number(body.get("progress")) if active else None,
        eta_s=_number(body.get("eta")) if active else None,
        preview=preview, preview_format=fmt,
        preview_id=preview_id if isinstance(preview_id, int) else -1,
    )


def parse_global_progress(body: Any) -> TaskProgress:
    """``GET /sdapi/v1/progress``'s answer: whatever job runs (pure)."""
    if not isinstance(body, dict):
        return TaskProgress(known=False)
    state = body.get("state") if isinstance(body.get("state"), dict) else {}
    assert isinstance(state, dict)
    if not state.get("job_count"):
        return TaskProgress(active=False)
    steps = state.get("sampling_steps")
    image = body.get("current_image")
    preview = None
    if isinstance(image, str) and image:
        with contextlib.suppress(binascii.Error, ValueError):
            preview = base64.b64decode(image, validate=True)
    return TaskProgress(
        active=True, fraction=_number(body.get("progress")), eta_s=_number(body.get("eta_relative")),
        step=state.get("sampling_step") if isinstance(state.get("sampling_step"), int) else None,
        steps=steps if isinstance(steps, int) and steps > 0 else None, preview=preview,
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _data_uri(value: Any) -> tuple[bytes | None, str | None]:
    """``data:image/png;base64,...`` -> (bytes, "png"); (None, None) when absent or broken."""
    if not isinstance(value, str) or not value.startswith("data:image/"):
        return None, None
    head, _, b64 = value.partition(",")
    fmt = head[len("data:image/"):].split(";", 1)[0] or None
    try:
        return base64.b64decode(b64, validate=True), fmt
    except (binascii.Error, ValueError):
        return None, None


def report_progress(state: TaskProgress, steps: int | None, reporter: Reporter, preview_id: int) -> int:
    """Tell ``reporter`` what ``state`` says; the preview id to send next time."""
    if state.queued:
        reporter.queued(position=state.position, queue_size=state.queue_size)
    elif state.active:
        step, total = state.step, state.steps or steps
        if step is None and total and state.fraction is not None:
            step = round(state.fraction * total)  # one batch (n_iter = 1): progress = step/steps
        reporter.progress(fraction=state.fraction, step=step, steps=total, eta_s=state.eta_s)
        if state.preview is not None:
            reporter.preview(state.preview, format=state.preview_format)
    return state.preview_id if state.preview is not None else preview_id


