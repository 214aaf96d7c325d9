"""The ComfyUI stand-in's queue and executor: one prompt at a time, its messages on the
websocket, its images saved, its history written.

What a prompt's run sends, in order [CE ``execute_async``, CM ``prompt_worker`` and
``hijack_progress``, CS ``send_sync``/``send_image``]: ``execution_start``,
``execution_cached``, then per node ``executing`` (and for the sampler ``progress`` per step,
with a binary preview per step when a preview method is on), ``executed`` for an output
node, then ``execution_success`` (or ``execution_error`` / ``execution_interrupted``), the
history written, and last ``executing`` with ``node: null``. ``status`` is broadcast on
every queue change. ``executing``, ``executed`` and the ``execution_*`` messages go only to
the prompt's ``client_id`` socket (none without one, except ``execution_interrupted``,
broadcast); ``progress`` and previews go to it, or to every socket when there is none.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from imagegate.testing.comfyui_nodes import order
from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs

__all__ = ["ComfyState", "Queued", "run_queue"]


@dataclass
class Queued:
    number: float
    prompt_id: str
    graph: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    def item(self) -> list[Any]:
        """As ``/queue`` and ``/history`` show it: 5 elements (the sensitive 6th stripped) [CS]."""
        return [self.number, self.prompt_id, self.graph, self.extra_data, self.outputs]


@dataclass
class ComfyState:
    knobs: Knobs
    step_s: float = 0.0
    preview_method: str = "auto"
    legacy: bool = False
    sockets: dict[str, web.WebSocketResponse] = field(default_factory=dict)
    metadata: set[str] = field(default_factory=set)  # sids that announced supports_preview_metadata
    pending: list[tuple[float, int, Queued]] = field(default_factory=list)
    running: Queued | None = None
    history: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    files: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    counter: int = 0
    images: int = 0
    interrupt: str | None = None  # "*" (everything) or a prompt id
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def enqueue(self, item: Queued) -> None:
        self.counter += 1
        heapq.heappush(self.pending, (item.number, self.counter, item))
        self.wake.set()

    def queue_remaining(self) -> int:
        return len(self.pending) + (1 if self.running else 0)

    async def send(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        """To ``sid``'s socket; to every socket when ``sid`` is None [CS ``send_json``]."""
        targets = [self.sockets[sid]] if sid in self.sockets else ([] if sid else list(self.sockets.values()))
        for ws in targets:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json({"type": event, "data": data})

    async def send_preview(self, image: bytes, sid: str | None, meta: dict[str, Any]) -> None:
        """A preview frame: type 4 with metadata to a socket that announced it, else type 1
        (JPEG) [CS ``send_image``, ``send_image_with_metadata``]."""
        targets = [sid] if sid in self.sockets else ([] if sid else list(self.sockets))
        for target in targets:
            if target in self.metadata:
                blob = json.dumps({**meta, "image_type": "image/jpeg"}).encode()
                frame = struct.pack(">I", 4) + struct.pack(">I", len(blob)) + blob + image
            else:
                frame = struct.pack(">I", 1) + struct.pack(">I", 1) + image
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.sockets[target].send_bytes(frame)

    async def status(self) -> None:
        await self.send("status", {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}, None)


async def run_queue(state: ComfyState) -> None:
    """The prompt worker: one prompt at a time, lowest ``number`` first [CM ``prompt_worker``]."""
    while True:
        while not state.pending:
            state.wake.clear()
            await state.wake.wait()
        _, _, item = heapq.heappop(state.pending)
        state.running = item
        await state.status()
        try:
            await _execute(state, item)
        finally:
            state.running = None
            if state.interrupt in ("*", item.prompt_id):
                state.interrupt = None
            await state.status()


def _now() -> int:
    return int(time.time() * 1000)


def _value(values: dict[str, list[Any]], raw: Any) -> Any:
    if isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], str):
        return values[raw[0]][raw[1]]
    return raw


