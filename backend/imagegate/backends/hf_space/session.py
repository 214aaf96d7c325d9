"""One built gradio_client ``Client`` and what was learnt from it, and how to let go of it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["Session", "cancel_quietly", "close_client", "close_later", "png_bytes"]


@dataclass(frozen=True)
class Session:
    """A built client and what was learnt from it once: the endpoint and its parameters."""

    client: Any
    api_name: str
    parameters: list[dict[str, Any]]

    @property
    def required(self) -> frozenset[str]:
        """Parameters without a default (gradio_client refuses a call that leaves one out)."""
        return frozenset(
            str(p.get("parameter_name"))
            for p in self.parameters
            if not p.get("parameter_has_default", False)
        )


def cancel_quietly(job: Any) -> None:
    with contextlib.suppress(Exception):  # best effort: the app may already be gone
        job.cancel()


def close_client(client: Any) -> None:
    """Stop the heartbeat and shut the client's thread pools down (Client.close() does not)."""
    with contextlib.suppress(Exception):
        client.close()
    for pool in ("executor", "helper_executor", "stream_executor"):
        executor = getattr(client, pool, None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def close_later(executor: concurrent.futures.Executor, client: Any) -> None:
    """Close ``client`` off the event loop: on ``executor``, or once that is shut down, on a
    short-lived thread of its own."""
    try:
        executor.submit(close_client, client)
    except RuntimeError:
        threading.Thread(target=close_client, args=(client,), daemon=True).start()


def png_bytes(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
