"""The backend's one websocket to ComfyUI, its messages routed to the prompt they concern.

ComfyUI sends a prompt's ``executing``/``executed``/``progress``/``execution_*`` messages
and its preview frames only to the socket whose ``clientId`` the prompt was posted with
[CS ``send_sync``, CM ``hijack_progress``]; reusing a ``clientId`` replaces the old socket.
So one backend instance keeps one socket with one client id, and routes what arrives by
``prompt_id``: to the prompt's queue once it is watched, or into a small buffer until then
(a prompt can start before its ``POST /prompt`` answer has been read). A message without a
``prompt_id`` (older versions) and a preview frame without metadata belong to the prompt
that is executing (``execution_start`` says which). ``status`` goes to every watch. When
the socket closes, every watch receives :data:`LOST` (its prompt is then followed through
``/history``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from imagegate.backends.comfyui.wire import Preview, decode_frame
from imagegate.logging import get_logger

__all__ = ["LOST", "Channel", "Message"]

log = get_logger(__name__)

LOST = "lost"
Message = tuple[str, dict[str, Any]] | Preview | str
_EARLY_PROMPTS = 32  # prompts buffered before they are watched
_EARLY_MESSAGES = 512  # messages kept per such prompt


class Channel:
    """One websocket, shared by every prompt of one backend instance."""

    def __init__(self, backend: str) -> None:
        self._backend = backend
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watches: dict[str, asyncio.Queue[Message]] = {}
        self._early: OrderedDict[str, list[Message]] = OrderedDict()
        self._current: str | None = None
        self._lock = asyncio.Lock()

    @property
    def open(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def ensure(self, connect: Callable[[], Awaitable[aiohttp.ClientWebSocketResponse | None]]) -> bool:
        """The socket, opened with ``connect`` unless it is open; False when ``connect``
        says there is none to be had (it raises for a server that cannot be reached)."""
        async with self._lock:
            if self.open:
                return True
            ws = await connect()
            if ws is None:
                return False
            # ask for previews with metadata (they name their prompt); older servers ignore it
            await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
            self._ws = ws
            self._reader = asyncio.create_task(self._read(ws), context=contextvars.Context())
            return True

    def watch(self, prompt_id: str) -> asyncio.Queue[Message]:
        """The queue ``prompt_id``'s messages arrive in (those already buffered first)."""
        queue: asyncio.Queue[Message] = asyncio.Queue()
        for message in self._early.pop(prompt_id, []):
            queue.put_nowait(message)
        if not self.open:
            queue.put_nowait(LOST)
        self._watches[prompt_id] = queue
        return queue

    def forget(self, prompt_id: str) -> None:
        self._watches.pop(prompt_id, None)
        self._early.pop(prompt_id, None)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._text(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    preview = decode_frame(msg.data)
                    if preview is not None:
                        self._deliver(preview.prompt_id or self._current, preview)
        except Exception as exc:  # noqa: BLE001 - a broken socket ends here, whatever broke it
            log.info("comfyui_socket_failed", backend=self._backend, error=f"{type(exc).__name__}: {exc}")
        finally:
            if self._ws is ws:
                self._ws = None
            self._current = None
            for queue in self._watches.values():
                queue.put_nowait(LOST)
            log.info("comfyui_socket_closed", backend=self._backend)

    def _text(self, raw: str) -> None:
        try:
            doc = json.loads(raw)
        except ValueError:
            return
        kind = doc.get("type") if isinstance(doc, dict) else None
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(kind, str) or not isinstance(data, dict):
            return
        if kind == "status":
            for queue in self._watches.values():
                queue.put_nowait((kind, data))
            return
        prompt_id = data.get("prompt_id") if isinstance(data.get("prompt_id"), str) else self._current
        if kind == "execution_start":
            self._current = prompt_id
        self._deliver(prompt_id, (kind, data))
        if kind == "executing" and data.get("node") is None and prompt_id == self._current:
            self._current = None

    def _deliver(self, prompt_id: str | None, message: Message) -> None:
        if prompt_id is None:
            return
        queue = self._watches.get(prompt_id)
        if queue is not None:
            queue.put_nowait(message)
            return
        kept = self._early.setdefault(prompt_id, [])
        self._early.move_to_end(prompt_id)
        if len(kept) < _EARLY_MESSAGES:
            kept.append(message)
        while len(self._early) > _EARLY_PROMPTS:
            self._early.popitem(last=False)

    async def aclose(self) -> None:
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if reader is not None:
            reader.cancel()
            await asyncio.wait([reader])
