"""A ComfyUI workflow: the settings, the built-in txt2img graph, which node input takes each
request field (given, or found by node class), and the graph a request becomes (pure).

API format (what "Save (API Format)" writes, and what ``POST /prompt`` takes): ``{"<node
id>": {"class_type": "...", "inputs": {"name": value | ["<node id>", <output index>]}}}``;
a two-item list is a link to another node's output [CE ``validate_inputs``]. The UI's own
format (``{"nodes": [...], "links": [...]}``) is refused with a line saying how to export.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from imagegate.config import HttpBackendSettings, url_from_env
from imagegate.errors import ConfigError
from imagegate.models import ImageRequest

__all__ = [
    "BUILT_IN",
    "FIELDS",
    "ComfyUISettings",
    "Graph",
    "Targets",
    "build_prompt",
    "find_targets",
    "from_env",
    "load_workflow",
]

Graph = dict[str, dict[str, Any]]
Targets = dict[str, tuple[tuple[str, str], ...]]  # request field -> ((node id, input name), ...)
FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height", "n", "model", "sampler")
_SAMPLERS = {"KSampler": "seed", "KSamplerAdvanced": "noise_seed"}  # class -> its seed input
_MAX_HOPS = 8  # links followed from the sampler back to the checkpoint loader (LoRA loaders...)

# The txt2img graph of ComfyUI's script_examples/basic_api_example.py [CX] (node ids as
# there); steps 20 and cfg 7.0 (KSampler's own default is 8.0 [CN]; 7 is the SD default
# the other backends use), euler/normal; the checkpoint, prompt, size and seed are filled in.
BUILT_IN: Graph = {
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 0, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ""}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "imagegate", "images": ["8", 0]}},
}


class ComfyUISettings(HttpBackendSettings):
    """A ComfyUI server (``python main.py --listen``)."""

    kind: Literal["comfyui"] = "comfyui"
    base_url: str = "http://127.0.0.1:8188"
    connect_timeout_s: float = Field(default=5.0, gt=0, le=600)
    read_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    workflow: Path | None = None  # an API-format workflow file; None: the built-in txt2img
    inputs: dict[str, str | list[str]] = Field(default_factory=dict)  # field -> "node.input"
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    api_key_env: str | None = None  # a reverse proxy's Bearer key (ComfyUI itself has none)

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for field, where in value.items():
            if field not in FIELDS:
                raise ValueError(f"unknown field {field!r} (known: {', '.join(FIELDS)})")
            for target in [where] if isinstance(where, str) else where:
                if target.count(".") < 1 or not all(target.split(".", 1)):
                    raise ValueError(f"{field} = {target!r}: write \"<node id>.<input name>\", e.g. \"3.seed\"")
        return value

    def with_files_from(self, folder: Path | None) -> ComfyUISettings:
        if self.workflow is None:
            find_targets(BUILT_IN, self.inputs)
            return self
        path = self.workflow.expanduser()
        if not path.is_absolute() and folder is not None:
            path = folder / path
        find_targets(load_workflow(path), self.inputs)  # ConfigError naming what is wrong
        return self.model_copy(update={"workflow": path})

    def secret_env_names(self) -> dict[str, str]:
        return {"api_key": self.api_key_env} if self.api_key_env else {}

    def required_secrets(self) -> tuple[str, ...]:
        return tuple(self.secret_env_names())


def from_env(env: Mapping[str, str], have_others: bool) -> list[dict[str, Any]]:
    """``COMFYUI_URL`` alone configures a local ComfyUI (priority 5: local, after A1111)."""
    if not env.get("COMFYUI_URL", "").strip():
        return []
    return [{"name": "comfyui", "kind": "comfyui", "base_url": url_from_env(env, "COMFYUI_URL"), "priority": 5}]


def load_workflow(path: Path) -> Graph:
    """The API-format graph in ``path``; ConfigError naming the key and the file otherwise."""
    where = f"key 'workflow': {path}"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: not JSON ({exc})") from None
    if isinstance(doc, dict) and "nodes" in doc and "links" in doc:
        raise ConfigError(f"{where}: this is the UI's workflow format; export it with "
                          "'Save (API Format)' (enable the dev mode options in older versions)")
    if isinstance(doc, dict) and isinstance(doc.get("prompt"), dict):
        doc = doc["prompt"]  # a saved POST /prompt body
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{where}: not an API-format workflow (an object of nodes)")
    for node_id, node in doc.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) \
                or not isinstance(node.get("inputs"), dict):
            raise ConfigError(f"{where}: node {node_id!r} has no 'class_type' and 'inputs'")
    return doc


def _literal(graph: Graph, node: str, name: str) -> bool:
    """Whether ``node`` has input ``name`` holding a value (not a link)."""
    inputs = graph.get(node, {}).get("inputs", {})
    value = inputs.get(name)
    return name in inputs and not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str))


def _linked(graph: Graph, node: str, name: str) -> str | None:
    value = graph.get(node, {}).get("inputs", {}).get(name)
    return value[0] if isinstance(value, list) and len(value) == 2 and str(value[0]) in graph else None


def _checkpoint(graph: Graph, node: str | None) -> str | None:
    """The CheckpointLoaderSimple a sampler's ``model`` comes from (through LoRA loaders...)."""
    for _ in range(_MAX_HOPS):
        if node is None:
            return None
        if graph[node]["class_type"] == "CheckpointLoaderSimple":
            return node
        node = _linked(graph, node, "model")
    return None


