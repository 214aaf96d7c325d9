"""The router's text-to-image providers, one module each, keyed by the router's name.

Exactly the providers huggingface_hub 2.4.0 registers a ``"text-to-image"`` helper for
(``inference/_providers/__init__.py`` ``PROVIDERS``): fal-ai, hf-inference, nscale,
replicate, together, wavespeed, zai-org. The differential test checks this set against the
installed huggingface_hub, so a provider it adds (or drops) fails a test here.

Black Forest Labs, Hyperbolic and Nebius (still in huggingface_hub's older docs table) were
dropped from the Hub's routing layer and removed from both official clients
(huggingface_hub PR #4447, huggingface.js PR #2258, 2026-06-29: "Remove dead inference
providers"): there is no route to send them to, so config refuses them by name.
"""

from __future__ import annotations

from imagegate.backends.hf_inference.providers import (
    fal_ai,
    hf_inference,
    nscale,
    replicate,
    together,
    wavespeed,
    zai_org,
)
from imagegate.backends.hf_inference.wire import Provider

__all__ = ["PROVIDERS", "PROVIDER_NAMES", "REMOVED_PROVIDERS"]

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        fal_ai.PROVIDER, hf_inference.PROVIDER, nscale.PROVIDER, replicate.PROVIDER,
        together.PROVIDER, wavespeed.PROVIDER, zai_org.PROVIDER,
    )
}
PROVIDER_NAMES = tuple(PROVIDERS)

_DROPPED = ("was dropped from the Hugging Face router (huggingface_hub PR #4447, "
            "\"Remove dead inference providers\")")
REMOVED_PROVIDERS: dict[str, str] = {
    "black-forest-labs": _DROPPED,
    "hyperbolic": _DROPPED,
    "nebius": _DROPPED,
    "clarifai": _DROPPED,
    "sambanova": _DROPPED,
    "nvidia": _DROPPED,
}
