"""``overhead`` for the provider kinds of issue 19: what ImageService.generate adds to each
kind's own minimal exchange with its emulator.

Each kind's emulator runs in its own process (``python -m imagegate.testing <kind>``). The
raw client does, with bare aiohttp, the least that kind's protocol needs for one image:

- together: ``POST /v1/images/generations`` (base64 in the answer);
- fal: submit, one status poll (COMPLETED), the result, the image from the CDN;
- replicate: ``POST`` with ``Prefer: wait`` (the prediction answers done), the output URL;
- comfyui: one websocket kept open, ``POST /prompt``, wait for ``executing`` with ``node:
  null``, ``GET /history/{id}``, ``GET /view``.

imagegate does the same exchanges through the real router and backend (its checks, events,
trail), so the difference is what imagegate adds, as for the OpenAI row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
from imagegate import ImageRequest, ImageService
from imagegate.backends.comfyui import BUILT_IN, build_prompt, find_targets
from imagegate.backends.fal import FalSettings, build_input
from imagegate.backends.registry import REGISTRY
from imagegate.backends.replicate import ReplicateSettings
from imagegate.backends.together import TogetherSettings, build_request
from imagegate.config import BackendSettings

from benchlib.common import API_KEY, KEY_ENV, free_port, process, service_settings, stats_ms

__all__ = ["KINDS", "measure_kinds"]

Client = Callable[[], Awaitable[Any]]
KINDS = ("comfyui", "fal", "replicate", "together")
_SDXL = "stability-ai/sdxl:13f35c1d2354fab73101e29a49eb071b45bf24988f11a3b49a061a745356d1d3"
_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"  # the ComfyUI emulator's first


@contextlib.contextmanager
def emulator(kind: str) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "imagegate.testing", kind, "--port", str(port)]
    if kind != "comfyui":
        argv += ["--api-key", API_KEY]
    with process(argv, port) as url:
        yield url


def backend_settings(kind: str, url: str) -> BackendSettings:
    table: dict[str, Any] = {"name": kind, "base_url": url, "max_concurrency": 64, "queue": False}
    if kind == "comfyui":
        return REGISTRY.settings_class(kind)(**table, model=_CHECKPOINT, poll_interval_s=5.0)
    table["api_key_env"] = KEY_ENV
    if kind == "fal":
        return FalSettings(**table, poll_interval_s=0.001)
    if kind == "replicate":
        return ReplicateSettings(**table, model=_SDXL)
    return TogetherSettings(**table)


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with http.request(method, url, **kw) as resp:
        body = await resp.read()
        if resp.status not in (200, 201, 202):
            raise RuntimeError(f"raw {method} {url}: HTTP {resp.status}: {body[:200]!r}")
        return json.loads(body)


async def _bytes(http: aiohttp.ClientSession, url: str, **kw: Any) -> bytes:
    async with http.get(url, **kw) as resp:
        if resp.status != 200:
            raise RuntimeError(f"raw GET {url}: HTTP {resp.status}")
        return await resp.read()


def raw_together(http: aiohttp.ClientSession, url: str, request: ImageRequest) -> Client:
    body = build_request(request, model="black-forest-labs/FLUX.1-schnell")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return lambda: _json(http, "POST", url + "/v1/images/generations", json=body, headers=headers)


def raw_fal(http: aiohttp.ClientSession, url: str, request: ImageRequest) -> Client:
    body = build_input(request, takes=("size", "steps", "seed", "guidance_scale", "model"))
    headers = {"Authorization": f"Key {API_KEY}"}

    async def call() -> bytes:
        submitted = await _json(http, "POST", url + "/fal-ai/flux/schnell", json=body, headers=headers)
        await _json(http, "GET", submitted["status_url"], params={"logs": "0"}, headers=headers)
        result = await _json(http, "GET", submitted["response_url"], headers=headers)
        return await _bytes(http, result["images"][0]["url"])

    return call


def raw_replicate(http: aiohttp.ClientSession, url: str, request: ImageRequest) -> Client:
    body = {"version": _SDXL.split(":")[1], "input": {"prompt": request.prompt, "width": request.width,
                                                     "height": request.height, "num_outputs": 1, "seed": request.seed}}
    headers = {"Authorization": f"Bearer {API_KEY}", "Prefer": "wait=60"}

    async def call() -> bytes:
        prediction = await _json(http, "POST", url + "/v1/predictions", json=body, headers=headers)
        return await _bytes(http, prediction["output"][0])

    return call


def raw_comfyui(http: aiohttp.ClientSession, url: str, request: ImageRequest, ws: Any) -> Client:
    client_id = uuid.uuid4().hex

    async def call() -> bytes:
        graph, _ = build_prompt(request, BUILT_IN, find_targets(BUILT_IN, {}), checkpoint=_CHECKPOINT)
        socket = await ws(client_id)
        prompt_id = str(uuid.uuid4())
        await _json(http, "POST", url + "/prompt", json={"prompt": graph, "client_id": client_id,
                                                         "prompt_id": prompt_id,
                                                         "extra_data": {"preview_method": "none"}})
        async for msg in socket:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)["data"]
                if data.get("node", "") is None and data.get("prompt_id") == prompt_id:
                    break
        history = await _json(http, "GET", f"{url}/history/{prompt_id}")
        image = history[prompt_id]["outputs"]["9"]["images"][0]
        return await _bytes(http, url + "/view", params=image)

    return call


Interleave = Callable[[dict[str, Client], int, int], Awaitable[dict[str, list[float]]]]
Added = Callable[[dict[str, list[float]], str, str], dict[str, float]]


async def _measure(kind: str, url: str, args: argparse.Namespace, interleaved: Interleave) -> dict[str, list[float]]:
    request = ImageRequest(prompt="a lighthouse at dusk", width=args.size, height=args.size, seed=1)
    settings = service_settings(backend_settings(kind, url))
    sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
    async with aiohttp.ClientSession() as http, ImageService(settings) as service:
        async def ws(client_id: str) -> aiohttp.ClientWebSocketResponse:
            if client_id not in sockets:
                sockets[client_id] = await http.ws_connect(f"{url.replace('http', 'ws', 1)}/ws?clientId={client_id}")
            return sockets[client_id]

        raw = {"together": lambda: raw_together(http, url, request), "fal": lambda: raw_fal(http, url, request),
               "replicate": lambda: raw_replicate(http, url, request),
               "comfyui": lambda: raw_comfyui(http, url, request, ws)}[kind]()

        async def through_imagegate() -> Any:
            return await service.generate(request)

        try:
            return await interleaved({"raw_aiohttp": raw, "imagegate": through_imagegate}, args.kind_runs,
                                     args.warmup)
        finally:
            for socket in sockets.values():
                await socket.close()


def measure_kinds(args: argparse.Namespace, interleaved: Interleave, added: Added) -> dict[str, Any]:
    """Per kind in ``args.kinds``: both clients' latencies, paired as ``interleaved`` pairs
    them, and what imagegate adds (``added``), as for the OpenAI row."""
    out: dict[str, Any] = {}
    for kind in [k for k in args.kinds.split(",") if k]:
        if kind not in KINDS:
            raise SystemExit(f"overhead: --kinds: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        with emulator(kind) as url:
            samples = asyncio.run(_measure(kind, url, args, interleaved))
        out[kind] = {"latency_ms": {name: stats_ms(values) for name, values in samples.items()},
                     "added_ms": added(samples, "imagegate", "raw_aiohttp")}
    return out
