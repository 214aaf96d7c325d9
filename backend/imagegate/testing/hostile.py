"""Hostile provider behaviour every emulator can be switched to (see ``knobs.py``): what a
broken or malicious server does to a client, reproduced on loopback.

    knobs.arm("huge_body", status=500, size=2**30)   # a 1 GiB body, streamed, never held
    knobs.arm("huge_body", status=200, prefix=b'{"images": ["', fill=b"A")
    knobs.arm("echo_auth", status=401)               # quote the credentials it was sent
    knobs.arm("bad_headers")                         # a response whose headers do not parse

``huge_body`` is generated as it is sent (one reused 1 MiB chunk), chunked unless
``content_length=True``; it stops as soon as the client stops reading, and every byte that
was handed to the socket is counted in ``knobs.bytes_streamed`` (a test can tell the hostile
body was served, and compare with what the client can have read).

``echo_auth`` answers with every form a real server has been seen to quote a credential in
(an ``Authorization`` value whole, the token alone, the token URL-encoded, a Basic header
decoded to ``user:password``), in a JSON body carrying every error key the providers use
(``error.message``, ``message``, ``errors``, ``detail``) and in ``X-Error-Message``, so
whichever field a client reads, the credential is in it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

if TYPE_CHECKING:
    from imagegate.testing.knobs import Knobs

__all__ = ["credential_forms", "echo_credentials", "malformed_headers", "stream_huge_body"]

_CHUNK = b"\0" * (1024 * 1024)
_AUTH_HEADERS = ("Authorization", "x-hf-authorization")
# a status line and a Content-Length aiohttp's (and any strict) parser refuses
_MALFORMED = b"HTTP/1.1 200 OK\r\nContent-Length: not-a-number\r\nContent-Type: image/png\r\n\r\nxx"


async def stream_huge_body(
    request: web.Request,
    knobs: Knobs,
    *,
    status: int = 200,
    size: int = 2**30,
    prefix: bytes = b"",
    fill: bytes = b"\0",
    content_type: str = "application/json",
    content_length: bool = False,
) -> web.StreamResponse:
    """``prefix`` then ``fill`` repeated up to ``size`` bytes in all, generated while sent."""
    resp = web.StreamResponse(status=status, headers={"Content-Type": content_type})
    if content_length:
        resp.content_length = size
    else:
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    chunk = (fill * (len(_CHUNK) // len(fill))) if fill != b"\0" else _CHUNK
    try:
        if prefix:
            knobs.bytes_streamed += len(prefix)
            await resp.write(prefix)
        sent = len(prefix)
        while sent < size:
            part = chunk[: min(len(chunk), size - sent)]
            sent += len(part)
            knobs.bytes_streamed += len(part)  # handed to the socket (maybe never read)
            await resp.write(part)
        await resp.write_eof()
    except (ConnectionError, RuntimeError):  # the client stopped reading: that is the point
        pass
    return resp


def credential_forms(headers: Any) -> list[str]:
    """Every form of the credentials in ``headers`` a server might quote back."""
    forms: list[str] = []
    for name in _AUTH_HEADERS:
        value = headers.get(name)
        if not value:
            continue
        scheme, _, token = value.partition(" ")
        forms += [value, token, quote(token, safe="")]
        if scheme.lower() == "basic":
            try:
                forms.append(base64.b64decode(token, validate=True).decode("utf-8", "replace"))
            except (binascii.Error, ValueError):
                pass
    return [f for f in forms if f]


def echo_credentials(request: web.Request, *, status: int = 401) -> web.Response:
    """An error answer quoting the credentials of ``request`` in every form and field."""
    text = "credentials not accepted: " + " | ".join(credential_forms(request.headers))
    body = {
        "error": {"message": text, "type": "invalid_request_error", "code": "invalid_api_key"},
        "message": text,
        "errors": [text],
        "detail": text,
        "reason": "INVALID_API_KEY",
        "name": "unauthorized",
    }
    header = text.encode("ascii", "replace").decode("ascii")
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers={"X-Error-Message": header},
    )


def malformed_headers(request: web.Request) -> None:
    """Write a response whose headers no strict parser accepts, then close the connection."""
    transport = request.transport
    if transport is not None:
        transport.write(_MALFORMED)
        transport.close()
