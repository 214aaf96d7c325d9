"""The demo's narrator: the router's own structlog events, told as sentences as they happen.

``imagegate demo`` installs a :class:`Narrator` as the only structlog processor while its
requests run, so every line it prints is an event the real router, breakers and backends
emitted (``attempt_started``, ``backend_attempt``, ``breaker_transition``, ``backend_skipped``,
``hedge_started``, ``race_started``, ``backend_raced``, ``race_loser_failed``,
``race_loser_connected``, ``backend_retry``, ``all_backends_failed``, ``backend_probed``). Nothing here
decides anything: it only words what happened. Events it has no sentence for are dropped, but
warnings and errors are still shown as they were logged.
"""

from __future__ import annotations

import contextlib
import logging
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from imagegate.logging import structlog_configured

__all__ = ["Narrator"]

WIDTH = 100

_WHY = {
    "handshake_timeout": "TCP connected, but the TLS handshake never completed",
    "connect_failed": "the connection failed",
    "server_error": "the provider answered with a server error",
    "generation_timeout": "no answer within the read budget",
}


class Narrator:
    """A structlog processor that prints ``[ t s] mark  sentence`` lines on ``stream``."""

    def __init__(
        self,
        stream: TextIO,
        *,
        describe: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self._describe = dict(describe or {})
        self._clock = clock
        self._t0 = clock()
        self._failed: list[str] = []
        self._lock = threading.Lock()  # gradio_client's worker threads may log too

    # -- plain output -------------------------------------------------------------------

    def say(self, text: str, mark: str = " ") -> None:
        """One narrated line, stamped with the seconds since the demo started."""
        stamp = f"[{self._clock() - self._t0:5.2f} s] {mark:<2} "
        line = textwrap.fill(
            text, width=WIDTH, initial_indent=stamp, subsequent_indent=" " * len(stamp),
            break_long_words=False, break_on_hyphens=False,
        )
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def heading(self, text: str) -> None:
        with self._lock:
            self.stream.write(f"\n{text}\n")
            self.stream.flush()

    def new_request(self, title: str) -> None:
        """A request begins: print its title and forget the previous request's failures."""
        self._failed = []
        self.heading(title)

    # -- the structlog hook -------------------------------------------------------------

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        handler = getattr(self, f"_on_{event.get('event')}", None)
        if handler is not None:
            handler(dict(event))
        elif method in ("warning", "error", "exception", "critical"):
            facts = " ".join(f"{k}={v}" for k, v in event.items() if k != "event")
            self.say(f"{event.get('event')} {facts}", "!")
        raise structlog.DropEvent

    @contextlib.contextmanager
    def installed(self) -> Iterator[Narrator]:
        """Route every structlog event through this narrator; restore the old set-up after."""
        with structlog_configured(
            processors=[self],
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
            logger_factory=structlog.PrintLoggerFactory(file=self.stream),
            cache_logger_on_first_use=False,
        ):
            yield self

    # -- one method per router event ----------------------------------------------------

    def _on_attempt_started(self, e: dict[str, Any]) -> None:
        name = e.get("backend", "?")
        if e.get("kind") in ("hedge", "race"):
            return  # hedge_started / race_started tell it, with the reason
        if e.get("permit") == "forced":
            self.say(f"every breaker is open: {name} is tried anyway (its cool-down ends first)", "->")
        elif self._failed:
            self.say(f"failover: the same request goes to {name} now", "->")
        else:
            extra = f" ({self._describe[name]})" if name in self._describe else ""
            self.say(f"trying {name}{extra}", "->")

    def _on_backend_attempt(self, e: dict[str, Any]) -> None:
        name, outcome = e.get("backend", "?"), e.get("kind")
        ms = _ms(e.get("elapsed_s"))
        if outcome == "ok":
            after = f", after failing over from {', '.join(self._failed)}" if self._failed else ""
            hedge = " (the hedge won the race)" if e.get("hedge") else ""
            self.say(f"{name} answered in {ms}{hedge}{after}", "ok")
        elif outcome == "cancelled":
            self.say(f"{name}: its attempt was cancelled after {ms} ({e.get('error')})", "--")
        else:
            self._failed.append(name)
            if outcome == "handshake_timeout":
                self.say(f"{name}: handshake timeout after {ms}: {_WHY[outcome]}", "x")
            else:
                self.say(f"{name}: {outcome} after {ms}: {e.get('error')}", "x")

    def _on_breaker_transition(self, e: dict[str, Any]) -> None:
        name, change = e.get("backend", "?"), str(e.get("kind", ""))
        old, _, new = change.partition("_to_")
        if new == "open" and old != "open":
            self.say(
                f"circuit breaker of {name} opened for {e.get('open_for_s'):g} s ({e.get('reason')}):"
                f" requests skip {name} until a probe or a trial request finds it working",
                "!",
            )
        else:
            self.say(f"circuit breaker of {name}: {old} -> {new} ({e.get('reason')})", "!")

    def _on_backend_skipped(self, e: dict[str, Any]) -> None:
        name, why = e.get("backend", "?"), e.get("reason")
        if e.get("kind") == "not_tried":
            self.say(f"{name}: not tried ({why})", "--")
        else:
            self.say(f"{name} skipped at once, no connection attempted: {why}", ">>")

    def _on_hedge_started(self, e: dict[str, Any]) -> None:
        self.say(
            f"{e.get('primary')} has not answered after {_ms(e.get('after_s'))}:"
            f" hedging, the same request goes to {e.get('backend')} as well",
            "->",
        )

    def _on_race_started(self, e: dict[str, Any]) -> None:
        self.say(
            f"{e.get('chosen')} is not connected after {_ms(e.get('after_s'))}: racing its handshake,"
            f" {e.get('backend')} connects too (the first one ready gets the request)",
            "->",
        )

    def _on_backend_raced(self, e: dict[str, Any]) -> None:
        name, winner = e.get("backend", "?"), e.get("winner", "?")
        self.say(
            f"{winner} connected first ({_ms(e.get('winner_handshake_s'))}): the request goes to it;"
            f" nothing was sent to {name}, whose handshake goes on in the background",
            "->",
        )

    def _on_race_loser_failed(self, e: dict[str, Any]) -> None:
        name, kind = e.get("backend", "?"), str(e.get("kind"))
        why = _WHY.get(kind) or e.get("error")
        self.say(f"{name}: {kind.replace('_', ' ')} after {_ms(e.get('elapsed_s'))}, in the background"
                 f" (nothing had been sent to it): {why}", "x")

    def _on_race_loser_connected(self, e: dict[str, Any]) -> None:
        self.say(f"{e.get('backend')}: its handshake completed in the background"
                 f" ({_ms(e.get('handshake_s'))}); the connection waits in the pool", "..")

    def _on_waiting_for_backend(self, e: dict[str, Any]) -> None:
        self.say(
            f"every other backend is out: waiting {_ms(e.get('wait_s'))} for {e.get('backend')}"
            f" to reopen ({e.get('reason')})",
            "..",
        )

    def _on_backend_retry(self, e: dict[str, Any]) -> None:
        self.say(f"{e.get('backend')}: retrying in {_ms(e.get('after_s'))} ({e.get('kind')})", "->")

    def _on_all_backends_failed(self, e: dict[str, Any]) -> None:
        self.say(
            f"no backend produced an image ({e.get('attempts')} entries in the trail,"
            f" {e.get('elapsed_s'):.2f} s)",
            "x",
        )

    def _on_backend_probed(self, e: dict[str, Any]) -> None:
        self.say(f"background probe of {e.get('backend')}: {e.get('kind')} (breaker {e.get('state')})", "..")


def _ms(seconds: Any) -> str:
    try:
        return f"{float(seconds) * 1000:.0f} ms"
    except (TypeError, ValueError):
        return "? ms"
