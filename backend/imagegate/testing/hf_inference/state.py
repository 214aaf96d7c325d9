"""What the router stand-in knows: the Hub's provider mapping, its token, its jobs and images.

The default mapping mirrors the shape of the real one for a few well-known models (the
provider-side ids are those the providers use for them; which models each provider really
serves changes over time), plus emulator-only models for the cases tests need: a LoRA, a
staging-only model, a version-pinned Replicate id.
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from imagegate.testing.images import make_image
from imagegate.testing.knobs import Knobs

__all__ = ["DEFAULT_MAPPING", "Job", "RouterState", "Served", "image_path", "image_response"]

TASK = "text-to-image"


@dataclass(frozen=True)
class Served:
    """One provider serving one Hub model: its id there, the mapping's status, a LoRA file."""

    provider_id: str
    status: str = "live"
    task: str = TASK
    adapter_weights_path: str | None = None

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"status": self.status, "providerId": self.provider_id, "task": self.task}
        if self.adapter_weights_path:
            doc.update(adapter="lora", adapterWeightsPath=self.adapter_weights_path)
        return doc


_SCHNELL = "black-forest-labs/FLUX.1-schnell"
DEFAULT_MAPPING: dict[str, dict[str, Served]] = {
    _SCHNELL: {
        "fal-ai": Served("fal-ai/flux/schnell"),
        "together": Served("black-forest-labs/FLUX.1-schnell"),
        "hf-inference": Served(_SCHNELL),
        "nscale": Served("black-forest-labs/FLUX.1-schnell"),
        "replicate": Served("black-forest-labs/flux-schnell"),
        "wavespeed": Served("wavespeed-ai/flux-schnell"),
    },
    "black-forest-labs/FLUX.1-dev": {
        "hf-inference": Served("black-forest-labs/FLUX.1-dev"),
        "fal-ai": Served("fal-ai/flux/dev"),
        "replicate": Served("black-forest-labs/flux-dev"),
        "together": Served("black-forest-labs/FLUX.1-dev"),
        "nscale": Served("black-forest-labs/FLUX.1-dev", status="staging"),
    },
    "stabilityai/stable-diffusion-xl-base-1.0": {
        "hf-inference": Served("stabilityai/stable-diffusion-xl-base-1.0"),
        "nscale": Served("stabilityai/stable-diffusion-xl-base-1.0"),
        "replicate": Served("stability-ai/sdxl:7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc"),
    },
    "zai-org/GLM-Image": {"zai-org": Served("glm-image")},
    "emulator/tiny": {
        "hf-inference": Served("emulator/tiny"),
        "groq": Served("emulator-tiny-chat", task="conversational"),
        "together": Served("emulator/tiny-together"),
    },
    "emulator/flux-lora": {
        "fal-ai": Served("fal-ai/flux-lora", adapter_weights_path="lora.safetensors"),
        "replicate": Served("emulator/flux-lora:0123456789abcdef", adapter_weights_path="lora.safetensors"),
    },
    "emulator/staging-only": {"fal-ai": Served("fal-ai/staging-model", status="staging")},
}


@dataclass
class Job:
    """A submitted wavespeed or zai-org task: polls left before it ends, and how it ends."""

    provider: str
    polls_left: int
    image: str  # the URL of its image
    failed: bool = False
    nsfw: bool = False

    def running(self) -> bool:
        """One poll: whether it still runs (then one poll fewer is left)."""
        if self.polls_left <= 0:
            return False
        self.polls_left -= 1
        return True


@dataclass
class RouterState:
    """Everything one stand-in holds; handlers read it from the app."""

    knobs: Knobs
    api_key: str | None
    mapping: dict[str, dict[str, Served]]
    jobs: dict[str, Job] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def served(self, provider: str, provider_id: str) -> Served | None:
        """The mapping entry whose provider-side id this is (live or staging: the router calls
        both, as huggingface_hub does)."""
        for providers in self.mapping.values():
            entry = providers.get(provider)
            if entry is not None and entry.provider_id == provider_id and entry.task == TASK:
                return entry
        return None

    def hf_models(self, provider: str) -> set[str]:
        return {m for m, providers in self.mapping.items() if provider in providers}

    def new_id(self) -> str:
        return f"{next(self._ids):04d}{uuid.uuid4().hex[:12]}"


def image_path(width: int, height: int, seed: int, prompt: str, fmt: str) -> str:
    """Where this stand-in serves an image it made: everything needed to draw it again."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    return f"/files/{width}x{height}-{seed}-{digest}.{fmt}"


def image_response(name: str) -> web.Response | None:
    """The image ``image_path`` named (``WxH-seed-digest.fmt``), or None for another name."""
    stem, _, fmt = name.rpartition(".")
    size, _, rest = stem.partition("-")
    seed, _, digest = rest.partition("-")
    w, _, h = size.partition("x")
    if fmt not in ("png", "jpeg", "webp") or not (w.isdigit() and h.isdigit() and seed.isdigit()) or not digest:
        return None
    width, height = int(w), int(h)
    if not (1 <= width <= 4096 and 1 <= height <= 4096):
        return None
    data = make_image(width, height, digest, int(seed), fmt)
    return web.Response(body=data, content_type=f"image/{fmt}")


def mapping_json(providers: Mapping[str, Served]) -> dict[str, Any]:
    return {name: served.as_json() for name, served in providers.items()}