def _by_class(graph: Graph) -> Targets:
    """Targets found by node class: through the one sampler's links, else the one node of a class."""
    found: dict[str, tuple[str, str]] = {}
    samplers = [n for n, node in graph.items() if node["class_type"] in _SAMPLERS]
    if len(samplers) == 1:
        s = samplers[0]
        for field, name in (("seed", _SAMPLERS[graph[s]["class_type"]]), ("steps", "steps"),
                            ("guidance_scale", "cfg"), ("sampler", "sampler_name")):
            if _literal(graph, s, name):
                found[field] = (s, name)
        for field, link in (("prompt", "positive"), ("negative_prompt", "negative")):
            text = _linked(graph, s, link)
            if text is not None and graph[text]["class_type"] == "CLIPTextEncode" and _literal(graph, text, "text"):
                found[field] = (text, "text")
        latent = _linked(graph, s, "latent_image")
        if latent is not None:
            for field, name in (("width", "width"), ("height", "height"), ("n", "batch_size")):
                if _literal(graph, latent, name):
                    found[field] = (latent, name)
        ckpt = _checkpoint(graph, _linked(graph, s, "model"))
        if ckpt is not None and _literal(graph, ckpt, "ckpt_name"):
            found["model"] = (ckpt, "ckpt_name")
    else:  # several samplers (a hires-fix pass) or none: what they share, else the one of a class
        for field, link in (("prompt", "positive"), ("negative_prompt", "negative")):
            texts = {_linked(graph, s, link) for s in samplers}
            (text,) = texts if len(texts) == 1 else (None,)
            if text is not None and graph[text]["class_type"] == "CLIPTextEncode" and _literal(graph, text, "text"):
                found[field] = (text, "text")
        for field, cls, name in (("prompt", "CLIPTextEncode", "text"), ("width", "EmptyLatentImage", "width"),
                                 ("height", "EmptyLatentImage", "height"), ("n", "EmptyLatentImage", "batch_size"),
                                 ("model", "CheckpointLoaderSimple", "ckpt_name")):
            nodes = [n for n, node in graph.items() if node["class_type"] == cls and _literal(graph, n, name)]
            if len(nodes) == 1:
                found.setdefault(field, (nodes[0], name))
    return {field: (target,) for field, target in found.items()}


def find_targets(graph: Graph, given: Mapping[str, str | list[str]]) -> Targets:
    """Which node input takes each field: ``given`` ("node.input", or a list of them), the
    rest found by node class; ConfigError when a given one is not in the graph or nothing
    takes the prompt."""
    targets = _by_class(graph)
    for field, where in given.items():
        pairs = []
        for target in [where] if isinstance(where, str) else where:
            node, _, name = target.partition(".")
            if node not in graph:
                raise ConfigError(f"key 'inputs': {field} = {target!r}: the workflow has no node {node!r}")
            if not _literal(graph, node, name):
                have = ", ".join(k for k in graph[node]["inputs"] if _literal(graph, node, k)) or "none"
                raise ConfigError(f"key 'inputs': {field} = {target!r}: node {node} "
                                  f"({graph[node]['class_type']}) has no value input {name!r} (it has: {have})")
            pairs.append((node, name))
        targets[field] = tuple(pairs)
    if "prompt" not in targets:
        raise ConfigError("key 'inputs': no node of the workflow takes the prompt (found none by class: one "
                          "KSampler whose positive input is a CLIPTextEncode); map it: inputs = "
                          "{ prompt = \"<node>.text\" }")
    return targets


def build_prompt(
    request: ImageRequest, graph: Graph, targets: Targets, *, checkpoint: str | None, seed: int | None = None
) -> tuple[Graph, int | None]:
    """The graph for ``request`` (a copy, ``targets`` filled in) and the seed it carries: the
    request's, else a random one (ComfyUI has no "random": a fixed seed would hit its cache)."""
    if "seed" in targets and seed is None:
        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
    values: dict[str, Any] = {
        "prompt": request.prompt, "negative_prompt": request.negative_prompt or None, "seed": seed,
        "steps": request.steps, "guidance_scale": request.guidance_scale, "width": request.width,
        "height": request.height, "n": request.n, "model": request.model or checkpoint,
        "sampler": request.sampler,
    }
    out = copy.deepcopy(graph)
    for field, pairs in targets.items():
        value = values.get(field)
        if value is None:
            continue  # the workflow's own value stays
        for node, name in pairs:
            out[node]["inputs"][name] = value
    return out, seed if "seed" in targets else None
