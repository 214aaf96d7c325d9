"""State shared by several imagegate instances: breakers, leases, fleet-wide slots, the hedge
budget, probe results (``base.py``); in-process by default (``memory.py``), in Redis with
``[service] state_url`` (``redis.py``, behind ``guard.py``)."""

from __future__ import annotations

import os

from imagegate.config import ServiceSettings
from imagegate.state.base import BreakerNews, SharedState
from imagegate.state.memory import MemoryState
from imagegate.state.redis import RedisState

__all__ = ["BreakerNews", "MemoryState", "RedisState", "SharedState", "open_state"]


def open_state(service: ServiceSettings, *, password: str | None = None) -> SharedState:
    """The shared state ``[service]`` asks for: Redis when ``state_url`` is set, else in-process."""
    if not service.state_url:
        return MemoryState()
    ca = str(service.state_ca_bundle) if service.state_ca_bundle else os.environ.get("SSL_CERT_FILE")
    return RedisState(service.state_url, password=password, ca_file=ca, timeout_s=service.state_timeout_s)
