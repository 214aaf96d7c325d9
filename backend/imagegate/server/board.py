"""The operator page's live feed: one board per app, fed by the service, read by the pages.

The :class:`Board` is the service's :class:`~imagegate.routing.watch.Watcher`. Nothing is
polled from the browser: each open page holds one ``GET /v1/ui/live`` stream (SSE) and the
board pushes to it.

- **Backends**: a breaker transition or a probe result wakes the board's one pump task at
  once; the pump reads ``ImageService.health()`` (no network) and sends only the rows that
  changed. It also looks once a second while a page is open, for what changes without an
  event (an open breaker whose cool-down ran out reads half-open; in-flight counts). A burst
  of changes is one read: the pump rests ``MIN_GAP_S`` between reads.
- **Requests**: while a page is open, every generation is watched (a request that began
  while none was open is not shown). Status changes and failover steps go out at once,
  progress at most every ``PROGRESS_GAP_S`` per request, previews every ``PREVIEW_GAP_S``.
  An ended request stays ``LINGER_S`` on the page, then a ``gone`` event removes it.
- **Bounded**: at most ``MAX_LISTENERS`` pages (a further one is refused) and ``MAX_LIVE``
  requests; each page's unsent frames are capped (``Listener.limit``): a page that does not
  read is cut off, and its reconnect starts from a fresh snapshot.

The frames (SSE, ``sse.py``): ``board`` (the snapshot: every backend row and live request,
first on every stream), ``backend`` (one row), ``request`` (one live request), ``preview``
(``{"id", "src"}``, a data: URL) and ``gone`` (``{"id"}``). Each carries the server's ``now``
(unix seconds) so that a page counts down against the server's clock, not its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import structlog

from imagegate.capabilities import Capabilities
from imagegate.events import TERMINAL, Event, EventSink, PreviewEvent
from imagegate.logging import get_logger
from imagegate.models import BackendHealth, ImageRequest
from imagegate.routing import ImageService
from imagegate.server.live import JOB_ID, LiveRequest
from imagegate.server.sse import event as sse_event

__all__ = ["Board", "BoardFull", "Listener", "backend_row", "capability_lines"]

log = get_logger(__name__)

MAX_LISTENERS = 32
MAX_LIVE = 200
LISTENER_FRAMES = 512
LISTENER_BYTES = 8 * 1024 * 1024  # previews are big: a page's unsent frames are capped in bytes too
TICK_S = 1.0
MIN_GAP_S = 0.05
PROGRESS_GAP_S = 0.25
PREVIEW_GAP_S = 0.5
PREVIEW_MAX_BYTES = 512 * 1024
LINGER_S = 30.0
_PREVIEW_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


class BoardFull(Exception):
    """Every listener slot is taken."""


class Listener:
    """One open page's frames not yet written (at most ``limit`` frames and ``max_bytes``
    bytes, else it is cut off)."""

    def __init__(self, limit: int = LISTENER_FRAMES, max_bytes: int = LISTENER_BYTES) -> None:
        self.limit, self.max_bytes = limit, max_bytes
        self.ended = False
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()

    def push(self, frame: bytes) -> None:
        if self.ended:
            return
        if len(self._frames) >= self.limit or self._bytes + len(frame) > self.max_bytes:
            log.warning("ui_listener_too_slow", frames=len(self._frames), bytes=self._bytes)
            self.end()
            return
        self._frames.append(frame)
        self._bytes += len(frame)
        self._ready.set()

    def end(self) -> None:
        self.ended = True
        self._ready.set()

    async def take(self, timeout: float) -> list[bytes] | None:
        """The frames waiting (``[]``: none within ``timeout``), or None once ended."""
        if not self._frames and not self.ended:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
        self._ready.clear()
        if self.ended:
            return None
        frames = list(self._frames)
        self._frames.clear()
        self._bytes = 0
        return frames


class Board:
    """What the operator pages see (see the module docstring)."""

    previews = True  # watched requests ask their backend for previews

    def __init__(
        self, service: ImageService, *, clock: Callable[[], float] = time.time,
        max_listeners: int = MAX_LISTENERS, tick_s: float = TICK_S, linger_s: float = LINGER_S,
    ) -> None:
        self._service = service
        self._clock = clock
        self._max_listeners = max_listeners
        self._tick_s, self._linger_s = tick_s, linger_s
        self._listeners: set[Listener] = set()
        self._rows: dict[str, dict[str, Any]] = {}
        self._live: OrderedDict[str, LiveRequest] = OrderedDict()
        self._sent_at: dict[str, float] = {}  # request id -> when progress was last sent
        self._preview_at: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._numbers = itertools.count(1)
        self._pump: asyncio.Task[None] | None = None

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        self._rows = {row["name"]: row for row in self._read_rows()}
        self._pump = asyncio.get_running_loop().create_task(self._run(), name="imagegate-ui-board")
        self._service.watch(self)

    def close_listeners(self) -> None:
        """Shutdown: every page's stream ends (a reconnect finds the server gone or back)."""
        for listener in list(self._listeners):
            listener.end()
        self._listeners.clear()

    async def aclose(self) -> None:
        self._service.watch(None)
        self.close_listeners()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None

    # -- what a page reads ------------------------------------------------------------------

    def snapshot(self, *, fresh: bool = False) -> dict[str, Any]:
        """Every backend row and live request (``fresh``: the rows read again now)."""
        if fresh:
            self._refresh_rows(send=bool(self._listeners))
        return {
            "now": self._clock(),
            "backends": list(self._rows.values()),
            "requests": [dict(live.public(), preview=live.preview) for live in self._live.values()],
        }

    def listen(self) -> tuple[Listener, bytes]:
        """A new listener and its first frame (the snapshot), with nothing lost in between."""
        if len(self._listeners) >= self._max_listeners:
            raise BoardFull(f"{self._max_listeners} pages are open already")
        snapshot = self.snapshot(fresh=True)
        listener = Listener()
        self._listeners.add(listener)
        return listener, self._frame("board", snapshot)

    def forget(self, listener: Listener) -> None:
        listener.end()
        self._listeners.discard(listener)

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    # -- the Watcher protocol ---------------------------------------------------------------

    def backend_changed(self, name: str) -> None:
        self._wake.set()

    def request_started(self, request: ImageRequest, backend: str | None) -> EventSink | None:
        if not self._listeners or (len(self._live) >= MAX_LIVE and not self._evict_one()):
            return None
        job_id = JOB_ID.get()
        rid = job_id or structlog.contextvars.get_contextvars().get("request_id") or "gen"
        if rid in self._live or rid == "gen":
            rid = f"{rid}-{next(self._numbers)}"
        live = LiveRequest.begin(str(rid), job_id, request, backend, now=self._clock())
        self._live[live.id] = live
        self._broadcast("request", live.public())

        def sink(event: Event) -> None:
            self._on_event(live, event)

        return sink

    def _on_event(self, live: LiveRequest, event: Event) -> None:
        if self._live.get(live.id) is not live:
            return  # evicted
        if isinstance(event, PreviewEvent):
            self._on_preview(live, event)
            return
        now = self._clock()
        changed = live.apply(event, now=now)
        if live.ended:
            live.preview = None  # kept only while it runs: memory follows what is in flight
        due = now - self._sent_at.get(live.id, 0.0) >= PROGRESS_GAP_S
        if changed or due or event.type in TERMINAL:
            self._sent_at[live.id] = now
            self._broadcast("request", live.public())
        if changed or event.type in TERMINAL:
            self._wake.set()  # a backend's in-flight count moved

    def _on_preview(self, live: LiveRequest, event: PreviewEvent) -> None:
        now = self._clock()
        mime = _PREVIEW_TYPES.get(event.format.lower())
        if mime is None or len(event.image) > PREVIEW_MAX_BYTES or live.ended:
            return
        if now - self._preview_at.get(live.id, 0.0) < PREVIEW_GAP_S:
            return
        self._preview_at[live.id] = now
        live.preview = f"data:{mime};base64,{base64.b64encode(event.image).decode('ascii')}"
        self._broadcast("preview", {"id": live.id, "src": live.preview})

    # -- the pump ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tick_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if self._listeners:
                    self._refresh_rows(send=True)
                self._expire()
            except Exception as exc:  # noqa: BLE001 - the page's feed must outlive a bug
                log.warning("ui_board_failed", kind=type(exc).__name__, error=str(exc))
            await asyncio.sleep(MIN_GAP_S)

    def _read_rows(self) -> list[dict[str, Any]]:
        return [backend_row(h) for h in self._service.health()]

    def _refresh_rows(self, *, send: bool) -> None:
        for row in self._read_rows():
            if self._rows.get(row["name"]) != row:
                self._rows[row["name"]] = row
                if send:
                    self._broadcast("backend", row)

    def _expire(self) -> None:
        """Drop what ended ``linger_s`` ago, and (a safety net: every request ends with a
        terminal event) what has outlived the deadline by ``linger_s``."""
        now = self._clock()
        too_old = self._service.settings.service.deadline_s + self._linger_s
        for live in list(self._live.values()):
            if live.ended_at is not None:
                if now - live.ended_at >= self._linger_s:
                    self._drop(live.id)
            elif now - live.started_at >= too_old:
                self._drop(live.id)

    def _evict_one(self) -> bool:
        """Make room by dropping the oldest ended request; False when all still run."""
        for live in self._live.values():
            if live.ended:
                self._drop(live.id)
                return True
        return False

    def _drop(self, rid: str) -> None:
        self._live.pop(rid, None)
        self._sent_at.pop(rid, None)
        self._preview_at.pop(rid, None)
        self._broadcast("gone", {"id": rid})

    def _broadcast(self, name: str, data: dict[str, Any]) -> None:
        if not self._listeners:
            return
        frame = self._frame(name, data)
        for listener in list(self._listeners):
            listener.push(frame)
            if listener.ended:
                self._listeners.discard(listener)

    def _frame(self, name: str, data: dict[str, Any]) -> bytes:
        return sse_event(name, json.dumps({"now": round(self._clock(), 3), **data}))


