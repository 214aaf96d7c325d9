"""The full soak: 60 s, concurrency 32, three HTTPS backends whose faults change every 2 s.

Opt-in (``pytest -m soak tests/soak``); the same run is ``python scripts/bench.py soak``.
The harness is scripts/benchlib/soak.py; its docstring lists what each check means.
"""

from __future__ import annotations

import pytest
from benchlib.soak import SoakConfig, soak

pytestmark = pytest.mark.soak


@pytest.mark.timeout(300)
async def test_sixty_seconds_of_flapping_backends_leave_every_check_green() -> None:
    report = await soak(SoakConfig(duration_s=60.0, concurrency=32, slot_s=2.0, rss_window_s=10.0))
    failed = {name: check for name, check in report["checks"].items() if not check["ok"]}
    assert not failed, failed
    assert report["requests"] > 1000
    assert set(report["attempt_outcomes"]) >= {
        "ok",
        "handshake_timeout",
        "connect_failed",
        "rate_limited",
        "unavailable",
        "bad_response",
    }
