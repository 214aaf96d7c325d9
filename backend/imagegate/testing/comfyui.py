"""A ComfyUI stand-in: the workflow API, its queue and executor, and its websocket.

Routes, each served bare and under ``/api`` [CS ``add_routes``] (notes/providers_new.md §1;
[CS] server.py, [CE] execution.py, [CM] main.py):

- ``POST /prompt`` validates the graph against the nodes in ``comfyui_nodes`` (400 with
  ``{"error", "node_errors"}`` [CE]), takes a client ``prompt_id`` only as a canonical UUID
  (400 ``invalid_prompt_id``), copies ``client_id`` into ``extra_data``, numbers it from its
  own counter (``front`` negates it) and answers ``{"prompt_id", "number", "node_errors": {}}``.
  ``{"error": {"type": "no_prompt", ...}}`` without a ``prompt`` key.
- ``GET /ws?clientId=``: ``status`` with the ``sid`` on connect; a client's first text
  message ``{"type": "feature_flags", "data": {...}}`` is answered with the server's flags
  and ``supports_preview_metadata`` switches its previews to type 4 frames; reusing a
  ``clientId`` replaces the old socket. The run's messages: ``comfyui_run``.
- ``GET /queue``, ``POST /queue`` (``clear``, ``delete``: pending only), ``POST /interrupt``
  (``{"prompt_id"}``: only if that one runs; no body: whatever runs), ``GET /prompt``,
  ``GET /history[/{id}]`` (``{}`` for an unknown id), ``POST /history``, ``GET /view``
  (404 unknown, 400 for an empty name, ``..`` or a leading ``/``, or an unknown type; 403 for
  a subfolder escaping), ``GET /system_stats``, ``GET /object_info[/{class}]`` (``{}`` for an
  unknown class).
- No authentication of its own; a request from a loopback ``Host`` whose ``Origin`` names
  another host is a bare 403 [CS ``create_origin_only_middleware``]. ``api_key`` makes it
  stand behind a reverse proxy asking ``Authorization: Bearer`` (as Open WebUI's
  ``COMFYUI_API_KEY`` assumes: notes/clients.md §1e).

``legacy=True`` is an older server (late 2024 [CS-old]): a client ``prompt_id`` is ignored
and one minted, ``/interrupt`` stops whatever runs, previews are type 1 only,
``{"error": "no prompt", "node_errors": []}``. ``step_s`` paces the sampler's steps.

Knobs besides the shared ones: ``arm("execution_error", message=..., type=...)`` (the next
sampler raises), ``arm("drop_socket", path="/ws")`` (the prompt's socket closes once it
starts), ``arm("no_socket")`` (``/ws`` answers 404, a proxy without websockets),
``arm("not_image")`` (``/view`` answers junk).

    python -m imagegate.testing comfyui --port 8188 [--step-s 0.05]
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import uuid
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from imagegate.testing.comfyui_nodes import (
    NODES,
    ValidationFailed,
    canonical_uuid,
    object_info,
    validate,
)
from imagegate.testing.comfyui_run import ComfyState, Queued, run_queue
from imagegate.testing.knobs import Knobs, misbehaviour_middleware, record_json_body, send_junk

__all__ = ["KNOBS_KEY", "STATE_KEY", "create_app"]

KNOBS_KEY = web.AppKey("knobs", Knobs)
STATE_KEY = web.AppKey("comfyui_state", ComfyState)
_WORKER_KEY = web.AppKey("comfyui_worker", asyncio.Task)
_FLAGS = {"supports_preview_metadata": True, "max_upload_size": 104857600, "node_replacements": True}
_AUTH_KEY = web.AppKey("comfyui_api_key", str)


def _error_body(status: int) -> dict[str, Any]:
    return {"error": {"type": "server_error", "message": f"emulated error {status}", "details": "", "extra_info": {}},
            "node_errors": {}}


def create_app(
    *, knobs: Knobs | None = None, api_key: str | None = None, step_s: float = 0.0, legacy: bool = False,
    preview_method: str = "auto",
) -> web.Application:
    """The emulator app (its worker starts with it); see the module docstring."""
    state = ComfyState(knobs or Knobs(), step_s=step_s, legacy=legacy, preview_method=preview_method)
    app = web.Application(middlewares=[
        _origin_only, _proxy_auth,
        misbehaviour_middleware(state.knobs, error_body=_error_body, generation_paths=("/prompt", "/view", "/history"),
                                record_body=record_json_body),
    ])
    app[STATE_KEY] = state
    app[KNOBS_KEY] = state.knobs
    app[_AUTH_KEY] = api_key or ""
    routes = [
        ("POST", "/prompt", _post_prompt), ("GET", "/prompt", _get_prompt), ("GET", "/queue", _get_queue),
        ("POST", "/queue", _post_queue), ("POST", "/interrupt", _interrupt), ("GET", "/history", _history_all),
        ("GET", "/history/{prompt_id}", _history_one), ("POST", "/history", _post_history), ("GET", "/view", _view),
        ("GET", "/system_stats", _system_stats), ("GET", "/object_info", _object_info_all),
        ("GET", "/object_info/{node_class}", _object_info_one), ("GET", "/ws", _websocket),
    ]
    for prefix in ("", "/api"):
        for method, path, handler in routes:
            app.router.add_route(method, prefix + path, handler)
    app.on_startup.append(_start)
    app.on_shutdown.append(_close_sockets)
    app.on_cleanup.append(_stop)
    return app


async def _start(app: web.Application) -> None:
    app[STATE_KEY].wake = asyncio.Event()
    app[_WORKER_KEY] = asyncio.create_task(run_queue(app[STATE_KEY]))


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app[STATE_KEY].sockets.values()):
        with contextlib.suppress(Exception):
            await ws.close()


async def _stop(app: web.Application) -> None:
    app[_WORKER_KEY].cancel()
    await asyncio.wait([app[_WORKER_KEY]])


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


@web.middleware
async def _origin_only(request: web.Request, handler: Any) -> web.StreamResponse:
    """[CS ``create_origin_only_middleware``]: loopback Host, Origin naming another -> 403."""
    host, origin = request.headers.get("Host"), request.headers.get("Origin")
    if host and origin:
        host_name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if _loopback(host_name) and urlsplit(origin).netloc != host:
            return web.Response(status=403)
    return await handler(request)


@web.middleware
async def _proxy_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    key = request.app[_AUTH_KEY]
    if key and request.headers.get("Authorization") != f"Bearer {key}":
        return web.Response(status=401, text="401 Unauthorized")
    return await handler(request)


async def _post_prompt(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "prompt" not in body:
        if state.legacy:
            return web.json_response({"error": "no prompt", "node_errors": []}, status=400)
        error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                 "extra_info": {}}
        return web.json_response({"error": error, "node_errors": {}}, status=400)
    prompt_id = body.get("prompt_id")
    if state.legacy or prompt_id is None:
        prompt_id = str(uuid.uuid4())
    elif not canonical_uuid(prompt_id):
        error = {"type": "invalid_prompt_id", "message": "prompt_id must be a valid UUID",
                 "details": "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it "
                            "to let the server generate one", "extra_info": {}}
        return web.json_response({"error": error, "node_errors": {}}, status=400)
    try:
        outputs = validate(body["prompt"])
    except ValidationFailed as failed:
        return web.json_response(failed.body, status=400)
    extra = dict(body.get("extra_data") or {})
    if body.get("client_id"):
        extra["client_id"] = body["client_id"]
    if "number" in body:
        number: float = float(body["number"])
    else:
        number = state.counter * (-1 if body.get("front") else 1)
    state.enqueue(Queued(number, prompt_id, body["prompt"], extra, outputs))
    await state.status()
    shown = int(number) if "number" not in body else number
    return web.json_response({"prompt_id": prompt_id, "number": shown, "node_errors": {}})


async def _get_prompt(request: web.Request) -> web.Response:
    return web.json_response({"exec_info": {"queue_remaining": request.app[STATE_KEY].queue_remaining()}})


async def _get_queue(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    running = [state.running.item()] if state.running else []
    pending = [item.item() for _, _, item in sorted(state.pending, key=lambda e: (e[0], e[1]))]
    return web.json_response({"queue_running": running, "queue_pending": pending})


async def _post_queue(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    body = await _json_or_empty(request)
    if body.get("clear"):
        state.pending.clear()
    if isinstance(body.get("delete"), list):
        state.pending[:] = [e for e in state.pending if e[2].prompt_id not in body["delete"]]
        heapq.heapify(state.pending)
    await state.status()
    return web.Response(status=200)


async def _interrupt(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    body = await _json_or_empty(request)
    target = body.get("prompt_id") if not state.legacy else None
    if target is None:
        state.interrupt = "*" if state.running else None
    elif state.running is not None and state.running.prompt_id == target:
        state.interrupt = target
    return web.Response(status=200)


async def _json_or_empty(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def _history_all(request: web.Request) -> web.Response:
    history = request.app[STATE_KEY].history
    try:
        max_items = int(request.query.get("max_items", len(history)))
    except ValueError:
        max_items = len(history)
    items = list(history.items())[-max_items:] if max_items else []
    return web.json_response(dict(items))


async def _history_one(request: web.Request) -> web.Response:
    pid = request.match_info["prompt_id"]
    entry = request.app[STATE_KEY].history.get(pid)
    return web.json_response({pid: entry} if entry is not None else {})


async def _post_history(request: web.Request) -> web.Response:
    history = request.app[STATE_KEY].history
    body = await _json_or_empty(request)
    if body.get("clear"):
        history.clear()
    for pid in body.get("delete") or []:
        history.pop(pid, None)
    return web.Response(status=200)


async def _view(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    name = request.query.get("filename")
    if name is None:
        return web.Response(status=404)
    kind, subfolder = request.query.get("type", "output"), request.query.get("subfolder", "")
    if not name or name.startswith("/") or ".." in name or kind not in ("output", "input", "temp"):
        return web.Response(status=400)
    if subfolder.startswith("/") or ".." in subfolder:
        return web.Response(status=403)
    data = state.files.get((kind, subfolder, name))
    if data is None:
        return web.Response(status=404)
    headers = {"Content-Type": "image/png", "Content-Disposition": f'filename="{name}"',
               "X-Content-Type-Options": "nosniff"}
    junk = state.knobs.take("not_image", request.path)
    if junk is not None:
        return await send_junk(request, int(junk.get("size", 0)), headers=headers, short_body=b"<html>500</html>")
    return web.Response(body=data, headers=headers)


async def _system_stats(request: web.Request) -> web.Response:
    return web.json_response({
        "system": {"os": "linux", "ram_total": 33554432000, "ram_free": 20000000000, "comfyui_version": "0.3.40",
                   "required_frontend_version": "1.21.7", "python_version": "3.11.7", "pytorch_version": "2.7.1+cu126",
                   "embedded_python": False, "argv": ["main.py", "--listen"]},
        "devices": [{"name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda", "index": 0,
                     "vram_total": 25757220864, "vram_free": 24000000000, "torch_vram_total": 0,
                     "torch_vram_free": 0}],
    })


async def _object_info_all(request: web.Request) -> web.Response:
    return web.json_response({cls: object_info(cls) for cls in NODES})


async def _object_info_one(request: web.Request) -> web.Response:
    cls = request.match_info["node_class"]
    return web.json_response({cls: object_info(cls)} if cls in NODES else {})


async def _websocket(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    if state.knobs.take("no_socket", request.path) is not None:
        return web.Response(status=404, text="Not Found")
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    sid = request.query.get("clientId") or uuid.uuid4().hex
    old = state.sockets.get(sid)
    state.sockets[sid] = ws
    state.metadata.discard(sid)
    if old is not None:
        with contextlib.suppress(Exception):
            await old.close()
    await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": state.queue_remaining()}},
                                                   "sid": sid}})
    first = True
    try:
        async for msg in ws:
            if msg.type != web.WSMsgType.TEXT or not first:
                continue
            first = False
            with contextlib.suppress(ValueError, AttributeError):
                doc = msg.json()
                if doc.get("type") == "feature_flags" and not state.legacy:
                    if (doc.get("data") or {}).get("supports_preview_metadata"):
                        state.metadata.add(sid)
                    await ws.send_json({"type": "feature_flags", "data": _FLAGS})
    finally:
        if state.sockets.get(sid) is ws:
            del state.sockets[sid]
            state.metadata.discard(sid)
    return ws


if __name__ == "__main__":  # python -m imagegate.testing comfyui --port 8188
    from imagegate.testing.cli import main

    raise SystemExit(main(kind="comfyui"))
