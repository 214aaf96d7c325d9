"""What ComfyUI answers, read (pure): ``/prompt`` errors, ``/history``, ``/queue``,
``/object_info``, ``/system_stats``, and the websocket's binary frames.

Sources as in the package docstring ([CS] server.py, [CE] execution.py, [CM] main.py,
[CPR] protocol.py, [CN] nodes.py; notes/providers_new.md §1).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagegate.backends.comfyui.workflow import Targets
from imagegate.backends.transport import error_for_status, error_text, parse_retry_after
from imagegate.capabilities import Capabilities, Span
from imagegate.errors import BackendError, BadResponse, Rejected, ServerError

__all__ = [
    "HistoryEntry",
    "Preview",
    "capabilities_for",
    "combo",
    "decode_frame",
    "error_from_response",
    "execution_error",
    "parse_history",
    "queue_place",
    "stats_detail",
]

_IMAGE_TYPES = {1: "jpeg", 2: "png"}  # [CS send_image] image_type of a PREVIEW_IMAGE frame
_MAX_RESOLUTION = 16384  # [CN] MAX_RESOLUTION: EmptyLatentImage's width/height max, step 8


@dataclass(frozen=True)
class HistoryEntry:
    """One prompt's ``/history`` record, read."""

    done: bool
    error: str | None
    images: list[dict[str, str]]  # {"filename", "subfolder", "type"}, "output" ones first


@dataclass(frozen=True)
class Preview:
    """A binary preview frame: its image, and the prompt it belongs to when the frame says."""

    data: bytes
    format: str
    prompt_id: str | None = None


def error_from_response(status: int, body: bytes, headers: Mapping[str, str], *, backend: str) -> BackendError:
    """The taxonomy's error for an answer from ComfyUI: a ``/prompt`` 400 (``{"error": {type,
    message, details}, "node_errors": {id: {errors, class_type}}}``, or the old ``{"error":
    "no prompt", "node_errors": []}``) is Rejected naming each node's problems [CS
    ``post_prompt``, CE ``validate_prompt``]."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status == 400 and isinstance(doc, dict) and "error" in doc:
        error = doc["error"]
        parts = [str(error.get("message") or error.get("type")) if isinstance(error, dict) else str(error)]
        nodes = doc.get("node_errors")
        for node_id, node in (nodes.items() if isinstance(nodes, dict) else []):
            problems = node.get("errors") if isinstance(node, dict) else None
            for problem in problems if isinstance(problems, list) else []:
                if isinstance(problem, dict):
                    parts.append(f"node {node_id} ({node.get('class_type')}): {problem.get('message')}: "
                                 f"{problem.get('details')}")
        if isinstance(error, dict) and not nodes and error.get("details") and error["details"] != parts[0]:
            parts.append(str(error["details"]))
        return Rejected(error_text("; ".join(parts), 600), backend=backend, status=status)
    text = error_text(body.decode("utf-8", "replace")) or "no detail"
    return error_for_status(status, text, backend=backend, retry_after=parse_retry_after(headers.get("Retry-After")))


def execution_error(data: Mapping[str, Any], *, prompt_id: str, backend: str) -> BackendError:
    """The error of an ``execution_error`` (or ``execution_interrupted``) message [CE]."""
    node = f"node {data.get('node_id')} ({data.get('node_type')})"
    if "exception_message" not in data:
        return ServerError(f"prompt {prompt_id} was interrupted at {node}", backend=backend)
    what = error_text(f"{data.get('exception_type')}: {data.get('exception_message')}", 300)
    return ServerError(f"prompt {prompt_id} failed at {node}: {what}", backend=backend)


def parse_history(body: Any, prompt_id: str, *, backend: str) -> HistoryEntry | None:
    """``GET /history/{id}``'s record of ``prompt_id``; None while it has none (``{}``) [CS]."""
    if not isinstance(body, dict):
        raise BadResponse("history answer is not a JSON object", backend=backend)
    entry = body.get(prompt_id)
    if not isinstance(entry, dict):
        return None
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    assert isinstance(status, dict)
    error = None
    if status.get("status_str") == "error":
        for name, data in status.get("messages") or []:
            if name in ("execution_error", "execution_interrupted") and isinstance(data, dict):
                error = str(execution_error(data, prompt_id=prompt_id, backend=backend))
        error = error or f"prompt {prompt_id} ended in error"
    images: list[dict[str, str]] = []
    outputs = entry.get("outputs") if isinstance(entry.get("outputs"), dict) else {}
    assert isinstance(outputs, dict)
    for output in outputs.values():
        for image in (output.get("images") or []) if isinstance(output, dict) else []:
            if isinstance(image, dict) and isinstance(image.get("filename"), str):
                images.append({"filename": image["filename"], "subfolder": str(image.get("subfolder") or ""),
                               "type": str(image.get("type") or "output")})
    saved = [i for i in images if i["type"] == "output"]
    return HistoryEntry(done=bool(status.get("completed", True)) or error is not None, error=error,
                        images=saved or images)


