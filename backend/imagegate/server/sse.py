"""Server-Sent Events, framed (pure: bytes in, bytes out), for our two streams.

The rules (WHATWG HTML §9.2 "Server-sent events"): UTF-8 ``text/event-stream``; an event is
``field: value`` lines ended by one blank line; ``data`` lines are joined with LF; a line
starting with ``:`` is a comment every parser ignores; ``id`` sets the last event id a
reconnecting EventSource sends back as ``Last-Event-ID``; a ``:`` line every ~15 s keeps idle
proxies from closing the connection.

**The OpenAI image stream** (``POST /v1/images/generations`` with ``"stream": true``), as the
official openai-python SDK (3.57, ``_streaming.py``) parses it, checked against the real
SDK in tests/server/test_stream_sdk.py:

- events ``image_generation.partial_image`` and ``image_generation.completed`` with every
  field its types mark required (``types/image_gen_*_event.py``), then ``data: [DONE]``;
- the SDK dispatches on the JSON ``type``, never on ``event:``, and does NOT skip a JSON
  event of another type: ``event: imagegate.progress`` with ``{"type": "imagegate.progress"}``
  reaches the user as a fake ``ImageGenPartialImageEvent`` (``b64_json`` None) with the
  default client and raises ``APIResponseValidationError`` with
  ``_strict_response_validation=True``. So imagegate's own events go out as comment lines
  (``: imagegate.progress {...}``), which it ignores and a curious client can still read;
- no ``id:`` and no lone ``retry:`` on this stream: once an id is set the SDK dispatches an
  empty event at every blank line, and ``json.loads("")`` raises;
- a JSON object with an ``error`` key raises ``openai.APIError`` whatever its event name:
  that is how a failure after the stream started is told (``event: error``).

**The job event stream** (``GET /v1/jobs/{id}/events``): ``id:`` (the event's number in its
job), ``event:`` (the event model's type) and one ``data:`` line of JSON per event.
"""

from __future__ import annotations

import json
import time
from typing import Any

from imagegate.models import GeneratedImage

__all__ = [
    "CONTENT_TYPE",
    "DONE",
    "HEADERS",
    "comment",
    "completed_event",
    "error_event",
    "event",
    "partial_image_event",
]

CONTENT_TYPE = "text/event-stream"
HEADERS = {
    "Content-Type": CONTENT_TYPE,  # via headers: aiohttp appends no charset
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
}
DONE = b"data: [DONE]\n\n"
_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
          "output_tokens": 0, "total_tokens": 0}


def event(name: str | None, data: str, *, event_id: int | None = None) -> bytes:
    """One event; ``data`` may hold newlines (each line becomes a ``data:`` line)."""
    lines = [f"id: {event_id}"] if event_id is not None else []
    if name:
        lines.append(f"event: {name}")
    lines += [f"data: {line}" for line in data.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str) -> bytes:
    """A comment block every parser ignores (keep-alive, or our progress on the OpenAI stream)."""
    return "".join(f": {line}\n" for line in text.split("\n")).encode() + b"\n"


def partial_image_event(
    b64: str, *, index: int, image_format: str, width: int | None, height: int | None
) -> bytes:
    """OpenAI's ``image_generation.partial_image`` (``partial_image_index`` from 0)."""
    body = {"type": "image_generation.partial_image", "b64_json": b64, "partial_image_index": index,
            **_common(image_format, width, height)}
    return event("image_generation.partial_image", json.dumps(body))


def completed_event(image: GeneratedImage, b64: str) -> bytes:
    """OpenAI's ``image_generation.completed``: one per image (the event has no index)."""
    body = {"type": "image_generation.completed", "b64_json": b64,
            **_common(image.format.value, image.width, image.height), "usage": _USAGE}
    return event("image_generation.completed", json.dumps(body))


def error_event(error: dict[str, Any]) -> bytes:
    """``error`` is an OpenAI error object (``{"message", "type", "code", ...}``)."""
    return event("error", json.dumps({"type": "error", "error": error}))


def _common(image_format: str, width: int | None, height: int | None) -> dict[str, Any]:
    size = f"{width}x{height}" if width and height else "auto"
    fmt = image_format if image_format in ("png", "jpeg", "webp") else "png"
    return {"created_at": int(time.time()), "size": size, "quality": "auto",
            "background": "auto", "output_format": fmt}
