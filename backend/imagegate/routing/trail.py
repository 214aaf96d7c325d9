"""One request's attempt trail: every try, skip and wait as it happens, logged once and told
to whoever listens (``announce.py``)."""

from __future__ import annotations

import time

from imagegate.logging import get_logger
from imagegate.models import Attempt, Outcome
from imagegate.routing.announce import Announcer
from imagegate.routing.policy import Skip

__all__ = ["Trail"]

log = get_logger(__name__)


class Trail:
    """The rows of ``ImageResult.attempts`` / ``AllBackendsFailed.attempts``, in order."""

    def __init__(self, rows: list[Attempt], tell: Announcer) -> None:
        self.attempts = rows
        self.tell = tell

    def record(
        self,
        backend: str,
        outcome: Outcome,
        *,
        started: float,
        hedge: bool,
        error: str | None = None,
        status: int | None = None,
        note: str | None = None,
    ) -> None:
        """One call's end: answered, failed with a kind, or cancelled (``note``: what was
        done to its answer, e.g. extra images dropped)."""
        elapsed = time.monotonic() - started
        self.attempts.append(
            Attempt(
                backend=backend,
                outcome=outcome,
                elapsed_s=elapsed,
                error=error,
                status=status,
                hedge=hedge,
                timings={"total_s": round(elapsed, 6)},
                note=note,
            )
        )
        self.tell.recorded(backend, outcome, error)
        emit = log.warning if outcome not in ("ok", "cancelled") else log.info
        emit("backend_attempt", backend=backend, kind=outcome, elapsed_s=round(elapsed, 4),
             hedge=hedge, error=error)

    def skipped(self, skip: Skip) -> None:
        """A candidate passed over without a call."""
        self.attempts.append(Attempt(backend=skip.state.name, outcome="skipped", error=skip.why))
        log.info("backend_skipped", backend=skip.state.name, kind=skip.kind, reason=skip.why)

    def waited(self, row: Attempt) -> None:
        self.attempts.append(row)

    def unskip(self, backend: str) -> None:
        """Every candidate was blocked: the one let through is an attempt, not a skip."""
        for i in range(len(self.attempts) - 1, -1, -1):
            if self.attempts[i].backend == backend and self.attempts[i].outcome == "skipped":
                why = self.attempts.pop(i).error
                log.info("breaker_bypassed", backend=backend, kind="forced", reason=why)
                return

    def tried(self) -> set[str]:
        return {a.backend for a in self.attempts}
