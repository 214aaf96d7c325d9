"""Well-known public text-to-image Spaces and how our request fields map to their parameters.

Used when no config file is given: ``HF_SPACES="owner/a,owner/b"`` picks Spaces from this
table (or any Space, with the default mapping), and with no backend configured at all the
whole table serves as the zero-key default.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KNOWN_SPACES", "space_backend_tables"]

# api_name, the mapping of ImageRequest fields to the Space's parameter names, and constants.
KNOWN_SPACES: dict[str, dict[str, Any]] = {
    "black-forest-labs/FLUX.1-schnell": {
        "api_name": "/infer",
        "inputs": {
            "prompt": "prompt",
            "seed": "seed",
            "width": "width",
            "height": "height",
            "steps": "num_inference_steps",
        },
        "fixed": {"randomize_seed": False},
    },
    "stabilityai/stable-diffusion-3.5-large": {
        "api_name": "/infer",
        "inputs": {
            "prompt": "prompt",
            "negative_prompt": "negative_prompt",
            "seed": "seed",
            "width": "width",
            "height": "height",
            "guidance_scale": "guidance_scale",
            "steps": "num_inference_steps",
        },
        "fixed": {"randomize_seed": False},
    },
}


def space_backend_tables(spec: str | None, *, have_others: bool) -> list[dict[str, Any]]:
    """Backend tables for ``HF_SPACES`` (comma-separated ids), or the defaults when none."""
    if spec:
        ids = [s.strip() for s in spec.split(",") if s.strip()]
    elif not have_others:
        ids = list(KNOWN_SPACES)
    else:
        ids = []
    tables = []
    for i, space in enumerate(ids):
        known = KNOWN_SPACES.get(space, {})
        table: dict[str, Any] = {
            "name": space.split("/")[-1].lower(),
            "kind": "hf_space",
            "space": space,
            "priority": 100 + i,
        }
        table.update(known)
        tables.append(table)
    return tables
