"""The ComfyUI stand-in's nodes: their ``INPUT_TYPES`` (served by ``/object_info``), the checks
``POST /prompt`` makes against them, and what each computes.

Sources (notes/providers_new.md §1.2-1.3, 1.5): ``nodes.py`` [CN] for the nodes' inputs,
ranges and outputs (``MAX_RESOLUTION = 16384``); ``execution.py`` [CE] ``validate_prompt`` /
``validate_inputs`` for the checks and the exact error objects; ``comfy/samplers.py`` [CSa]
for sampler and scheduler names. Only ``min``/``max`` are checked, never ``step`` [CE];
values are coerced (``int()``, ``float()``, ``str()``) before they are compared; a two-item
list is a link ``[node id, output index]``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "CHECKPOINTS",
    "LORAS",
    "NODES",
    "SAMPLERS",
    "SCHEDULERS",
    "ValidationFailed",
    "canonical_uuid",
    "object_info",
    "order",
    "validate",
]

CHECKPOINTS = ["v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"]
LORAS = ["add_detail.safetensors"]
SAMPLERS = ["euler", "euler_cfg_pp", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
            "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm",
            "ipndm", "deis", "res_multistep", "er_sde", "ddim", "uni_pc", "uni_pc_bh2"]
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
              "linear_quadratic", "kl_optimal"]
_RES = {"min": 16, "max": 16384, "step": 8}

# class -> (required inputs, output types, output node?, display name, category) [CN]
NODES: dict[str, tuple[dict[str, Any], tuple[str, ...], bool, str, str]] = {
    "CheckpointLoaderSimple": ({"ckpt_name": [CHECKPOINTS, {"tooltip": "The name of the checkpoint (model) to load."}]},
                               ("MODEL", "CLIP", "VAE"), False, "Load Checkpoint", "loaders"),
    "LoraLoader": ({"model": ["MODEL"], "clip": ["CLIP"], "lora_name": [LORAS, {}],
                    "strength_model": ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}],
                    "strength_clip": ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}]},
                   ("MODEL", "CLIP"), False, "Load LoRA", "loaders"),
    "CLIPTextEncode": ({"text": ["STRING", {"multiline": True, "dynamicPrompts": True}], "clip": ["CLIP"]},
                       ("CONDITIONING",), False, "CLIP Text Encode (Prompt)", "conditioning"),
    "EmptyLatentImage": ({"width": ["INT", {"default": 1024, **_RES}], "height": ["INT", {"default": 1024, **_RES}],
                          "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]},
                         ("LATENT",), False, "Empty Latent Image", "latent"),
    "KSampler": ({"model": ["MODEL"],
                  "seed": ["INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}],
                  "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
                  "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}],
                  "sampler_name": [SAMPLERS, {}], "scheduler": [SCHEDULERS, {}],
                  "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "latent_image": ["LATENT"],
                  "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]},
                 ("LATENT",), False, "KSampler", "sampling"),
    "VAEDecode": ({"samples": ["LATENT"], "vae": ["VAE"]}, ("IMAGE",), False, "VAE Decode", "latent"),
    "SaveImage": ({"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
                  (), True, "Save Image", "image"),
    "PreviewImage": ({"images": ["IMAGE"]}, (), True, "Preview Image", "image"),
}
_COERCE = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


class ValidationFailed(Exception):
    """A graph ``POST /prompt`` refuses: the 400 body [CE ``validate_prompt``]."""

    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.body = {"error": error, "node_errors": node_errors}


def canonical_uuid(text: Any) -> bool:
    """A canonical lowercase hyphenated UUID [CS ``post_prompt``]."""
    try:
        return isinstance(text, str) and str(uuid.UUID(text)) == text
    except ValueError:
        return False


def object_info(cls: str) -> dict[str, Any]:
    """``/object_info/{cls}``'s entry [CS ``node_info``]."""
    required, outputs, output_node, display, category = NODES[cls]
    return {"input": {"required": required}, "input_order": {"required": list(required)}, "is_input_list": False,
            "output": list(outputs), "output_is_list": [False] * len(outputs), "output_name": list(outputs),
            "name": cls, "display_name": display, "description": "", "python_module": "nodes",
            "category": category, "output_node": output_node, "has_intermediate_output": False,
            "search_aliases": []}


