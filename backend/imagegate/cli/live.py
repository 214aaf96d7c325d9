"""``imagegate generate`` while it waits: one live line on a terminal, or the events as JSON.

On a terminal (stderr), one line is rewritten in place as the request's events come::

    ⠹ trying flux · queued 3rd of 5 · ETA 20 s · 12.4 s
    ⠼ failing over to a1111 (flux: handshake_timeout) · 42% (step 21/50) · ETA 3 s · 14.0 s

``--events`` prints every event on stdout as one JSON line (``imagegate.events``' JSON form),
before the usual result; ``--json`` alone is unchanged. Nothing listens otherwise, so the
request costs what it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TextIO

from imagegate.events import (
    Event,
    EventSink,
    FailoverEvent,
    ProgressEvent,
    QueuedEvent,
    StartedEvent,
    event_json,
)

__all__ = ["LiveLine", "Status", "describe", "listener", "ordinal"]

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
TICK_S = 0.1


@dataclass
class Status:
    """What the line shows."""

    backend: str | None = None
    position: int | None = None
    queue_size: int | None = None
    fraction: float | None = None
    step: int | None = None
    steps: int | None = None
    eta_s: float | None = None
    failovers: int = 0
    headline: str | None = None  # the last failover, in words

    def update(self, event: Event) -> None:
        if isinstance(event, StartedEvent):
            self.backend, self.position, self.fraction, self.step, self.steps, self.eta_s = (
                event.backend, None, None, None, None, None)
        elif isinstance(event, QueuedEvent):
            self.position, self.queue_size, self.eta_s = event.position, event.queue_size, event.eta_s
            self.backend = event.backend or self.backend
        elif isinstance(event, ProgressEvent):
            self.position = None
            self.fraction, self.step, self.steps, self.eta_s = (
                event.fraction, event.step, event.steps, event.eta_s)
        elif isinstance(event, FailoverEvent):
            self.failovers += 1
            why = event.error_kind or event.reason
            self.headline = (
                f"also trying {event.to} (hedging)" if event.hedge
                else f"failing over to {event.to} ({event.from_}: {why})"
            )


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def describe(status: Status, elapsed_s: float) -> str:
    """The line, without the spinner (pure)."""
    if status.headline is not None:
        parts = [status.headline]
    else:
        parts = [f"trying {status.backend}" if status.backend else "starting"]
    if status.position is not None:
        of = f" of {status.queue_size}" if status.queue_size else ""
        parts.append(f"queued {ordinal(status.position)}{of}")
    elif status.fraction is not None:
        steps = f" (step {status.step}/{status.steps})" if status.step is not None and status.steps else ""
        parts.append(f"{status.fraction:.0%}{steps}")
    if status.eta_s is not None:
        parts.append(f"ETA {status.eta_s:.0f} s")
    if status.failovers > 1:
        parts.append(f"{status.failovers} failovers")
    parts.append(f"{elapsed_s:.1f} s")
    return " · ".join(parts)


class LiveLine:
    """The live line on ``stream``: an event sink, redrawn on each event and every TICK_S."""

    def __init__(self, stream: TextIO, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self._clock = stream, clock
        self.status = Status()
        self._t0 = clock()
        self._frame = 0
        self._width = 0

    def __call__(self, event: Event) -> None:
        self.status.update(event)
        self.draw()

    def draw(self) -> None:
        text = f"{SPINNER[self._frame % len(SPINNER)]} {describe(self.status, self._clock() - self._t0)}"
        self._frame += 1
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        self.stream.write("\r" + " " * self._width + "\r")
        self.stream.flush()


@contextlib.asynccontextmanager
async def listener(stream: TextIO, *, events: bool) -> AsyncIterator[EventSink | None]:
    """The event sink for one ``generate``: the live line when ``stream`` is a terminal, the
    JSON lines with ``events``, both, or None (nobody listens)."""
    line = LiveLine(stream) if stream.isatty() else None
    if line is None and not events:
        yield None
        return

    def sink(event: Event) -> None:
        if events:
            print(json.dumps(event_json(event)), file=sys.stdout, flush=True)
        if line is not None:
            line(event)

    ticker = asyncio.create_task(_tick(line)) if line is not None else None
    try:
        yield sink
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        if line is not None:
            line.clear()


async def _tick(line: LiveLine | None) -> None:
    while line is not None:
        line.draw()
        await asyncio.sleep(TICK_S)
