"""A Space job's progress, from gradio_client's own view of it (notes/gradio.md §6), and
when cancelling it on the Space is safe.

``Job.status()`` and ``Job.outputs()`` only read what gradio_client's thread has already
received from the Space's SSE stream (a lock and a list: no I/O), so watching them from the
event loop every ``POLL_S`` costs nothing on the wire and adds at most ``POLL_S`` of delay:

- ``IN_QUEUE`` (``estimation``): ``rank`` is the 0-based place among *waiting* events,
  ``queue_size`` counts the waiting ones, ``eta`` (``rank_eta``) stays None until the function
  has finished once since the Space started -> a queued event, position ``rank + 1``;
- ``PROGRESS``: the last ``ProgressUnit``: tqdm gives ``index`` (steps done) of ``length``;
  ``progress(0.3)`` gives a bare ``progress`` fraction -> a progress event;
- ``PROCESSING`` / ``ITERATING`` before any unit: running, nothing more known -> a progress
  event without fraction (carrying ``eta`` when gradio gave one);
- a generator's intermediate outputs (``Job.outputs()`` grows while ``ITERATING``) -> preview
  events, fetched only when the listener asked for previews.

Nothing here decides the outcome: the job's result (or error) does.

Cancelling: gradio's ``POST /cancel`` cancels *every running event of the session and
endpoint* (gradio 6.31 ``routes.py`` ``cancel_event``: ``cancel_tasks({f"{session_hash}_
{fn_index}"})``; observed: cancelling a queued job of one Client killed the result of its
running sibling, which then never arrived). All of a backend's jobs share one Client, hence
one session: a job is cancelled on the Space only when no other job of it is running there
(:func:`safe_to_cancel`); otherwise it is abandoned (the Space finishes it, nobody reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from imagegate.errors import BackendError
from imagegate.events import Reporter
from imagegate.logging import get_logger
from imagegate.models import Deadline

__all__ = ["POLL_S", "JobWatch", "report_status", "safe_to_cancel"]

log = get_logger(__name__)

POLL_S = 0.025
Fetch = Callable[[Any], Awaitable[bytes | None]]
_RUNNING = frozenset({"PROCESSING", "PROGRESS", "ITERATING", "SENDING_DATA", "LOG"})


def safe_to_cancel(job: Any, jobs: Iterable[Any]) -> bool:
    """Whether cancelling ``job`` on the Space spares the others (none of them runs there)."""
    return not any(
        other is not job and not other.done()
        and getattr(other.status().code, "name", "") in _RUNNING
        for other in jobs
    )


def report_status(status: Any, reporter: Reporter, *, had_units: bool) -> bool:
    """Tell ``reporter`` what one ``StatusUpdate`` says; whether it carried progress units."""
    code = getattr(status.code, "name", str(status.code))
    eta = status.eta if isinstance(status.eta, int | float) else None
    if code == "IN_QUEUE":
        rank = status.rank if isinstance(status.rank, int) else None
        size = status.queue_size if isinstance(status.queue_size, int) else None
        reporter.queued(position=None if rank is None else rank + 1, queue_size=size, eta_s=eta)
        return had_units
    units = status.progress_data or []
    if code == "PROGRESS" and units:
        unit = units[-1]
        index, length = getattr(unit, "index", None), getattr(unit, "length", None)
        if isinstance(index, int) and isinstance(length, int) and length > 0:
            reporter.progress(step=index, steps=length, eta_s=eta)
        else:
            fraction = getattr(unit, "progress", None)
            reporter.progress(fraction=fraction if isinstance(fraction, int | float) else None, eta_s=eta)
        return True
    if code in ("PROCESSING", "ITERATING", "PROGRESS") and not had_units:
        reporter.progress(eta_s=eta)
    return had_units


class JobWatch:
    """Watch one ``Job`` until it is done, the deadline passes, or :meth:`stop`."""

    def __init__(self, job: Any, reporter: Reporter, deadline: Deadline, fetch: Fetch) -> None:
        self._job, self._reporter, self._deadline, self._fetch = job, reporter, deadline, fetch
        self._task: asyncio.Task[None] | None = None
        if reporter.listening:
            self._task = asyncio.create_task(self._watch(), name="imagegate-space-progress")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            if not self._task.cancelled() and self._task.exception() is not None:
                log.warning("space_progress_failed", error=str(self._task.exception()))

    async def _watch(self) -> None:
        job, reporter = self._job, self._reporter
        had_units, outputs_seen = False, 0
        while not job.done() and not self._deadline.expired:
            status = job.status()
            had_units = report_status(status, reporter, had_units=had_units)
            if reporter.previews and getattr(status.code, "name", "") == "ITERATING":
                outputs = job.outputs()
                if len(outputs) > outputs_seen:
                    outputs_seen = len(outputs)
                    with contextlib.suppress(BackendError):  # a lost preview is no failure
                        data = await self._fetch(outputs[-1])
                        if data:
                            reporter.preview(data)
            await asyncio.sleep(min(POLL_S, self._deadline.remaining()))
