"""One module per provider, all behind one contract; ``BACKENDS`` maps ``kind`` to its class.

Modules are imported on first use so that a config with only HTTP backends never imports
gradio_client. See ADDING_A_BACKEND.md to add one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import aiohttp

from imagegate.backends.base import Deadline, HttpBackend, ImageBackend

__all__ = ["BACKENDS", "Deadline", "HttpBackend", "ImageBackend", "backend_class", "create_backend"]

BACKENDS: dict[str, str] = {
    "a1111": "imagegate.backends.a1111:A1111Backend",
    "novita": "imagegate.backends.novita:NovitaBackend",
    "stability": "imagegate.backends.stability:StabilityBackend",
    "hf_inference": "imagegate.backends.hf_inference:HFInferenceBackend",
    "hf_space": "imagegate.backends.hf_space:HFSpaceBackend",
    "openai": "imagegate.backends.openai_images:OpenAIImagesBackend",
}


def backend_class(kind: str) -> type[ImageBackend]:
    module, _, cls = BACKENDS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def create_backend(
    settings: Any, *, secrets: Mapping[str, str], session: aiohttp.ClientSession
) -> ImageBackend:
    """Build the backend for one ``[[backend]]`` table."""
    cls = backend_class(settings.kind)
    return cls(settings, secrets=secrets, session=session)  # type: ignore[call-arg]