def backend_row(health: BackendHealth) -> dict[str, Any]:
    """One backend card's data: the health row, ``open_until`` to 0.1 s (so that an unchanged
    breaker reads as unchanged), the capabilities in a few lines."""
    row = health.model_dump(mode="json", exclude={"capabilities"})
    if row["open_until"] is not None:
        row["open_until"] = round(row["open_until"], 1)
    row["capabilities"] = capability_lines(health.capabilities)
    return row


def capability_lines(caps: Capabilities | None) -> list[str]:
    """What a backend accepts, in a few short lines (the full table: ``/v1/backends``)."""
    if caps is None:
        return []
    lines = [f"sizes: {caps.sizes_text()}"]
    for name in ("steps", "guidance_scale"):
        span = getattr(caps, name)
        if span is not None and name in caps.takes:
            lines.append(f"{name.replace('_', ' ')}: {span.describe()}")
    if caps.max_n is not None:
        lines.append(f"images per call: up to {caps.max_n}")
    if caps.formats:
        lines.append("formats: " + ", ".join(caps.formats))
    for name, values in (("models", caps.models), ("samplers", caps.samplers)):
        if values:
            shown = ", ".join(values[:3]) + (f" (+{len(values) - 3})" if len(values) > 3 else "")
            lines.append(f"{name}: {shown}")
    lines.append(f"source: {caps.source}")
    return lines
