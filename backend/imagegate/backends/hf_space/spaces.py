"""Well-known public text-to-image Spaces, how our request fields map to their parameters,
and what the Hub's runtime stages mean (one table, read by the backend and by diagnose).

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from imagegate.backends.hf_space.discover import Interface, Param
from imagegate.backends.transport import error_text
from imagegate.errors import BackendError, Unavailable

__all__ = [
    "INTERFACES",
    "KNOWN_SPACES",
    "STAGES",
    "StageGroup",
    "known_interface",
    "known_space",
    "runtime_detail",
    "space_backend_tables",
    "space_host",
    "stage_error",
    "stage_group",
]

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


# ---------------------------------------------------------------- the Spaces' app.py

# Each known Space's /infer as its public app.py defines it: ``gr.on(triggers=[run_button.click,
# prompt.submit], fn=infer, inputs=[...], outputs=[result, seed])`` (so the api_name is the
# function's), ``result = gr.Image(label="Result", show_label=False)`` with no ``format=``
# (WebP: gradio's default since 4.44; the Spaces' gradio versions are UNCONFIRMED), and
# ``MAX_SEED = np.iinfo(np.int32).max``. Slider ranges are what gradio >= 5.39 enforces
# ("Value 128 is less than minimum value 256."). A text box with no initial value is a
# *required* API argument. No stored copy of any official app.py was found; the sources are
# copies of it, named per Space (notes/gradio.md §1). Checked against replicas of these
# files by tests/backends/test_space_replicas.py.
_MAX_SEED = 2**31 - 1


def _slider(name: str, lo: float, hi: float, step: float, value: float) -> Param:
    return Param(name, "Slider", lo, hi, step, value)


_SEED = _slider("seed", 0, _MAX_SEED, 1, 0)
_RANDOMIZE = Param("randomize_seed", "Checkbox", value=True)


def _stability_space(name: str, size: tuple[int, int, int], guidance: tuple[float, float],
                     steps: int) -> Interface:
    """The Stability Spaces' shared /infer: (prompt, negative_prompt, seed, randomize_seed,
    width, height, guidance_scale, num_inference_steps), sizes ``(min, max, step)`` with
    value 1024, guidance ``(max, value)`` from 0 in steps of 0.1, steps 1..50 with ``steps``."""
    lo, hi, step = size
    return Interface("/infer", (
        Param("prompt", "Textbox", required=True), Param("negative_prompt", "Textbox", required=True),
        _SEED, _RANDOMIZE, _slider("width", lo, hi, step, 1024), _slider("height", lo, hi, step, 1024),
        _slider("guidance_scale", 0.0, guidance[0], 0.1, guidance[1]),
        _slider("num_inference_steps", 1, 50, 1, steps),
    ), "webp", f"built-in: {name}'s app.py")


INTERFACES: dict[str, Interface] = {
    # infer(prompt, seed=42, randomize_seed=False, width=1024, height=1024,
    # num_inference_steps=4): the PR-branch page refs/pr/176 of the official Space, its
    # duplicates (arad1367/FLUX.1_For_Marketing_Advertising@8b46b5a, evalstate/flux1.schnell)
    # and a client call against the real Space (HoseinHasani/OoD_Spurious_Robustness
    # wb_api.py: api_name="/infer" with exactly these keywords). guidance is fixed at 0.0.
    "black-forest-labs/FLUX.1-schnell": Interface("/infer", (
        Param("prompt", "Textbox", required=True), _SEED, _RANDOMIZE,
        _slider("width", 256, 2048, 32, 1024), _slider("height", 256, 2048, 32, 1024),
        _slider("num_inference_steps", 1, 50, 1, 4),
    ), "webp", "built-in: FLUX.1-schnell's app.py"),
    # infer(prompt, negative_prompt, seed, randomize_seed, width, height, guidance_scale,
    # num_inference_steps); MAX_IMAGE_SIZE = 1344: Spaces duplicated from the official one
    # (philipp-zettl/stable-diffusion-3-medium@4601bb7) and connor33341/SD3M test.py (sends
    # negative_prompt). The slider rows come from a derivative copy: UNCONFIRMED for the
    # current official file.
    "stabilityai/stable-diffusion-3-medium": _stability_space(
        "stable-diffusion-3-medium", (256, 1344, 64), (10.0, 5.0), 28
    ),
    # infer(prompt, negative_prompt="", seed=42, ..., guidance_scale=4.5,
    # num_inference_steps=40); MAX_IMAGE_SIZE = 1024; the negative-prompt box is hidden
    # (visible=False) yet still a required API input: the official Space's one commit 6e5e1d5
    # "SD3.5 Large Public Release" (151 lines), its header confirmed by Brian-A/text-to-image
    # @bfc8aa9, the full text from PRITHIVSAKTHIUR/SD3.5-Large-LoRA-Tester app.py.
    "stabilityai/stable-diffusion-3.5-large": _stability_space(
        "stable-diffusion-3.5-large", (512, 1024, 32), (7.5, 4.5), 40
    ),
}


def known_interface(space: str | None) -> Interface | None:
    """The built-in interface of ``space`` (case-insensitive), or None."""
    for key, interface in INTERFACES.items():
        if space and key.lower() == space.lower():
            return interface
    return None


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


# ---------------------------------------------------------------- the Hub's runtime stages

GroupName = Literal["running", "asleep", "starting", "paused", "broken", "unknown"]


@dataclass(frozen=True)
class StageGroup:
    """What a runtime stage means: whether the Space serves now, and if not, how long
    before it is worth asking again (a cold start takes minutes; a broken Space needs its
    owner)."""

    name: GroupName
    serves: bool
    retry_after_s: float | None


RUNNING = StageGroup("running", True, None)
ASLEEP = StageGroup("asleep", False, 120.0)
STARTING = StageGroup("starting", False, 30.0)
PAUSED = StageGroup("paused", False, 1800.0)
BROKEN = StageGroup("broken", False, 1800.0)
UNKNOWN = StageGroup("unknown", False, 60.0)

# huggingface_hub's SpaceStage (hf_api.py, 2.4), plus SLEEPING, which slept free Spaces
# report although the enum lacks it (providers.md §4, UNCONFIRMED from a primary source).
STAGES: dict[str, StageGroup] = {
    "RUNNING": RUNNING,
    "RUNNING_BUILDING": RUNNING,
    "RUNNING_APP_STARTING": RUNNING,
    "SLEEPING": ASLEEP,
    "STOPPED": ASLEEP,
    "BUILDING": STARTING,
    "APP_STARTING": STARTING,
    "PAUSED": PAUSED,
    "NO_APP_FILE": BROKEN,
    "CONFIG_ERROR": BROKEN,
    "BUILD_ERROR": BROKEN,
    "RUNTIME_ERROR": BROKEN,
    "DELETING": BROKEN,
}


def stage_group(stage: str) -> StageGroup:
    """The group of a runtime stage (case-insensitive); any other ``*_ERROR`` is broken, and
    a stage imagegate does not know is not trusted to serve."""
    stage = stage.upper()
    if stage in STAGES:
        return STAGES[stage]
    return BROKEN if stage.endswith("_ERROR") else UNKNOWN


def stage_error(
    runtime: Mapping[str, Any], *, space: str, backend: str, wake_requested: bool = False
) -> BackendError | None:
    """None when the Space can serve now, else the Unavailable error saying why (pure)."""
    stage = str(runtime.get("stage") or "UNKNOWN").upper()
    group = stage_group(stage)
    if group.serves:
        return None
    hint = runtime.get("errorMessage")
    detail = f": {error_text(str(hint), 200)}" if hint else ""
    retry = group.retry_after_s
    if group is ASLEEP:
        woke = " (wake-up requested)" if wake_requested else " (set wake_up = true to wake it)"
        message = f"Space {space} is {stage.lower()}; a cold start takes minutes{woke}"
    elif group is STARTING:
        message = f"Space {space} is {stage.lower().replace('_', ' ')}; not ready yet"
    elif group in (BROKEN, PAUSED):
        message = f"Space {space} is {stage}{detail}; it needs its owner to fix it"
    else:
        message = f"Space {space} is in stage {stage}"
    return Unavailable(message, backend=backend, retry_after=retry)


def runtime_detail(runtime: Mapping[str, Any]) -> str:
    hardware = (runtime.get("hardware") or {}).get("current") or "unknown hardware"
    return f"{runtime.get('stage', 'UNKNOWN')} on {hardware}"
