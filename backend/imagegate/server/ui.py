"""The operator page: ``GET /ui`` and the data routes it reads (``[service] ui = false``: none).

- ``GET /ui`` and ``GET /ui/{asset}``: the page (HTML, CSS, ES modules) from the package's
  ``server/ui_static/`` folder, loaded once at start; only the files found there are
  served (nothing from the URL reaches the disk), gzipped when the browser accepts it,
  with an ETag. The page holds no data, so it needs no key; a strict Content-Security-Policy
  lets it load only its own scripts and styles, and talk only to its own origin.
- ``GET /v1/ui/board``: the board's snapshot (JSON); ``GET /v1/ui/live``: the board's live
  stream (SSE, ``board.py``); ``GET /v1/ui/gallery?limit=&before=``: the newest images with
  their parameters and signed links (``gallery.py``). Under ``/v1/``, so the same
  ``Authorization: Bearer`` key as the API guards them (``middleware.auth``); the page
  sends it from ``sessionStorage`` (a header, never a URL: it reads the streams with
  ``fetch()``, which can send headers, where ``EventSource`` cannot).

The playground uses the API itself: ``POST /v1/images/generations`` with ``Prefer:
respond-async``, then the job's ``events`` and ``cancel`` routes.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import web

from imagegate.config import Settings
from imagegate.errors import InvalidRequest
from imagegate.server.board import Board, BoardFull
from imagegate.server.errors import API_ERROR, ApiError
from imagegate.server.gallery import MAX_LIMIT, Gallery, parse_cursor
from imagegate.server.guards import GUARDS
from imagegate.server.sse import HEADERS as SSE_HEADERS
from imagegate.server.sse import comment as sse_comment
from imagegate.server.state import SERVICE, STATE
from imagegate.version import __version__

__all__ = ["ASSETS", "BOARD", "Asset", "install_ui", "load_assets", "ui_routes"]

ui_routes = web.RouteTableDef()
KEEPALIVE_S = 15.0
DEFAULT_GALLERY = 24
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
_PAGE = "index.html"
_DIGITS = re.compile(r"[0-9]{1,6}")


@dataclass(frozen=True)
class Asset:
    content_type: str
    body: bytes
    gzipped: bytes
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every servable file of the page, by name (read once, from the installed package)."""
    folder = resources.files("imagegate.server").joinpath("ui_static")
    assets: dict[str, Asset] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            assets[entry.name] = Asset(_TYPES[suffix], body, gzip.compress(body, mtime=0), etag)
    if _PAGE not in assets:
        raise RuntimeError("the package is missing imagegate/server/ui_static/index.html")
    return assets


ASSETS = web.AppKey("ui_assets", dict[str, Asset])
BOARD = web.AppKey("ui_board", Board)
GALLERY = web.AppKey("ui_gallery", Gallery)
CSP = web.AppKey("ui_csp", str)


def install_ui(app: web.Application, settings: Settings) -> None:
    """Add the page and its data routes to ``app`` (nothing when ``[service] ui = false``)."""
    if not settings.service.ui:
        return
    app[ASSETS] = load_assets()
    app[GALLERY] = Gallery(settings.service.output_dir)
    app[CSP] = _policy(app[GUARDS].public_url)
    app.add_routes(ui_routes)
    app.cleanup_ctx.append(_board_context)
    app.on_shutdown.append(_end_streams)


def _policy(public_url: str | None) -> str:
    """Own scripts, styles and connections only; images also from data: (previews) and the
    public origin (``url`` answers are built on it)."""
    images = "'self' data:"
    if public_url:
        parts = urlsplit(public_url)
        images += f" {parts.scheme}://{parts.netloc}"
    return (f"default-src 'none'; script-src 'self'; style-src 'self'; img-src {images}; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


async def _board_context(app: web.Application) -> AsyncIterator[None]:
    board = Board(app[SERVICE])
    board.start()
    app[BOARD] = board
    yield
    await board.aclose()


async def _end_streams(app: web.Application) -> None:
    if BOARD in app:
        app[BOARD].close_listeners()


# -- the page -----------------------------------------------------------------------------


@ui_routes.get("/ui")
async def page(request: web.Request) -> web.Response:
    return _serve(request, _PAGE)


@ui_routes.get("/ui/")
async def page_slash(request: web.Request) -> web.Response:
    # the page's links are relative to /ui; a relative Location keeps a proxy's path prefix
    return web.Response(status=308, headers={"Location": "../ui"})


@ui_routes.get(r"/ui/{asset:[a-z0-9_\-]{1,40}\.(?:js|css|svg)}")
async def asset(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["asset"])


def _serve(request: web.Request, name: str) -> web.Response:
    found = request.app[ASSETS].get(name)
    if found is None:
        raise ApiError(404, "no such file", code="not_found")
    headers = {"ETag": found.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding",
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
               "Content-Type": found.content_type}
    if name == _PAGE:
        headers["Content-Security-Policy"] = request.app[CSP]
        headers["X-Frame-Options"] = "DENY"
    if found.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=found.gzipped, headers=headers)
    return web.Response(body=found.body, headers=headers)


# -- the data -----------------------------------------------------------------------------


@ui_routes.get("/v1/ui/board")
async def board_snapshot(request: web.Request) -> web.Response:
    body = request.app[BOARD].snapshot(fresh=True)
    return web.json_response({"version": __version__, **body})


@ui_routes.get("/v1/ui/live")
async def live(request: web.Request) -> web.StreamResponse:
    board = request.app[BOARD]
    try:
        listener, first = board.listen()
    except BoardFull as exc:
        raise ApiError(503, f"too many open pages: {exc}", type=API_ERROR, code="ui_busy",
                       headers={"Retry-After": "5"}) from None
    response = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await response.prepare(request)
        await response.write(first)
        while (frames := await listener.take(KEEPALIVE_S)) is not None:
            await response.write(b"".join(frames) if frames else sse_comment("keep-alive"))
        await response.write_eof()  # cut off (too slow) or shutting down: the page reconnects
    except ConnectionResetError:  # the page went away mid-write
        pass
    finally:
        board.forget(listener)
    return response


@ui_routes.get("/v1/ui/gallery")
async def gallery(request: web.Request) -> web.Response:
    limit = _limit(request.query.get("limit"))
    raw = request.query.get("before") or None
    before = None if raw is None else parse_cursor(raw)
    if raw is not None and before is None:
        raise InvalidRequest(
            "before: must be the 'next' cursor of a gallery page "
            "({mtime_ns}:YYYY-MM-DD/HHMMSS-xxxxxxxx.ext)", field="before",
        )
    state = request.app[STATE]
    found = await asyncio.to_thread(request.app[GALLERY].page, limit=limit, before=before)
    items = [dict(item, url=f"v1/files/{item['path']}?{state.signer.query(item['path'])}")
             for item in found.items]
    return web.json_response({"object": "list", "data": items, "next": found.next})


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_GALLERY
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequest(f"limit: must be a whole number 1..{MAX_LIMIT} (got {raw[:20]!r})",
                             field="limit")
    return int(raw)
