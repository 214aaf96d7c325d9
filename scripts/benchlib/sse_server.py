"""The server half of ``sse_fanout``: imagegate's real app, its job store fed by hand.

    python -m benchlib.sse_server PORT

Reads commands on stdin, answers on stdout:

- ``new JOB``: keep a job JOB with one ``started`` event (so that listeners get their
  headers at once); answers ``ready JOB``;
- ``go JOB N RATE``: append N ``progress`` events (RATE per second; 0: as fast as the loop
  lets the listeners keep up: one ``await asyncio.sleep(0)`` after each), then
  ``completed``; answers ``done T0 T1 CPU`` (monotonic start and end, CPU seconds used).

The events and records are the real ones (``advance``, ``event_json``), written through the
real ``MemoryJobStore`` and served by the real ``GET /v1/jobs/{id}/events``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from imagegate.events import CompletedEvent, Event, ProgressEvent, StartedEvent, event_json
from imagegate.logging import configure_logging
from imagegate.models import ImageResult
from imagegate.server import ServerOptions, create_app, running
from imagegate.server.jobs import JOBS, JobRecord, JobUrls, advance
from imagegate.server.jobstore import JobStore

from benchlib.common import a1111_backend, a1111_settings


async def main(port: int) -> None:
    configure_logging(level="error")
    settings = a1111_settings(a1111_backend("unused", "http://127.0.0.1:9", 0))
    app = create_app(settings, ServerOptions())
    async with running(app, port=port):
        store = app[JOBS].store
        records: dict[str, JobRecord] = {}
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().split():
            if line[0] == "new":
                job = line[1]
                urls = JobUrls(get="", events="", cancel="")
                records[job] = JobRecord(id=job, urls=urls)
                await store.create(job, records[job].model_dump(mode="json"))
                records[job] = await _append(store, records[job], StartedEvent(backend="b", attempt=1))
                print(f"ready {job}", flush=True)
            elif line[0] == "go":
                job, count, rate = line[1], int(line[2]), float(line[3])
                t0 = time.monotonic()
                cpu0 = time.process_time()
                records[job] = await _produce(store, records[job], count, rate)
                print(f"done {t0} {time.monotonic()} {time.process_time() - cpu0}", flush=True)


async def _produce(store: JobStore, record: JobRecord, count: int, rate: float) -> JobRecord:
    start = time.monotonic()
    for i in range(count):
        event = ProgressEvent(backend="b", fraction=i / count, step=i, steps=count, eta_s=1.0)
        record = await _append(store, record, event)
        if rate:
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
        else:
            await asyncio.sleep(0)
    result = ImageResult(images=[], backend="b", attempts=[], elapsed_s=1.0)
    return await _append(store, record, CompletedEvent(result=result), final=True)


async def _append(store: JobStore, record: JobRecord, event: Event, *, final: bool = False) -> JobRecord:
    record = advance(record, event)
    data = json.dumps(event_json(event))
    await store.append(record.id, event.type, data, record.model_dump(mode="json"), final=final)
    return record


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main(int(sys.argv[1])))
