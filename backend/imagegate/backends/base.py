"""The backend contract: what every provider module implements, and nothing else.

A backend is one small class: ``generate(request, deadline=...)`` makes one provider call and
raises only ``imagegate.errors`` types; ``probe()`` is a cheap health check that spends no
credits; ``aclose()`` releases what the backend owns. It is generic in its settings class, so
``self.settings`` is that kind's own typed settings. The HTTP machinery most backends share
is in ``http.py``; image checks in ``images.py``.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from typing import ClassVar, Generic, TypeVar

from imagegate.config import BackendSettings, Timeouts
from imagegate.config.redact import Redactor
from imagegate.errors import BackendError
from imagegate.models import BackendHealth, Deadline, GeneratedImage, ImageRequest

__all__ = ["ImageBackend", "SettingsT"]

SettingsT = TypeVar("SettingsT", bound=BackendSettings)


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

    @abc.abstractmethod
    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        """One provider call; raises only imagegate.errors types."""

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
