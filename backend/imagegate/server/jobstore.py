"""Where async jobs live: one small interface, and the in-memory store behind it.

A job is a record (what ``GET /v1/jobs/{id}`` shows) plus its event log (what
``GET /v1/jobs/{id}/events`` replays and follows) plus a cancel flag. The interface is what
a shared store (Redis, for several instances behind one load balancer) has to provide:

- every method is async, and everything stored is plain JSON (the record as a dict, each
  event's data as JSON text), so that it can cross a network as is;
- ``append`` adds an event *and* the record it leads to in one step, with the next id of
  that job (1, 2, 3, ...: monotonic per job, which is what SSE's ``Last-Event-ID`` resumes
  from); the last event of a job is marked ``final`` and ends every listener;
- ``events(job_id, after)`` replays the events after ``after`` and then follows new ones,
  ending after the final one: the same call serves a first connection and a resume;
- a cancel is a request (``request_cancel``) that whichever instance runs the job hears
  (``cancel_requested`` returns): the runner cancels its own task, the events say the rest.

:class:`MemoryJobStore` keeps at most ``max_jobs`` jobs, each until ``ttl_s`` after it ended;
a new job first evicts expired and then the oldest ended ones, and is refused
(:class:`JobsFull`) when every kept job still runs.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["JobStore", "JobStoreUnavailable", "JobsFull", "MemoryJobStore", "StoredEvent"]


class JobsFull(Exception):
    """Every kept job still runs: no room for another."""


class JobStoreUnavailable(Exception):
    """A shared job store did not answer in time (the HTTP answer is 503)."""


@dataclass(frozen=True)
class StoredEvent:
    """One event of a job: its number in the job, its type, its data (JSON text)."""

    id: int
    type: str
    data: str
    final: bool = False


class JobStore(Protocol):
    """The store every job goes through (memory here; a shared one can replace it)."""

    async def create(self, job_id: str, record: dict[str, Any]) -> None:
        """Keep a new job (raises JobsFull when there is no room)."""

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's record, or None (never existed, or expired)."""

    async def append(
        self, job_id: str, type: str, data: str, record: dict[str, Any], *, final: bool = False
    ) -> int:
        """Add an event and the record it leads to, atomically; the event's id."""

    def events(self, job_id: str, after: int = 0) -> AsyncIterator[StoredEvent]:
        """The events with an id above ``after``, then new ones as they come, up to the final."""

    async def request_cancel(self, job_id: str) -> bool:
        """Ask for the job to be cancelled; False when there is no such job or it ended."""

    async def cancel_requested(self, job_id: str) -> None:
        """Return once a cancel of the job was asked for (the runner waits on it)."""

    async def aclose(self) -> None:
        """Release what the store holds (connections); the memory store forgets nothing."""


@dataclass(eq=False)
class _Job:
    record: dict[str, Any]
    events: list[StoredEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float | None = None


class MemoryJobStore:
    """Jobs in this process: bounded in number, each kept ``ttl_s`` after it ended."""

    def __init__(self, *, max_jobs: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._max, self._ttl, self._clock = max_jobs, ttl_s, clock

    def __len__(self) -> int:
        return len(self._jobs)

    async def create(self, job_id: str, record: dict[str, Any]) -> None:
        self._evict()
        if len(self._jobs) >= self._max:
            raise JobsFull(f"{self._max} jobs are running (the [service] jobs_max)")
        self._jobs[job_id] = _Job(dict(record))

    async def get(self, job_id: str) -> dict[str, Any] | None:
        job = self._live(job_id)
        return None if job is None else dict(job.record)

    async def append(
        self, job_id: str, type: str, data: str, record: dict[str, Any], *, final: bool = False
    ) -> int:
        job = self._jobs.get(job_id)
        if job is None or job.ended_at is not None:
            raise KeyError(job_id)
        event = StoredEvent(len(job.events) + 1, type, data, final)
        job.events.append(event)
        job.record = dict(record)
        if final:
            job.ended_at = self._clock()
        job.changed.set()  # every listener wakes once; the next append uses a new Event
        job.changed = asyncio.Event()
        return event.id

    async def events(self, job_id: str, after: int = 0) -> AsyncIterator[StoredEvent]:
        job = self._live(job_id)
        if job is None:
            return
        index = max(0, after)  # ids are 1..n: the event with id ``after`` sits at after - 1
        while True:
            while index < len(job.events):
                event = job.events[index]
                index += 1
                yield event
                if event.final:
                    return
            if job.ended_at is not None:
                return
            await job.changed.wait()

    async def request_cancel(self, job_id: str) -> bool:
        job = self._live(job_id)
        if job is None or job.ended_at is not None:
            return False
        job.cancel.set()
        return True

    async def cancel_requested(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            await asyncio.Event().wait()  # never: there is nothing to cancel
        else:
            await job.cancel.wait()

    async def aclose(self) -> None:
        return None

    # -- keeping it bounded ---------------------------------------------------------------

    def _live(self, job_id: str) -> _Job | None:
        job = self._jobs.get(job_id)
        if job is not None and self._expired(job):
            del self._jobs[job_id]
            return None
        return job

    def _expired(self, job: _Job) -> bool:
        return job.ended_at is not None and self._clock() - job.ended_at >= self._ttl

    def _evict(self) -> None:
        for job_id in [k for k, job in self._jobs.items() if self._expired(job)]:
            del self._jobs[job_id]
        if len(self._jobs) < self._max:
            return
        for job_id, job in list(self._jobs.items()):  # oldest first
            if job.ended_at is not None:
                del self._jobs[job_id]
                if len(self._jobs) < self._max:
                    return
