"""Stopping a provider's job when the request that started it is cancelled or times out.

A hosted queue (fal, Replicate) or a local server (ComfyUI) goes on with a job its client
stopped waiting for: the GPU time is spent, and billed, all the same. A backend whose
provider can stop a job calls :func:`stop_shielded` from its ``except asyncio.CancelledError``
(and ``GenerationTimeout``) branch: the stop call runs as a task of its own, so that the
cancellation that ended the request cannot cut it short, within a small budget; its failure
is logged, never raised (best effort: the caller's own error stands).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from imagegate.errors import BackendError
from imagegate.logging import get_logger
from imagegate.models import Deadline

__all__ = ["STOP_BUDGET_S", "stop_shielded"]

log = get_logger(__name__)

STOP_BUDGET_S = 2.0  # a cancelled request waits at most this long for its job to be stopped
_RUNNING: set[asyncio.Task[None]] = set()  # strong references until each stop call ends


async def stop_shielded(
    stop: Callable[[Deadline], Awaitable[str]], *, backend: str, job: str,
    budget_s: float = STOP_BUDGET_S,
) -> None:
    """Run ``stop(deadline)`` shielded from the caller's cancellation; ``stop`` returns what
    it did (logged), raises a BackendError when it could not."""
    task = asyncio.create_task(_stop(stop, backend, job, budget_s))
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    await asyncio.shield(task)


async def _stop(stop: Callable[[Deadline], Awaitable[str]], backend: str, job: str, budget_s: float) -> None:
    try:
        done = await asyncio.wait_for(stop(Deadline.after(budget_s)), budget_s)
    except BackendError as exc:
        log.warning("job_stop_failed", backend=backend, job=job, error_kind=exc.kind, error=str(exc))
    except (TimeoutError, RuntimeError) as exc:  # over budget, or the session closed (shutdown)
        log.warning("job_stop_failed", backend=backend, job=job, error=type(exc).__name__)
    else:
        log.info("job_stopped", backend=backend, job=job, action=done)