def queue_place(body: Any, prompt_id: str) -> tuple[str, int | None, int]:
    """Where ``prompt_id`` is in ``GET /queue``'s answer: ("running" | "pending" | "gone",
    its position among the pending (1 = next), how many prompts are queued or running)."""
    if not isinstance(body, dict):
        return "gone", None, 0
    running = [i for i in body.get("queue_running") or [] if isinstance(i, list) and len(i) > 1]
    pending = sorted((i for i in body.get("queue_pending") or [] if isinstance(i, list) and len(i) > 1),
                     key=lambda item: item[0] if isinstance(item[0], int | float) else 0)
    size = len(running) + len(pending)
    if any(i[1] == prompt_id for i in running):
        return "running", None, size
    for position, item in enumerate(pending, 1):
        if item[1] == prompt_id:
            return "pending", position, size
    return "gone", None, size


def combo(info: Any, node_class: str, name: str) -> list[str] | None:
    """The choices of input ``name`` in ``/object_info/{class}``'s answer: a V1 combo
    ``[[choices], {...}]`` or a V3 ``["COMBO", {"options": [...]}]`` [CS ``node_info``]."""
    node = info.get(node_class) if isinstance(info, dict) else None
    inputs = node.get("input") if isinstance(node, dict) else None
    if not isinstance(inputs, dict):
        return None
    for section in ("required", "optional"):
        spec = (inputs.get(section) or {}).get(name)
        if isinstance(spec, list) and spec:
            if isinstance(spec[0], list):
                return [str(c) for c in spec[0]]
            if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
                return [str(c) for c in spec[1].get("options") or []]
    return None


def capabilities_for(
    targets: Targets, classes: Mapping[str, str], *, models: list[str] | None, samplers: list[str] | None,
    source: str,
) -> Capabilities:
    """What the workflow takes: the fields it has a node input for; the ranges of the known
    node classes [CN]: EmptyLatentImage 16..16384 step 8, KSampler steps 1..10000 and cfg
    0..100, seed 0..2^64-1; PNG (SaveImage writes PNG)."""
    takes: list[str] = [f for f in ("negative_prompt", "steps", "guidance_scale", "seed", "sampler", "model")
                        if f in targets]
    sized = "width" in targets and "height" in targets
    if sized:
        takes.append("size")
    latent = {classes.get(targets[f][0][0]) for f in ("width", "height") if f in targets}
    sampler = classes.get(targets["steps"][0][0]) if "steps" in targets else None
    side = Span(min=16, max=_MAX_RESOLUTION, step=8) if sized and latent == {"EmptyLatentImage"} else None
    known = sampler in ("KSampler", "KSamplerAdvanced")
    return Capabilities(
        source=source, takes=tuple(takes), width=side, height=side,
        steps=Span(min=1, max=10000, step=1) if known else None,
        guidance_scale=Span(min=0, max=100) if known and "guidance_scale" in targets else None,
        seed=Span(min=0, max=2**64 - 1, step=1) if "seed" in targets else None,
        max_n=None if "n" in targets else 1, formats=("png",),
        models=tuple(models) if models is not None else None,
        samplers=tuple(samplers) if samplers is not None else None,
        defaults={"steps": 20, "guidance_scale": 7.0, "sampler": "euler"} if "sampler" in targets else {},
    )


def decode_frame(frame: bytes) -> Preview | None:
    """A binary websocket frame [CS ``encode_bytes``, CPR]: PREVIEW_IMAGE (1) ``[u32 1][u32
    image type][image]``, PREVIEW_IMAGE_WITH_METADATA (4) ``[u32 4][u32 n][n bytes of JSON
    with prompt_id, image_type][image]``; None for any other (TEXT progress, 3) or a short one."""
    if len(frame) < 8:
        return None
    (event,) = struct.unpack(">I", frame[:4])
    if event == 1:
        (kind,) = struct.unpack(">I", frame[4:8])
        return Preview(frame[8:], _IMAGE_TYPES.get(kind, "jpeg")) if len(frame) > 8 else None
    if event == 4:
        (size,) = struct.unpack(">I", frame[4:8])
        try:
            meta = json.loads(frame[8:8 + size])
        except ValueError:
            return None
        fmt = str(meta.get("image_type") or "image/jpeg").removeprefix("image/") if isinstance(meta, dict) else "jpeg"
        pid = meta.get("prompt_id") if isinstance(meta, dict) else None
        data = frame[8 + size:]
        return Preview(data, fmt, pid if isinstance(pid, str) else None) if data else None
    return None


def stats_detail(body: Any, *, backend: str) -> str:
    """The probe's detail from ``GET /system_stats`` [CS]: version, devices, free VRAM."""
    if not isinstance(body, dict) or not isinstance(body.get("system"), dict):
        raise BadResponse("/system_stats answer has no 'system' object", backend=backend)
    system = body["system"]
    devices = [d for d in body.get("devices") or [] if isinstance(d, dict)]
    shown = ", ".join(
        f"{d.get('name')}" + (f" ({int(d['vram_free']) // 2**20} MiB free)" if isinstance(d.get("vram_free"), int) else "")
        for d in devices[:2]
    )
    return f"ComfyUI {system.get('comfyui_version') or '?'}" + (f" on {shown}" if shown else "")