async def _execute(state: ComfyState, item: Queued) -> None:
    pid, sid = item.prompt_id, item.extra_data.get("client_id")
    messages: list[list[Any]] = []

    async def message(event: str, data: dict[str, Any], *, broadcast: bool = False) -> None:
        messages.append([event, data])
        if sid or broadcast:
            await state.send(event, data, sid)

    await message("execution_start", {"prompt_id": pid, "timestamp": _now()})
    await message("execution_cached", {"nodes": [], "prompt_id": pid, "timestamp": _now()})
    if state.knobs.take("drop_socket", "/ws") is not None and sid in state.sockets:
        await state.sockets[sid].close()  # the socket goes; the prompt runs on
    values: dict[str, list[Any]] = {}
    outputs: dict[str, dict[str, Any]] = {}
    ended: tuple[str, dict[str, Any]] | None = None
    for node_id in order(item.graph, item.outputs):
        node = item.graph[node_id]
        cls = node["class_type"]
        args = {name: _value(values, raw) for name, raw in node["inputs"].items()}
        if sid:
            await state.send("executing", {"node": node_id, "display_node": node_id, "prompt_id": pid}, sid)
        if cls == "KSampler":
            ended = await _sample(state, item, node_id, args)
        if ended is not None:
            break
        values[node_id] = _compute(cls, args)
        if cls in ("SaveImage", "PreviewImage"):
            outputs[node_id] = {"images": _save(state, cls, args)}
            if sid:
                await state.send("executed", {"node": node_id, "display_node": node_id, "output": outputs[node_id],
                                              "prompt_id": pid}, sid)
    if ended is None:
        await message("execution_success", {"prompt_id": pid, "timestamp": _now()})
    else:
        await message(ended[0], ended[1], broadcast=ended[0] == "execution_interrupted" and not sid)
    state.history[pid] = {
        "prompt": item.item(), "outputs": outputs,
        "status": {"status_str": "success" if ended is None else "error", "completed": ended is None,
                   "messages": messages},
        "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in outputs},
    }
    if sid:
        await state.send("executing", {"node": None, "prompt_id": pid}, sid)


async def _sample(state: ComfyState, item: Queued, node_id: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The sampler's steps: progress and previews; the end message when it fails or is stopped."""
    pid, sid = item.prompt_id, item.extra_data.get("client_id")
    failure = state.knobs.take("execution_error", "/prompt")
    method = item.extra_data.get("preview_method", state.preview_method)
    steps = int(args["steps"])
    latent = args["latent_image"]
    for step in range(1, steps + 1):
        if state.interrupt in ("*", pid):
            return "execution_interrupted", {"prompt_id": pid, "node_id": node_id, "node_type": "KSampler",
                                             "executed": [], "timestamp": _now()}
        if state.step_s:
            await asyncio.sleep(state.step_s)
        await state.send("progress", {"value": step, "max": steps, "prompt_id": pid, "node": node_id}, sid)
        if method != "none":
            preview = make_image(max(16, latent["w"] // 8), max(16, latent["h"] // 8), str(args["positive"]), step, "jpeg")
            await state.send_preview(preview, sid, {"node_id": node_id, "prompt_id": pid, "display_node_id": node_id,
                                                    "parent_node_id": None, "real_node_id": node_id})
    if failure is not None:
        return "execution_error", {
            "prompt_id": pid, "node_id": node_id, "node_type": "KSampler", "executed": [],
            "exception_message": str(failure.get("message", "CUDA out of memory")),
            "exception_type": str(failure.get("type", "torch.OutOfMemoryError")), "traceback": ["..."],
            "current_inputs": {}, "current_outputs": [], "timestamp": _now(),
        }
    return None


def _compute(cls: str, args: dict[str, Any]) -> list[Any]:
    """What a node outputs, by output index (enough to draw the final image)."""
    if cls == "CheckpointLoaderSimple":
        return [args["ckpt_name"]] * 3
    if cls == "LoraLoader":
        return [args["model"], args["clip"]]
    if cls == "CLIPTextEncode":
        return [str(args["text"])]
    if cls == "EmptyLatentImage":
        return [{"w": int(args["width"]), "h": int(args["height"]), "batch": int(args["batch_size"])}]
    if cls == "KSampler":
        return [{**args["latent_image"], "seed": int(args["seed"]), "text": args["positive"]}]
    if cls == "VAEDecode":
        return [args["samples"]]
    return []


def _save(state: ComfyState, cls: str, args: dict[str, Any]) -> list[dict[str, str]]:
    """Draw the batch and store it: ``output`` for SaveImage, ``temp`` for PreviewImage [CN]."""
    image = args["images"]
    saved = []
    for i in range(image["batch"]):
        state.images += 1
        if cls == "SaveImage":
            name, kind = f"{args.get('filename_prefix', 'ComfyUI')}_{state.images:05}_.png", "output"
        else:
            name, kind = f"ComfyUI_temp_abcde_{state.images:05}_.png", "temp"
        state.files[(kind, "", name)] = make_image(image["w"], image["h"], image["text"], image["seed"] + i, "png")
        saved.append({"filename": name, "subfolder": "", "type": kind})
    return saved
