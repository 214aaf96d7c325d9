"""``POST /v1/images/generations`` answered otherwise than with one JSON body: an async job
(``Prefer: respond-async``: ``job_routes.py``) or OpenAI's image stream (``"stream": true``).

The stream (shapes and the SDK's rules in ``sse.py``): previews become
``image_generation.partial_image`` events, at most ``partial_images`` of them (0: none, and no
preview is even asked for); each image becomes an ``image_generation.completed``; then
``data: [DONE]``. Queue places, progress, attempts and failovers go out as comments
(``: imagegate.progress {...}``), which the SDK ignores. Headers go out at the first thing
worth sending (a queue place, progress, a preview, or a keep-alive after ``FIRST_WAIT_S``),
so a request that fails at once still gets its plain error status (400/502/504) as JSON;
after that a failure is an ``error`` event, which the SDK raises as ``openai.APIError``.
A client that goes away cancels the generation (the handler is cancelled: ``run.py``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

from aiohttp import web

from imagegate.errors import InvalidRequest
from imagegate.events import (
    CancelledEvent,
    CompletedEvent,
    Event,
    FailedEvent,
    PreviewEvent,
    event_json,
)
from imagegate.logging import get_logger
from imagegate.models import ImageResult
from imagegate.server.errors import API_ERROR, ApiError, api_error_for
from imagegate.server.job_routes import prefers_async, submit_job
from imagegate.server.sse import DONE, completed_event, error_event, partial_image_event
from imagegate.server.sse import HEADERS as SSE_HEADERS
from imagegate.server.sse import comment as sse_comment
from imagegate.server.state import SERVICE, STATE
from imagegate.server.wire import Generation

__all__ = ["other_answer", "stream_images"]

log = get_logger(__name__)

FIRST_WAIT_S = 2.0  # headers go out by then at the latest (a keep-alive comment)
KEEPALIVE_S = 15.0
_ANNOUNCE = ("queued", "progress")  # worth opening the stream for
_COMMENTS = ("queued", "progress", "started", "failover")


async def other_answer(request: web.Request, generation: Generation) -> web.StreamResponse | None:
    """The answer when it is not the plain JSON one, else None."""
    if prefers_async(request):
        return await submit_job(request, generation)
    if generation.webhook_url is not None:
        raise InvalidRequest(
            "webhook_url: only for async jobs (send the header Prefer: respond-async)",
            field="webhook_url",
        )
    if generation.stream:
        return await stream_images(request, generation)
    return None


async def stream_images(request: web.Request, generation: Generation) -> web.StreamResponse:
    state, service = request.app[STATE], request.app[SERVICE]
    queue: asyncio.Queue[Event | None] = asyncio.Queue()
    started = time.monotonic()
    task = asyncio.create_task(service.generate(
        generation.request, backend=generation.backend, on_event=queue.put_nowait,
        previews=generation.partial_images > 0,
    ))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    state.generations.add(task)
    writer = _Writer(request, generation.partial_images)
    try:
        while True:
            timeout = KEEPALIVE_S if writer.open else FIRST_WAIT_S
            try:
                event = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                await writer.send(sse_comment("keep-alive"))
                continue
            if event is None or isinstance(event, FailedEvent | CancelledEvent):
                await asyncio.wait([task])
                return await writer.fail(task, request)
            if isinstance(event, CompletedEvent):
                state.metrics.observe_generation(
                    event.result.backend, "ok", event.result.elapsed_s, event.result.attempts)
                return await writer.complete(event.result)
            await writer.tell(event)
    except asyncio.CancelledError:
        if not task.done():
            log.info("generation_cancelled_client_gone", stream=True)
            task.cancel("the client went away")
        raise
    finally:
        if not task.done():
            task.cancel("the stream ended")
        await asyncio.wait([task])
        state.generations.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            outcome = "deadline_exceeded" if getattr(exc, "deadline_exceeded", False) else "all_backends_failed"
            state.metrics.observe_generation(None, outcome, time.monotonic() - started,
                                             getattr(exc, "attempts", []))


class _Writer:
    """The response, opened lazily; counts the partial images sent."""

    def __init__(self, request: web.Request, partial_images: int) -> None:
        self._request = request
        self._partial_images = partial_images
        self._sent_partials = 0
        self.response: web.StreamResponse | None = None

    @property
    def open(self) -> bool:
        return self.response is not None

    async def send(self, data: bytes) -> None:
        if self.response is None:
            self.response = web.StreamResponse(headers=SSE_HEADERS)
            await self.response.prepare(self._request)
        await self.response.write(data)

    async def tell(self, event: Event) -> None:
        if isinstance(event, PreviewEvent):
            if self._sent_partials < self._partial_images:
                b64 = base64.b64encode(event.image).decode("ascii")
                await self.send(partial_image_event(
                    b64, index=self._sent_partials, image_format=event.format,
                    width=event.width, height=event.height))
                self._sent_partials += 1
            return
        if event.type in _COMMENTS and (self.open or event.type in _ANNOUNCE):
            note = json.dumps(event_json(event), separators=(",", ":"))
            await self.send(sse_comment(f"imagegate.{event.type} {note}"))

    async def complete(self, result: ImageResult) -> web.StreamResponse:
        for image in result.images:
            await self.send(completed_event(image, base64.b64encode(image.data).decode("ascii")))
        await self.send(DONE)
        assert self.response is not None
        await self.response.write_eof()
        return self.response

    async def fail(self, task: asyncio.Task[ImageResult], request: web.Request) -> web.StreamResponse:
        """Before the stream opened: raise (the plain error answer). After: an error event."""
        if not self.open:
            if task.cancelled():
                raise ApiError(503, "the server is shutting down; retry on another instance",
                               type=API_ERROR, code="shutting_down",
                               headers={"Connection": "close", "Retry-After": "1"})
            task.result()  # raises the failure: the plain error answer (502, 504, ...)
        exc = task.exception() if not task.cancelled() else asyncio.CancelledError()
        assert exc is not None
        error = api_error_for(exc, request.app[STATE].redact)
        if task.cancelled():
            error.message, error.code = "the generation was cancelled (shutting down)", "cancelled"
        await self.send(error_event(error.body()["error"]))
        assert self.response is not None
        await self.response.write_eof()
        return self.response
