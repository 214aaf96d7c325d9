"""The provider registry: one row per kind of backend, and everything that derives from it.

A row says what a kind *is* to the rest of imagegate: its settings class (config's
``[[backend]]`` validation), its backend class, the environment variables that configure it
with no file, its emulator (``python -m imagegate.testing <kind>``, ``imagegate demo``) and
what ``imagegate diagnose`` needs to know of it. Config, the emulator CLI and diagnose read
these rows and nothing else; adding a provider is one backend module, one emulator module
and one row here (see ADDING_A_BACKEND.md).

Backend classes are named as ``"module:Class"`` and imported on first use, so that a
configuration with only HTTP backends never imports gradio_client.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from imagegate.backends import (  # issue 19's kinds
    a1111,
    comfyui,
    fal,
    hf_inference,
    hf_space,
    novita,
    openai_images,
    replicate,
    stability,
    together,
)
from imagegate.backends.base import ImageBackend
from imagegate.config import BackendSettings, Settings, read_settings
from imagegate.errors import ConfigError

__all__ = [
    "KINDS",
    "PROVIDERS",
    "REGISTRY",
    "Provider",
    "Registry",
    "backend_class",
    "create_backend",
    "load_settings",
]

EnvBuilder = Callable[[Mapping[str, str], bool], list[dict[str, Any]]]


@dataclass(frozen=True)
class Provider:
    """One kind of backend."""

    kind: str
    settings: type[BackendSettings]
    backend: str  # "module:Class", imported on first use
    from_env: EnvBuilder  # (environment, another kind already configured) -> [[backend]] tables
    emulator: str | None = None  # module of its loopback emulator (``create_app`` or ``main``)
    smallest_side: int = 256  # the image size `imagegate diagnose --generate` asks for
    summary: str = ""
    env_vars: tuple[str, ...] = ()  # the variables from_env reads to configure one


PROVIDERS: tuple[Provider, ...] = (
    Provider(
        "a1111", a1111.A1111Settings, "imagegate.backends.a1111:A1111Backend", a1111.from_env,
        emulator="imagegate.testing.a1111", smallest_side=64,
        summary="a local AUTOMATIC1111 webui (--api)", env_vars=("A1111_URL",),
    ),
    Provider(
        "novita", novita.NovitaSettings, "imagegate.backends.novita:NovitaBackend", novita.from_env,
        emulator="imagegate.testing.novita", smallest_side=128,  # v3 starts at 128
        summary="Novita AI (async task + polling)", env_vars=("NOVITA_API_KEY",),
    ),
    Provider(
        "stability", stability.StabilitySettings, "imagegate.backends.stability:StabilityBackend",
        stability.from_env, emulator="imagegate.testing.stability",
        smallest_side=1024,  # no sizes, only ratios: 1:1 is asked for
        summary="Stability AI v2beta Stable Image", env_vars=("STABILITY_API_KEY",),
    ),
    Provider(
        "hf_inference", hf_inference.HFInferenceSettings,
        "imagegate.backends.hf_inference:HFInferenceBackend", hf_inference.from_env,
        emulator="imagegate.testing.hf_inference", smallest_side=256,
        summary="Hugging Face Inference through the router", env_vars=("HF_TOKEN",),
    ),
    Provider(
        "openai", openai_images.OpenAISettings, "imagegate.backends.openai_images:OpenAIImagesBackend",
        openai_images.from_env, emulator="imagegate.testing.openai_images",
        smallest_side=1024,  # the one size every OpenAI-shaped model accepts
        summary="any OpenAI-compatible images endpoint", env_vars=("OPENAI_BASE_URL",),
    ),
    # -- issue 19: ComfyUI, fal.ai, Replicate, Together (before hf_space: its zero-key default
    # applies only when no row before it configured anything)
    Provider(
        "comfyui", comfyui.ComfyUISettings, "imagegate.backends.comfyui:ComfyUIBackend", comfyui.from_env,
        emulator="imagegate.testing.comfyui", smallest_side=64,
        summary="a local ComfyUI (workflow API + websocket)", env_vars=("COMFYUI_URL",),
    ),
    Provider(
        "fal", fal.FalSettings, "imagegate.backends.fal:FalBackend", fal.from_env,
        emulator="imagegate.testing.fal", smallest_side=256,
        summary="fal.ai (queue API)", env_vars=("FAL_KEY",),
    ),
    Provider(
        "replicate", replicate.ReplicateSettings, "imagegate.backends.replicate:ReplicateBackend",
        replicate.from_env, emulator="imagegate.testing.replicate", smallest_side=256,
        summary="Replicate (predictions API)", env_vars=("REPLICATE_API_TOKEN",),
    ),
    Provider(
        "together", together.TogetherSettings, "imagegate.backends.together:TogetherBackend",
        together.from_env, emulator="imagegate.testing.together", smallest_side=256,
        summary="Together AI images (FLUX, SDXL)", env_vars=("TOGETHER_API_KEY",),
    ),
    Provider(
        "hf_space", hf_space.HFSpaceSettings, "imagegate.backends.hf_space.backend:HFSpaceBackend",
        hf_space.from_env, emulator="imagegate.testing.gradio_space", smallest_side=256,
        summary="a Hugging Face Space (or any Gradio app) via gradio_client",
        env_vars=("HF_SPACES",),
    ),
)


class Registry:
    """The rows by kind; also the kind table config loads ``[[backend]]`` tables with."""

    def __init__(self, providers: Sequence[Provider]) -> None:
        self._by_kind = {p.kind: p for p in providers}

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._by_kind)

    @property
    def env_variables(self) -> tuple[str, ...]:
        return tuple(var for p in self for var in p.env_vars)

    def __iter__(self) -> Any:
        return iter(self._by_kind.values())

    def __getitem__(self, kind: str) -> Provider:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise ConfigError(f"unknown kind {kind!r} (known: {', '.join(self.kinds)})") from None

    def settings_class(self, kind: str) -> type[BackendSettings]:
        return self[kind].settings

    def tables_from_env(self, env: Mapping[str, str]) -> list[dict[str, Any]]:
        """``[[backend]]`` tables from environment variables alone, in row order (a later
        row learns whether an earlier one configured anything: the zero-key default of
        public Spaces applies only when nothing else is configured)."""
        tables: list[dict[str, Any]] = []
        for provider in self:
            tables += provider.from_env(env, bool(tables))
        return tables


REGISTRY = Registry(PROVIDERS)
KINDS = REGISTRY.kinds


def load_settings(
    path: str | Path | None = None,
    *,
    environ: dict[str, str] | None = None,
    dotenv: bool = True,
    require_secrets: bool = True,
) -> Settings:
    """Settings from the TOML file (``path``, else ``$IMAGEGATE_CONFIG``, else none) and the
    environment, with every kind of this registry (see :func:`imagegate.config.read_settings`)."""
    return read_settings(
        path, kinds=REGISTRY, environ=environ, dotenv=dotenv, require_secrets=require_secrets
    )


def backend_class(kind: str) -> type[ImageBackend[Any]]:
    module, _, cls = REGISTRY[kind].backend.partition(":")
    return getattr(importlib.import_module(module), cls)


def create_backend(
    settings: BackendSettings, *, secrets: Mapping[str, str], session: aiohttp.ClientSession
) -> ImageBackend[Any]:
    """Build the backend for one ``[[backend]]`` table."""
    cls = backend_class(settings.kind)
    return cls(settings, secrets=secrets, session=session)  # type: ignore[call-arg]
