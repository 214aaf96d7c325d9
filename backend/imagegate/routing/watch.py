"""Watching the whole service (the operator page): which backend changed, every request's events.

A :class:`Watcher` is given to :meth:`ImageService.watch`. The service tells it, without
waiting on it:

- ``backend_changed(name)`` after a breaker transition and after a probe of ``name``
  (what changed is read back from ``ImageService.health()``: the call only says "look");
- ``request_started(request, backend)`` as each ``generate()`` begins: the watcher answers
  an :data:`~imagegate.events.EventSink` for that request's events, or None to stay out of it
  (nobody is watching now: the request then costs what an unwatched one costs).

A watched request hears previews when the watcher's ``previews`` is true; a caller that did
not ask for previews still gets none (:func:`fan_out`).
"""

from __future__ import annotations

from typing import Protocol

from imagegate.events import Event, EventSink
from imagegate.logging import get_logger
from imagegate.models import ImageRequest

__all__ = ["Watcher", "fan_out"]

log = get_logger(__name__)


class Watcher(Protocol):
    """Someone who watches every backend and request of one service."""

    previews: bool

    def backend_changed(self, name: str) -> None:
        """``name``'s breaker or last probe changed (called on the event loop; must not block)."""

    def request_started(self, request: ImageRequest, backend: str | None) -> EventSink | None:
        """A request begins (``backend``: the one it is pinned to): where its events go, or None."""


def fan_out(caller: EventSink | None, caller_previews: bool, watcher: EventSink) -> EventSink:
    """One sink for both: the caller first (previews only if it asked), then the watcher,
    whose failure is logged and never reaches the request or the caller."""

    def sink(event: Event) -> None:
        try:
            if caller is not None and (caller_previews or event.type != "preview"):
                caller(event)
        finally:
            try:
                watcher(event)
            except Exception as exc:  # noqa: BLE001 - a watcher's bug must not fail the image
                log.warning("watcher_failed", kind=type(exc).__name__, error=str(exc))

    return sink
