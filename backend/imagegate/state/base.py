"""What several imagegate instances share, as one small interface with two implementations:
in-process (``memory.py``, the zero-setup default: one instance shares with itself) and
Redis (``redis.py``, ``[service] state_url``).

The routing layer keeps its own breakers, slots and budget and asks this interface only where
an instance alone cannot decide:

- **breaker news**: a breaker transition made here is published; a peer's is applied locally
  (so the hot path reads a local breaker, never Redis);
- **leases**: one instance sends the half-open trial of a backend, one probes it per interval;
- **slots**: ``max_concurrency`` of a backend counted across instances, each slot a lease that
  a dead instance's expiry frees;
- **hedge budget**: hedges fleet-wide at most ``hedge_budget`` of the fleet's requests;
- **probe results**: the probing instance's result, shown by every instance.

Every method is bounded in time and never raises for trouble in the store itself: the Redis
implementation falls back to in-process answers while Redis is away (``guard.py``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from imagegate.models import BackendHealth, BreakerState

__all__ = ["BreakerNews", "SharedState"]


@dataclass(frozen=True)
class BreakerNews:
    """One breaker transition, as another instance needs to know it."""

    backend: str
    state: BreakerState
    until: float | None  # wall clock (time.time) when an open breaker lets a trial through
    reason: str
    origin: str  # the instance that decided it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BreakerNews:
        return cls(
            backend=str(doc["backend"]),
            state=doc["state"],
            until=None if doc.get("until") is None else float(doc["until"]),
            reason=str(doc.get("reason") or ""),
            origin=str(doc.get("origin") or ""),
        )


BreakerListener = Callable[[BreakerNews], None]
ProbeListener = Callable[[BackendHealth], None]


class SharedState(abc.ABC):
    """State shared by the instances of one fleet (see the module docstring)."""

    instance: str  # this instance's id, unique in the fleet
    distributed = False  # other instances may exist (a store is configured, reachable or not)

    @property
    def shared(self) -> bool:
        """True when other instances can see what this one publishes (Redis is reachable)."""
        return False

    async def start(self, on_breaker: BreakerListener, on_probe: ProbeListener) -> None:
        """Begin listening to peers; their news reaches the two callbacks (never our own)."""

    def begin_close(self) -> None:
        """The instance is shutting down: a store call that fails from now on is no outage."""

    async def aclose(self) -> None:
        """Stop listening; give back every lease and slot this instance holds."""

    # -- breakers -------------------------------------------------------------------------

    @abc.abstractmethod
    async def publish_breaker(self, news: BreakerNews) -> None:
        """Tell the fleet about a transition made here."""

    @abc.abstractmethod
    async def breakers(self) -> dict[str, BreakerNews]:
        """Every breaker the fleet holds open (or disabled) now: for a new instance and after
        the store comes back."""

    # -- leases ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def lease(self, key: str, ttl_s: float) -> bool:
        """Take ``key`` for ``ttl_s`` seconds unless another instance holds it."""

    @abc.abstractmethod
    async def release(self, key: str) -> None:
        """Give ``key`` back (only if this instance holds it)."""

    # -- slots ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def acquire_slot(self, backend: str, limit: int) -> str | None:
        """A slot of ``backend`` if fewer than ``limit`` are held fleet-wide: its token, or
        None. Held slots are kept alive while this instance lives."""

    @abc.abstractmethod
    async def release_slot(self, backend: str, token: str) -> None:
        """Give a slot back; waiters for ``backend`` are woken."""

    @abc.abstractmethod
    async def slot_freed(self, backend: str, timeout: float) -> None:
        """Return when a slot of ``backend`` may have been freed, or after ``timeout``."""

    # -- hedge budget ---------------------------------------------------------------------

    @abc.abstractmethod
    def hedge_earn(self, ratio: float) -> None:
        """A request arrived: the fleet earns ``ratio`` of a hedge (no I/O here)."""

    @abc.abstractmethod
    async def hedge_spend(self, burst: float) -> bool:
        """Spend one hedge from the fleet's budget (capped at ``burst``), if there is one."""

    # -- probes ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def publish_probe(self, health: BackendHealth) -> None:
        """Tell the fleet what the probe of one backend found."""
