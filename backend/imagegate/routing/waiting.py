"""Waiting for a skipped backend whose breaker reopens before the request's deadline.

``RequestRun`` (run.py) calls ``wait_for(plan, sleep)`` when every candidate has been
tried or skipped, attempts remain, and ``Admission.reopening()`` (policy.py, pure) found a
skipped backend worth waiting for. The rule, in full:

- a skipped backend is waited for if its breaker lets a call through (cool-down over, or
  closed by a probe) within what is left of the deadline minus a margin (``WAIT_MARGIN_S``,
  or the backend's latency EWMA if longer); the soonest is waited for, and a transition of
  any such breaker wakes the request early;
- a half-open breaker whose trial another request holds is waited for until that trial's
  verdict (a transition), within the same budget; then the rule is applied again;
- disabled (auth/quota, until a probe succeeds) and saturated backends are never waited for;
- after the wait the backend is called as the half-open trial, or normally if its breaker
  closed meanwhile; the breaker still lets only one trial through;
- when every candidate is blocked at the start, the soonest-to-reopen is forced through at
  once as before (a request never skips every backend); waiting applies only after that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from imagegate.logging import get_logger
from imagegate.models import Attempt
from imagegate.routing.policy import Reopening

__all__ = ["wait_for"]

log = get_logger(__name__)


async def wait_for(plan: Reopening, sleep: Callable[[float], Awaitable[None]]) -> Attempt:
    """Sleep ``plan.wait_s`` with ``sleep`` (injected: tests never wait), waking early at a
    transition of any breaker in ``plan.watch``; cancellable. Returns the trail's row."""
    first = plan.first
    why = first.breaker.why_not()
    log.info("waiting_for_backend", backend=first.name, kind="waiting", wait_s=round(plan.wait_s, 4), reason=why)
    watchers = [(st, st.watch()) for st in plan.watch]

    async def nap() -> None:
        await sleep(plan.wait_s)

    sleeper = asyncio.create_task(nap(), name=f"imagegate-wait-{first.name}")
    started = time.monotonic()
    try:
        await asyncio.wait([sleeper, *(w for _, w in watchers)], return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        for st, watcher in watchers:
            st.unwatch(watcher)
            watcher.cancel()
        await asyncio.wait([sleeper])
    waited = time.monotonic() - started
    return Attempt(
        backend=first.name,
        outcome="waited",
        elapsed_s=waited,
        error=f"waited for its breaker: {why}",
        timings={"planned_s": round(plan.wait_s, 6), "total_s": round(waited, 6)},
    )
