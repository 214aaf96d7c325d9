"""Well-known public text-to-image Spaces and how our request fields map to their parameters.

Used when no config file is given: ``HF_SPACES="owner/a,owner/b"`` picks Spaces from this
table (or any Space, with the default mapping ``prompt -> prompt`` and the first endpoint
that returns an image), and with no backend configured at all the whole table serves as the
zero-key default. A ``[[backend]]`` table with ``kind = "hf_space"`` and a ``space`` from this
table also takes its ``api_name``/``inputs``/``fixed`` from here unless it sets them.

Parameter names were read from public ``gradio_client`` calls against these Spaces (``predict(
prompt=..., seed=..., randomize_seed=..., width=..., height=..., num_inference_steps=...,
api_name="/infer")``), whose ``/infer`` answers ``(image, seed)``. Spaces change: when one
renames a parameter, ``imagegate backends`` reports it as ``rejected`` with the Space's own
parameter list, and a TOML table with ``inputs`` overrides the built-in mapping.

``randomize_seed = false`` is fixed so that the seed we send (the caller's, or one we draw)
is the seed used, and the image can be reproduced.
"""

from __future__ import annotations

import copy
import re
from typing import Any

__all__ = ["KNOWN_SPACES", "known_space", "space_backend_tables", "space_host"]

_FLUX_INPUTS = {
    "prompt": "prompt",
    "seed": "seed",
    "width": "width",
    "height": "height",
    "steps": "num_inference_steps",
}
_SD3_INPUTS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "seed": "seed",
    "width": "width",
    "height": "height",
    "guidance_scale": "guidance_scale",
    "steps": "num_inference_steps",
}

# space id -> api_name, the mapping of ImageRequest fields to the Space's parameter names,
# and constant arguments. Order matters: it is the zero-key default's failover order.
KNOWN_SPACES: dict[str, dict[str, Any]] = {
    "black-forest-labs/FLUX.1-schnell": {
        "api_name": "/infer",
        "inputs": _FLUX_INPUTS,
        "fixed": {"randomize_seed": False},
    },
    "stabilityai/stable-diffusion-3.5-large": {
        "api_name": "/infer",
        "inputs": _SD3_INPUTS,
        "fixed": {"randomize_seed": False},
    },
    "stabilityai/stable-diffusion-3-medium": {
        "api_name": "/infer",
        "inputs": _SD3_INPUTS,
        "fixed": {"randomize_seed": False},
    },
}


def known_space(space: str | None) -> dict[str, Any] | None:
    """The built-in entry for ``space`` (case-insensitive, as the Hub treats ids), or None."""
    if not space:
        return None
    for key, entry in KNOWN_SPACES.items():
        if key.lower() == space.lower():
            return entry
    return None


def space_host(space: str) -> str:
    """The Gradio app URL of a hub Space: ``https://{owner}-{name}.hf.space``.

    The Hub derives the subdomain from the id: lower-cased, ``/`` becomes ``-``, and every
    character other than a letter, digit or ``-`` (notably ``.`` and ``_``) becomes ``-``;
    e.g. ``black-forest-labs/FLUX.1-schnell`` -> ``black-forest-labs-flux-1-schnell.hf.space``.
    (Very long ids get a shortened subdomain on the Hub; set ``src`` for those.)
    """
    subdomain = re.sub(r"[^a-z0-9-]", "-", space.lower().replace("/", "-"))
    return f"https://{subdomain}.hf.space"


def space_backend_tables(spec: str | None, *, have_others: bool) -> list[dict[str, Any]]:
    """Backend tables for ``HF_SPACES`` (comma-separated ids), or the defaults when none."""
    if spec:
        ids = [s.strip() for s in spec.split(",") if s.strip()]
    elif not have_others:
        ids = list(KNOWN_SPACES)
    else:
        ids = []
    tables = []
    names: set[str] = set()
    for i, space in enumerate(dict.fromkeys(ids)):
        name = space.split("/")[-1].lower()
        if name in names:  # owner/a and other/a: keep both, named apart
            name = space.replace("/", "-").lower()
        names.add(name)
        table: dict[str, Any] = {
            "name": name,
            "kind": "hf_space",
            "space": space,
            "priority": 100 + i,
        }
        table.update(copy.deepcopy(known_space(space) or {}))
        tables.append(table)
    return tables