def _error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _title(node_id: str, node: Mapping[str, Any]) -> str:
    meta = node.get("_meta")
    return str(meta.get("title")) if isinstance(meta, dict) and meta.get("title") else f"ID #{node_id}"


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def _check_input(graph: Mapping[str, Any], name: str, spec: list[Any], value: Any) -> dict[str, Any] | None:
    """One input's problem [CE ``validate_inputs``], None when it is fine."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(value, list):
        if not _is_link(value):
            return _error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                          f"{name}", input_name=name, input_config=spec, received_value=value)
        source = graph.get(value[0])
        outputs = NODES[source["class_type"]][1] if isinstance(source, dict) and source.get("class_type") in NODES else ()
        got = outputs[value[1]] if isinstance(value[1], int) and 0 <= value[1] < len(outputs) else None
        if got != kind:
            return _error("return_type_mismatch", "Return type mismatch between linked nodes",
                          f"{name}, received_type({got}) mismatch input_type({kind})", input_name=name,
                          input_config=spec, received_type=got, linked_node=value)
        return None
    if isinstance(kind, list):
        if value not in kind:
            shown = f"(list of length {len(kind)})" if len(kind) > 20 else str(kind)
            return _error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {shown}",
                          input_name=name, input_config=spec if len(kind) <= 20 else None, received_value=value)
        return None
    if kind not in _COERCE:
        return _error("return_type_mismatch", "Return type mismatch between linked nodes",
                      f"{name}, received_type(literal) mismatch input_type({kind})", input_name=name)
    try:
        value = _COERCE[kind](value)
    except (TypeError, ValueError) as exc:
        return _error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                      f"{name}, {value}, {exc}", input_name=name, input_config=spec, received_value=value)
    if "min" in options and value < options["min"]:
        return _error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}", name,
                      input_name=name, input_config=spec, received_value=value)
    if "max" in options and value > options["max"]:
        return _error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}", name,
                      input_name=name, input_config=spec, received_value=value)
    return None


def order(graph: Mapping[str, Any], outputs: Sequence[str]) -> list[str]:
    """The nodes the outputs need, each after the nodes it links to."""
    done: list[str] = []

    def visit(node_id: str, depth: int) -> None:
        if node_id in done or depth > len(graph):
            return
        for value in graph[node_id]["inputs"].values():
            if _is_link(value) and value[0] in graph:
                visit(value[0], depth + 1)
        done.append(node_id)

    for out in outputs:
        visit(out, 0)
    return done


def validate(graph: Any) -> list[str]:
    """The output node ids of a valid graph; ValidationFailed otherwise [CE ``validate_prompt``]."""
    if not isinstance(graph, dict):
        raise ValidationFailed(_error("invalid_prompt", "Invalid prompt", "the prompt must be an object"), {})
    for node_id, node in graph.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise ValidationFailed(_error(
                "missing_node_type", f"Node '{_title(node_id, node if isinstance(node, dict) else {})}' has no "
                "class_type. The workflow may be corrupted or a custom node is missing.", f"Node ID '#{node_id}'",
                node_id=node_id, class_type=None, node_title=_title(node_id, {})), {})
        if node["class_type"] not in NODES:
            raise ValidationFailed(_error(
                "missing_node_type", f"Node '{_title(node_id, node)}' not found. The custom node may not be installed.",
                f"Node ID '#{node_id}'", node_id=node_id, class_type=node["class_type"],
                node_title=_title(node_id, node)), {})
    outputs = [n for n, node in graph.items() if NODES[node["class_type"]][2]]
    if not outputs:
        raise ValidationFailed(_error("prompt_no_outputs", "Prompt has no outputs", ""), {})
    node_errors: dict[str, Any] = {}
    for node_id in order(graph, outputs):
        node = graph[node_id]
        required = NODES[node["class_type"]][0]
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        problems = []
        for name, spec in required.items():
            if name not in inputs:
                problems.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
            elif (problem := _check_input(graph, name, spec, inputs[name])) is not None:
                problems.append(problem)
        if problems:
            node_errors[node_id] = {"errors": problems, "dependent_outputs": outputs, "class_type": node["class_type"]}
    if node_errors:
        details = "\n".join(f"{e['message']}: {e['details']}" for n in node_errors.values() for e in n["errors"])
        raise ValidationFailed(_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
                               node_errors)
    return outputs
