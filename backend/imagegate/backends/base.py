"""The backend contract: what every provider module implements, and nothing else.

A backend is one small class: ``generate(request, deadline=...)`` makes one provider call and
raises only ``imagegate.errors`` types; ``probe()`` is a cheap health check that spends no
credits; ``capabilities`` says what it accepts (built in, or discovered by its probes; the
router fits each request to it before calling); ``aclose()`` releases what the backend owns. It is generic in its settings class, so
``self.settings`` is that kind's own typed settings. The HTTP machinery most backends share
is in ``http.py``; image checks in ``images.py``.

Progress is optional and needs no change to ``generate``'s signature: a backend whose provider
reports queue position, steps or previews tells ``self.reporter`` (the current attempt's
:class:`~imagegate.events.Reporter`, silent when nobody listens); one that does not is
still seen to start and end, because routing emits those events.

Connecting is separate from generating, so that routing can race handshakes and send the
(billable) generation once: ``connect(deadline)`` makes the backend ready to take a request
without sending one and says how long that took (:class:`ConnectInfo`). ``HttpBackend``
opens a pooled keep-alive connection that the generation then reuses; the Space backend
builds its gradio client. A backend without such a step is ready at once (the default).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from imagegate.capabilities import Capabilities
from imagegate.config import BackendSettings, Timeouts
from imagegate.config.redact import Redactor
from imagegate.errors import BackendError
from imagegate.events import Reporter, current_reporter
from imagegate.models import BackendHealth, Deadline, GeneratedImage, ImageRequest

__all__ = ["ConnectInfo", "ImageBackend", "SettingsT"]

SettingsT = TypeVar("SettingsT", bound=BackendSettings)


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class ConnectInfo:
    """A backend is ready to take a request: how long getting there took (``handshake_s``),
    whether a ready connection was there already (``reused``: no handshake at all), and the
    parts measured on the way (``dns_s``, ``connect_s``). ``release()`` hands the connection
    over: into the pool, where the request sent right after it takes it (or the next one);
    whoever gets a ConnectInfo calls it exactly when it is about to send, or gives up."""

    handshake_s: float = 0.0
    reused: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    release: Callable[[], None] = field(default=_nothing, repr=False, compare=False)


class ImageBackend(abc.ABC, Generic[SettingsT]):
    """One provider behind the common contract."""

    kind: ClassVar[str]

    def __init__(self, settings: SettingsT, *, secrets: Mapping[str, str]) -> None:
        self.settings = settings
        self._secrets = dict(secrets)
        # masks this backend's secrets, in every form, in whatever a provider sends back
        self.redactor = Redactor.for_secrets(self._secrets)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def timeouts(self) -> Timeouts:
        return self.settings.timeouts

    @property
    def capabilities(self) -> Capabilities | None:
        """What this backend accepts now (None: unknown; the router then sends as asked)."""
        return None

    def capabilities_for(self, request: ImageRequest) -> Capabilities | None:
        """What it accepts for ``request`` (a request may name a model with other rules)."""
        return self.capabilities

    @property
    def reporter(self) -> Reporter:
        """Where the running attempt's progress goes; check ``reporter.listening`` before
        polling a provider for progress (nobody may be listening)."""
        return current_reporter()

    @abc.abstractmethod
    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        """One provider call; raises only imagegate.errors types."""

    async def connect(self, deadline: Deadline) -> ConnectInfo:
        """Make this backend ready to take a request, sending nothing billable (TCP + TLS,
        or a client set up); raises only imagegate.errors types. Default: no such step."""
        return ConnectInfo()

    async def probe(self, *, timeout: float = 5.0) -> BackendHealth:
        """Run the cheap health check and report it; never raises for a backend failure."""
        timings: dict[str, float] = {}
        start = time.monotonic()
        try:
            detail = await self._probe(Deadline.after(timeout), timings)
        except BackendError as exc:
            timings.setdefault("total_s", time.monotonic() - start)
            return BackendHealth(
                name=self.name,
                kind=self.kind,
                ok=False,
                last_probe_at=time.time(),
                last_error_kind=exc.kind,
                last_error=self.redactor.text(str(exc)),
                timings=timings,
            )
        timings.setdefault("total_s", time.monotonic() - start)
        return BackendHealth(
            name=self.name,
            kind=self.kind,
            ok=True,
            last_probe_at=time.time(),
            detail=self.redactor.text(detail),
            timings=timings,
        )

    @abc.abstractmethod
    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        """The provider-specific check: return a short detail, raise a BackendError on failure."""

    async def aclose(self) -> None:
        """Release what this backend owns (the shared HTTP session is not its own)."""
