"""The status line while ``generate`` waits: which backend is being tried, failovers, time.

It is fed by the router's own log events (a handler on the ``imagegate`` logger), so it says
what the router does as it does it; :func:`describe` words one event (pure). Only
``Spinner.status`` is written to, so another feed (a progress event stream) can replace the
handler without touching the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TextIO

from imagegate.logging import ROOT, event_of

__all__ = ["RouterEvents", "Spinner", "describe", "spinning"]

_FRAMES = "|/-\\"


def describe(event: str, fields: dict[str, Any], failed: list[str]) -> str | None:
    """The status for one router event (``failed`` collects the backends that failed so
    far); None for events that change nothing."""
    name = fields.get("backend")
    kind = fields.get("kind")
    if event == "attempt_started":
        if kind == "hedge":
            return f"also trying {name} (hedging)"
        return f"failing over to {name} ({failed[-1]})" if failed else f"trying {name}"
    if event == "backend_attempt" and kind not in ("ok", "cancelled"):
        failed.append(f"{name}: {kind}")
        return f"{name} failed ({kind})"
    if event == "backend_retry":
        return f"retrying {name} ({kind})"
    if event == "backend_skipped" and kind != "not_tried":
        return f"skipping {name} ({fields.get('reason')})"
    if event == "waiting_for_backend":
        return f"waiting for {name} to reopen"
    return None


class Spinner:
    """``| trying a1111  1.2 s`` redrawn in place on a terminal: on every tick, and at once
    when the status changes (so no step is missed, however quick)."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self._status = "starting"
        self._clock = clock
        self._start = clock()
        self._frame = 0
        self._lock = threading.Lock()  # a backend's worker thread may log too

    @property
    def status(self) -> str:
        return self._status

    @status.setter
    def status(self, text: str) -> None:
        self._status = text
        self.draw()

    def draw(self) -> None:
        with self._lock:
            elapsed = self._clock() - self._start
            frame = _FRAMES[self._frame % len(_FRAMES)]
            self._frame += 1
            self.stream.write(f"\r\x1b[K{frame} {self._status}  {elapsed:.1f} s")
            self.stream.flush()

    def clear(self) -> None:
        with self._lock:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


class RouterEvents(logging.Handler):
    """Turns the router's log events into the spinner's status."""

    def __init__(self, spinner: Spinner) -> None:
        super().__init__(logging.DEBUG)
        self.spinner = spinner
        self.failed: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        event, fields = event_of(record)
        text = describe(event, fields, self.failed)
        if text is not None:
            self.spinner.status = text


@contextlib.asynccontextmanager
async def spinning(stream: TextIO) -> AsyncIterator[None]:
    """The status line on ``stream`` while the block runs, only when it is a terminal."""
    if not stream.isatty():
        yield
        return
    spinner = Spinner(stream)
    feed = RouterEvents(spinner)
    logger = logging.getLogger(ROOT)
    logger.addHandler(feed)

    async def tick() -> None:
        while True:
            spinner.draw()
            await asyncio.sleep(0.1)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        logger.removeHandler(feed)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        spinner.clear()
