"""The output folder as the HTTP API sees it: checked before a ``url`` generation is paid
for, reported by ``/readyz``, cleaned of a killed writer's leftovers at start, and never the
reason a paid image is lost.

- before generating for ``response_format = "url"``: the folder must be writable and keep
  ``[service] min_free_mb`` free, else ``507`` (nothing was spent; ``b64_json`` still works);
- ``/readyz`` answers ``503`` with the reason while that is not so (this instance cannot
  serve ``url`` answers: a load balancer should prefer another);
- a save that fails after the images were paid for: the images go back as ``b64_json``, with
  the reason in the answer's ``warnings`` and the ``x-imagegate-warning`` header;
- at start, ``.tmp-*`` files older than a minute (a writer killed mid-file) are removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from imagegate.logging import get_logger
from imagegate.server.errors import ApiError
from imagegate.store import ImageStore

__all__ = ["ensure_room", "output_problem", "save_failed_warning", "stale_file_cleaner"]

log = get_logger(__name__)


async def output_problem(store: ImageStore, min_free_mb: float) -> str | None:
    """Why no image can be saved now, else None (in a thread: it touches the disk)."""
    return await asyncio.to_thread(store.problem, min_free_mb)


async def ensure_room(store: ImageStore, min_free_mb: float) -> None:
    """507 before anything is spent when the output folder cannot take the images."""
    problem = await output_problem(store, min_free_mb)
    if problem is not None:
        log.warning("output_unavailable", reason=problem)
        raise ApiError(
            507,
            f"cannot save images for a 'url' answer: {problem}; ask for response_format "
            "'b64_json' instead",
            type="api_error",
            code="insufficient_storage",
        )


def save_failed_warning(exc: OSError) -> str:
    """The warning an answer carries when its paid images could not be saved."""
    log.error("save_failed", error_type=type(exc).__name__, error=exc.strerror or str(exc))
    reason = exc.strerror or type(exc).__name__
    return f"the images could not be saved ({reason}): returned as b64_json instead of url"


def stale_file_cleaner(store: ImageStore) -> Callable[[web.Application], Awaitable[None]]:
    """An ``on_startup`` hook removing what killed writers left in ``store``."""

    async def clean(app: web.Application) -> None:
        removed = await asyncio.to_thread(store.remove_stale)
        if removed:
            log.info("stale_temp_files_removed", count=removed, output_dir=str(store.root))

    return clean
