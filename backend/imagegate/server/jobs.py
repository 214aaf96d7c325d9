"""Async jobs: ``POST /v1/images/generations`` with ``Prefer: respond-async`` answers 202 at
once and the generation runs here, its events kept in a :class:`~imagegate.server.jobstore.JobStore`.

One runner per app. :meth:`JobRunner.submit` keeps the record, starts the generation as a
task (among the server's generations, so that shutdown drains and then cancels it like any
other) and writes every event of the request to the store in order, each with the record it
leads to (:func:`advance`, pure). A cancel is asked through the store, so that the instance
running the job hears it; the generation is cancelled (the backends stop their provider
work: a gradio job cancelled, an A1111 task of ours interrupted if it runs) and the
``cancelled`` event ends the job. A job with a ``webhook_url`` is POSTed its final record.

With a shared store (Redis, ``jobstore_redis.py``) a submitted job goes into the fleet's
queue instead, and every instance's consumer takes jobs from it: any instance may run a job
and every instance reads it; a job whose instance dies is taken again by another after its
lease lapses (``runs`` counts the runs; a job whose instance died ``MAX_RUNS`` times fails
with that reason), and the store keeps a job to one result whichever run ends first.

Status: ``queued`` until an attempt starts and while the provider reports the job queued,
``running`` while it works, then ``succeeded`` (``result`` in the synchronous answer's shape),
``failed`` (``error`` and the attempt trail) or ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from imagegate.events import (
    TERMINAL,
    CancelledEvent,
    CompletedEvent,
    Event,
    FailedEvent,
    FailoverEvent,
    ProgressEvent,
    QueuedEvent,
    StartedEvent,
    event_json,
)
from imagegate.logging import get_logger
from imagegate.models import ImageResult
from imagegate.routing import ImageService
from imagegate.server.jobstore import JobStore
from imagegate.server.live import JOB_ID
from imagegate.server.state import ServerState
from imagegate.server.webhooks import Webhooks
from imagegate.server.wire import (
    Generation,
    generation_from_json,
    generation_json,
    images_response,
)

__all__ = ["JOBS", "JobProgress", "JobRecord", "JobRunner", "JobStatus", "SaveImages", "advance"]

log = get_logger(__name__)

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
SaveImages = Callable[[str, ServerState, Generation, ImageResult], Awaitable[list[str]]]
CANCEL_WAIT_S = 10.0  # how long POST .../cancel waits for the job to say it is cancelled
MAX_RUNS = 2  # a job whose instance died this many times fails instead of running again
LOCAL_JOBS = 32  # the most jobs one instance takes from the shared queue at once
FINAL_RETRY_S = 1.0  # a final event the store refused is written again this often ...
_ENDED: dict[str, JobStatus] = {"completed": "succeeded", "failed": "failed", "cancelled": "cancelled"}


class JobProgress(BaseModel):
    """The last thing the provider said (Nones: not told)."""

    fraction: float | None = None
    step: int | None = None
    steps: int | None = None
    eta_s: float | None = None
    position: int | None = None
    queue_size: int | None = None


class JobUrls(BaseModel):
    get: str
    events: str
    cancel: str


class JobRecord(BaseModel):
    """What ``GET /v1/jobs/{id}`` answers."""

    id: str
    object: Literal["imagegate.job"] = "imagegate.job"
    status: JobStatus = "queued"
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    backend: str | None = None
    failovers: int = 0
    progress: JobProgress = Field(default_factory=JobProgress)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] | None = None
    urls: JobUrls
    webhook_url: str | None = None
    runs: int = 0  # how many times an instance took it (more than 1: an instance died)
    runner: str | None = None  # the instance running it (shared store: its /healthz instance)


def advance(record: JobRecord, event: Event, result: dict[str, Any] | None = None) -> JobRecord:
    """The record after ``event`` (pure); ``result`` is the answer of a ``completed``."""
    changes: dict[str, Any] = {"updated_at": event.at}
    if isinstance(event, QueuedEvent):
        changes.update(status="queued", backend=event.backend or record.backend,
                       progress=JobProgress(position=event.position, queue_size=event.queue_size,
                                            eta_s=event.eta_s))
    elif isinstance(event, StartedEvent):
        changes.update(status="running", backend=event.backend, progress=JobProgress())
    elif isinstance(event, ProgressEvent):
        changes.update(status="running", progress=JobProgress(
            fraction=event.fraction, step=event.step, steps=event.steps, eta_s=event.eta_s))
    elif isinstance(event, FailoverEvent):
        changes.update(failovers=record.failovers + 1)
    elif isinstance(event, CompletedEvent):
        progress = record.progress.model_copy(update={
            "fraction": 1.0, "eta_s": 0.0, "position": None, "step": record.progress.steps})
        changes.update(status="succeeded", backend=event.result.backend, result=result,
                       progress=progress, attempts=_trail(event.result.attempts))
    elif isinstance(event, FailedEvent):
        changes.update(status="failed", attempts=_trail(event.attempts), error={
            "kind": event.error_kind, "message": event.message,
            "deadline_exceeded": event.deadline_exceeded})
    elif isinstance(event, CancelledEvent):
        changes.update(status="cancelled", error={"kind": "cancelled", "message": event.reason})
    return record.model_copy(update=changes)


def _trail(attempts: list[Any]) -> list[dict[str, Any]]:
    return [a.model_dump(mode="json", include={"backend", "outcome", "elapsed_s", "error", "status",
                                               "hedge"}) for a in attempts]


class JobRunner:
    """Runs this instance's jobs; every state goes through ``store``."""

    def __init__(
        self, store: JobStore, service: ImageService, state: ServerState, save: SaveImages,
        webhooks: Webhooks | None = None,
    ) -> None:
        self.store, self._service, self._state, self._save = store, service, state, save
        self._webhooks = webhooks
        self._tasks: set[asyncio.Task[None]] = set()
        self._shared = getattr(store, "shared", False)
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """With a shared store: take jobs from the fleet's queue, and keep this instance's
        lease on the ones it runs."""
        if self._shared:
            store: Any = self.store
            await store.start()
            self._loops = [
                asyncio.create_task(self._consume(), name="imagegate-jobs-consume"),
                asyncio.create_task(self._keep_alive(), name="imagegate-jobs-lease"),
            ]

    async def submit(self, generation: Generation, base: str) -> JobRecord:
        """Keep the job and start it; its first record (raises JobsFull)."""
        job_id = "job_" + secrets.token_urlsafe(18)
        urls = JobUrls(get=f"{base}/v1/jobs/{job_id}", events=f"{base}/v1/jobs/{job_id}/events",
                       cancel=f"{base}/v1/jobs/{job_id}/cancel")
        record = JobRecord(id=job_id, urls=urls, webhook_url=generation.webhook_url)
        await self.store.create(job_id, record.model_dump(mode="json"))
        if self._shared:  # any instance of the fleet runs it
            spec = json.dumps({"generation": generation_json(generation), "base": base})
            await self.store.enqueue(job_id, spec)  # type: ignore[attr-defined]
        else:
            self._start(self._run(record, generation, base), job_id)
        log.info("job_submitted", job=job_id, webhook=generation.webhook_url is not None)
        return record

    def _start(self, run: Coroutine[Any, Any, None], job_id: str) -> None:
        task = asyncio.create_task(run, name=f"imagegate-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Ask for the job to be cancelled and wait (bounded) until it has ended; its record."""
        if await self.store.request_cancel(job_id):
            async with asyncio.timeout(CANCEL_WAIT_S):
                async for _ in self.store.events(job_id):
                    pass
        return await self.store.get(job_id)

    async def aclose(self) -> None:
        """Shutdown: the generations were drained or cancelled already; end the writers."""
        for task in self._loops:
            task.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._webhooks is not None:
            await self._webhooks.aclose()

    # -- one job --------------------------------------------------------------------------

    async def _run(self, record: JobRecord, generation: Generation, base: str) -> None:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        request = generation.request
        JOB_ID.set(record.id)  # the operator page shows the generation as this job's
        gen = asyncio.create_task(self._service.generate(
            request, backend=generation.backend, on_event=queue.put_nowait,
            previews=generation.partial_images > 0,
        ))
        self._state.generations.add(gen)
        gen.add_done_callback(lambda _: queue.put_nowait(None))
        cancel = asyncio.create_task(self.store.cancel_requested(record.id))

        def on_cancel(asked: asyncio.Task[None]) -> None:
            if not asked.cancelled():
                gen.cancel(f"cancelled by POST /v1/jobs/{record.id}/cancel")

        cancel.add_done_callback(on_cancel)
        try:
            while True:
                event = await queue.get()
                event = event if event is not None else _unannounced(gen)
                result = await self._answer(event, generation, base)
                record = advance(record, event, result)
                data = _data(event, result)
                final = event.type in TERMINAL
                await self._tell(record, event.type, data, final)
                if final:
                    self._observe(event)
                    break
        finally:
            cancel.cancel()
            if not gen.done():
                gen.cancel("the server is shutting down")
            await asyncio.wait([gen])
            self._state.generations.discard(gen)
            if not gen.cancelled():
                gen.exception()  # told as an event
        log.info("job_ended", job=record.id, status=record.status, backend=record.backend)
        if self._webhooks is not None and record.webhook_url:
            self._webhooks.send(record.webhook_url, record.id, record.model_dump_json().encode())

    def _observe(self, event: Event) -> None:
        """The job's generation in the metrics, as a synchronous one is counted."""
        metrics = self._state.metrics
        if isinstance(event, CompletedEvent):
            result = event.result
            metrics.observe_generation(result.backend, "ok", result.elapsed_s, result.attempts)
        elif isinstance(event, FailedEvent):
            outcome = "deadline_exceeded" if event.deadline_exceeded else "all_backends_failed"
            metrics.observe_generation(None, outcome, 0.0, event.attempts)
        else:
            metrics.observe_generation(None, "cancelled", 0.0, [])

    async def _answer(self, event: Event, generation: Generation, base: str) -> dict[str, Any] | None:
        """A completed job's answer, in the synchronous answer's shape (``url``: saved first)."""
        if not isinstance(event, CompletedEvent):
            return None
        urls = None
        if generation.response_format == "url":
            urls = await self._save(base, self._state, generation, event.result)
        return images_response(event.result, urls=urls)


    async def _tell(self, record: JobRecord, type: str, data: str, final: bool) -> None:
        """Write one event and its record. A store that is away loses a progress event (it
        says so once in the log); a final event is written again until the store takes it
        (``runs_out``: then the job is left to another instance's run)."""
        doc = record.model_dump(mode="json")
        for attempt in range(int(self._final_budget() / FINAL_RETRY_S) + 1):
            try:
                await self.store.append(record.id, type, data, doc, final=final)
                return
            except KeyError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store is away (jobstore_redis.py)
                if not final:
                    log.warning("job_event_lost", job=record.id, type=type, error=str(exc))
                    return
                if attempt == 0:
                    log.warning("job_final_event_waiting", job=record.id, error=str(exc))
                await asyncio.sleep(FINAL_RETRY_S)
        raise RuntimeError(f"the job store did not take job {record.id}'s final event")

    def _final_budget(self) -> float:
        return float(getattr(self.store, "lease_s", 0.0)) * 3

    # -- the shared queue (a shared store only) -------------------------------------------

    async def _consume(self) -> None:
        store: Any = self.store
        while True:
            room = LOCAL_JOBS - len(self._tasks)
            if room <= 0:
                await asyncio.sleep(0.1)
                continue
            try:
                deliveries = await store.take(room)
            except Exception as exc:  # noqa: BLE001 - the store is away: try again soon
                log.warning("jobs_queue_unavailable", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            for delivery in deliveries:
                self._start(self._run_delivery(delivery), delivery.job_id)

    async def _keep_alive(self) -> None:
        store: Any = self.store
        while True:
            await asyncio.sleep(store.lease_s / 3)
            with contextlib.suppress(Exception):  # a lapse lets another instance take them
                await store.keep_alive()

    async def _run_delivery(self, delivery: Any) -> None:
        """Run one job taken from the fleet's queue. The queue entry is acknowledged only once
        the job has ended (or had ended already); if the store fails on the way, the entry is
        let go instead, and any instance takes it again once its lease has lapsed."""
        store: Any = self.store
        handled = False
        try:
            await self._run_taken(delivery)
            handled = True
        except KeyError:
            handled = True  # another run wrote the result first
        except Exception as exc:  # noqa: BLE001 - the store failed: the entry stays in the queue
            log.warning("job_run_interrupted", job=delivery.job_id, error=str(exc))
        finally:
            with contextlib.suppress(Exception):
                await (store.ack(delivery) if handled else store.release(delivery))

    async def _run_taken(self, delivery: Any) -> None:
        """Run (or, past ``MAX_RUNS``, fail) the job of ``delivery``; returns once it has ended."""
        store: Any = self.store
        doc = await store.get(delivery.job_id)
        if doc is None or doc.get("status") in _ENDED.values():
            return  # expired, or ended (a run that died after the final event)
        spec = json.loads(delivery.spec)
        record = JobRecord.model_validate(doc)
        record = record.model_copy(update={"runs": record.runs + 1, "runner": store.instance})
        if record.runs > MAX_RUNS:
            message = f"the instance running it stopped {MAX_RUNS} times"
            log.warning("job_abandoned", job=record.id, runs=record.runs - 1)
            await self._tell(advance(record, FailedEvent(error_kind="server_error", message=message)),
                             "failed", json.dumps({"type": "failed", "error_kind": "server_error",
                                                   "message": message}), final=True)
            return
        await self._run(record, generation_from_json(spec["generation"]), spec["base"])


def _data(event: Event, result: dict[str, Any] | None) -> str:
    """An event's JSON for the job stream; ``completed`` carries the answer, not the model."""
    if isinstance(event, CompletedEvent):
        body = {"type": "completed", "at": event.at, "backend": event.result.backend,
                "elapsed_s": event.result.elapsed_s, "attempts": _trail(event.result.attempts),
                "result": result}
        return json.dumps(body)
    return json.dumps(event_json(event))


def _unannounced(gen: asyncio.Task[Any]) -> Event:
    """The generation ended without a terminal event (it failed before routing began)."""
    if gen.cancelled():
        return CancelledEvent(reason="cancelled before it started")
    exc = gen.exception()
    return FailedEvent(error_kind=getattr(exc, "kind", "server_error"), message=str(exc))


JOBS = web.AppKey("jobs", JobRunner)
