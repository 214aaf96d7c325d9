"""What routing tells a listener about one request: ``started``, ``failover``, the slot queue,
and exactly one terminal event (``completed``, ``failed`` or ``cancelled``).

``RequestRun`` calls an :class:`Announcer` at four places (a lane starts, perhaps to wait for
a slot; an attempt starts; an attempt is recorded; a handshake race is decided); ``ImageService`` wraps the run with
:meth:`Announcer.around` for the terminal event. :data:`QUIET` is the announcer when nobody
listens: each call is one attribute test, so the overhead benchmark does not move.

Each attempt's task gets its own :class:`~imagegate.events.Reporter` (bound in
:meth:`Announcer.started`), so the provider progress a backend reports carries the name of
the backend that made it, also when a hedge runs two at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from imagegate.errors import AllBackendsFailed
from imagegate.events import (
    CancelledEvent,
    CompletedEvent,
    Event,
    EventSink,
    FailedEvent,
    FailoverEvent,
    QueuedEvent,
    Reporter,
    StartedEvent,
    use_reporter,
)
from imagegate.logging import get_logger
from imagegate.models import ImageResult

if TYPE_CHECKING:
    from imagegate.routing.policy import BackendState

__all__ = ["QUIET", "Announcer"]

log = get_logger(__name__)

_OUTCOMES_NOT_FAILED = ("ok", "cancelled", "skipped", "waited", "raced")


class Announcer:
    """One request's events, sent to ``sink`` (None: say nothing, cost nothing)."""

    def __init__(self, sink: EventSink | None, *, previews: bool = False) -> None:
        self._user_sink = sink
        self.enabled = sink is not None
        self.previews = previews
        self._attempts = 0
        self._primary: tuple[str, float] | None = None
        self._last_failure: tuple[str, str, str | None] | None = None  # backend, kind, error
        self._terminal = False

    # -- what RequestRun calls ----------------------------------------------------------

    def lane(self, state: BackendState, *, hedge: bool, waits: bool = False) -> None:
        """A lane starts on ``state``'s backend: after a failure, or racing the first one, a
        failover; ``waits``: every slot is busy, it queues for one (``queue = true``)."""
        if not self.enabled:
            return
        backend = state.name
        if hedge and self._primary is not None:
            first, since = self._primary
            self._send(FailoverEvent(
                from_=first, to=backend, hedge=True, backend=backend,
                reason=f"no answer from {first} after {time.monotonic() - since:.2f} s: racing it",
            ))
        elif self._last_failure is not None:
            failed, kind, error = self._last_failure
            self._last_failure = None
            self._send(FailoverEvent(
                from_=failed, to=backend, error_kind=kind, backend=backend,
                reason=f"{kind}: {error}" if error else kind,
            ))
        if self._primary is None:
            self._primary = (backend, time.monotonic())
        if waits:
            self._send(QueuedEvent(backend=backend, position=state.waiting + 1))

    def started(self, backend: str, *, hedge: bool) -> None:
        """An attempt begins in this task: say so, and bind the task's reporter."""
        if not self.enabled:
            return
        self._attempts += 1
        use_reporter(Reporter(self._send, backend=backend, previews=self.previews))
        self._send(StartedEvent(backend=backend, attempt=self._attempts, hedge=hedge))

    def recorded(self, backend: str, outcome: str, error: str | None) -> None:
        """An attempt ended: a failure is the reason of the next failover."""
        if self.enabled and outcome not in _OUTCOMES_NOT_FAILED:
            self._last_failure = (backend, outcome, error)

    def raced(self, loser: str, winner: str, why: str) -> None:
        """``winner``'s connection was ready before ``loser``'s: when the request started on
        ``loser``, it moves on to ``winner`` (a failover that waited for no time-out)."""
        if self.enabled and self._primary is not None and self._primary[0] == loser:
            self._send(FailoverEvent(from_=loser, to=winner, backend=winner, reason=why))

    # -- the terminal event -------------------------------------------------------------

    async def around(self, run: Awaitable[ImageResult]) -> ImageResult:
        """Await ``run`` and announce how it ended (a result, a failure, a cancellation)."""
        try:
            result = await run
        except AllBackendsFailed as exc:
            self.finish(FailedEvent(
                error_kind=exc.kind, message=exc.message, attempts=list(exc.attempts),
                deadline_exceeded=exc.deadline_exceeded,
            ))
            raise
        except asyncio.CancelledError as exc:  # task.cancel(msg) says why
            self.finish(CancelledEvent(reason=str(exc) or "cancelled by the caller"))
            raise
        except Exception as exc:
            self.finish(FailedEvent(error_kind=getattr(exc, "kind", "server_error"), message=str(exc)))
            raise
        self.finish(CompletedEvent(backend=result.backend, result=result))
        return result

    def finish(self, event: Event) -> None:
        """Send the terminal event (only the first one counts)."""
        if self.enabled and not self._terminal:
            self._terminal = True
            self._send(event)

    def _send(self, event: Event) -> None:
        if self._terminal and event.type not in ("completed", "failed", "cancelled"):
            return  # a late report of a cancelled lane: the listener has had the last word
        try:
            assert self._user_sink is not None
            self._user_sink(event)
        except Exception as exc:  # noqa: BLE001 - a listener's bug must not fail the image
            log.warning("event_listener_failed", kind=type(exc).__name__, error=str(exc))


QUIET = Announcer(None)
"""The announcer when nobody listens."""
