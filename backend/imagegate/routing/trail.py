"""One request's attempt trail: every try, skip, wait and lost handshake race as it happens,
logged once and told to whoever listens (``announce.py``); and the failure that carries it
when no backend produced an image."""

from __future__ import annotations

import time
from collections.abc import Iterable

from imagegate.errors import AllBackendsFailed
from imagegate.logging import get_logger
from imagegate.models import Attempt, Outcome
from imagegate.routing.announce import Announcer
from imagegate.routing.policy import BackendState, Skip

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
        handshake_s: float | None = None,
    ) -> None:
        """One call's end: answered, failed with a kind, or cancelled (``note``: what was
        done to its answer, e.g. extra images dropped; ``handshake_s``: how long it took to
        connect, when it connected before sending: ``race.py``)."""
        elapsed = time.monotonic() - started
        timings = {"total_s": round(elapsed, 6)}
        if handshake_s is not None:
            timings["handshake_s"] = round(handshake_s, 6)
        self.attempts.append(
            Attempt(
                backend=backend,
                outcome=outcome,
                elapsed_s=elapsed,
                error=error,
                status=status,
                hedge=hedge,
                timings=timings,
                note=note,
            )
        )
        self.tell.recorded(backend, outcome, error)
        emit = log.warning if outcome not in ("ok", "cancelled", "raced") else log.info
        emit("backend_attempt", backend=backend, kind=outcome, elapsed_s=round(elapsed, 4),
             hedge=hedge, error=error)

    def raced(
        self,
        backend: str,
        *,
        connecting_s: float,
        connected: bool,
        winner: str,
        winner_handshake_s: float,
        race_after_s: float,
    ) -> None:
        """``backend`` lost a handshake race to ``winner``: nothing was sent to it."""
        state = f"connected in {connecting_s:.3f} s" if connected else f"still connecting after {connecting_s:.3f} s"
        why = (f"{winner} was ready first (handshake {winner_handshake_s:.3f} s) and got the request; "
               f"{backend} was {state} (race after {race_after_s:.3f} s)")
        timings = {"handshake_s": round(connecting_s, 6), "winner_handshake_s": round(winner_handshake_s, 6),
                   "race_after_s": round(race_after_s, 6)}
        self.attempts.append(Attempt(backend=backend, outcome="raced", elapsed_s=connecting_s, error=why,
                                     timings=timings))
        self.tell.raced(backend, winner, why)
        log.info("backend_raced", backend=backend, kind="raced", winner=winner,
                 handshake_s=round(connecting_s, 4), connected=connected,
                 winner_handshake_s=round(winner_handshake_s, 4))

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

    def exhausted(
        self, untried: Iterable[BackendState], expired: bool, max_attempts: int, started: float
    ) -> AllBackendsFailed:
        """No backend produced an image: the candidates never reached are listed as skipped
        (``not_tried``), and the failure carries the whole trail."""
        tried = self.tried()
        why = "deadline spent" if expired else f"max_attempts ({max_attempts}) reached"
        for st in untried:
            if st.name not in tried:
                self.skipped(Skip(st, why, "not_tried"))
        elapsed = time.monotonic() - started
        log.warning("all_backends_failed", kind="all_backends_failed", attempts=len(self.attempts),
                    deadline_exceeded=expired, elapsed_s=round(elapsed, 4))
        message = "no backend produced an image" + (" before the deadline" if expired else "")
        return AllBackendsFailed(message, attempts=self.attempts, deadline_exceeded=expired)
