"""LiteLLM's side of ``compare``: its Router (and the bare OpenAI SDK it drives) as clients.

Imported only when ``litellm`` is installed. ``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set
before the import, so that LiteLLM reads its bundled model cost map instead of fetching one:
every byte of the benchmark stays on 127.0.0.1.
"""

from __future__ import annotations

import copy
import logging
import os
from types import ModuleType
from typing import Any

from imagegate import ImageRequest

from benchlib.common import API_KEY
from benchlib.overhead import Client

MODEL = "openai/dall-e-2"


def load_litellm() -> ModuleType | None:
    """The litellm module, quiet and offline; None when it is not installed."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    try:
        import litellm
    except ImportError:
        return None
    litellm.suppress_debug_info = True
    litellm.telemetry = False
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return litellm


def deployment(model_name: str, base_url: str) -> dict[str, Any]:
    """One Router deployment: LiteLLM's OpenAI provider pointed at an emulator (or a black hole)."""
    return {
        "model_name": model_name,
        "litellm_params": {"model": MODEL, "api_base": base_url + "/v1", "api_key": API_KEY},
    }


def failover_configs(
    primary_url: str, secondary_url: str, timeout_s: float
) -> dict[str, dict[str, Any]]:
    """Router(**config) for each failover set-up LiteLLM's docs describe: fallbacks with a timeout,
    and the same with cooldowns (``allowed_fails`` failures in a minute cool a deployment down
    for ``cooldown_time`` seconds)."""
    base = {
        "model_list": [deployment("primary", primary_url), deployment("secondary", secondary_url)],
        "fallbacks": [{"primary": ["secondary"]}],
        "timeout": timeout_s,
    }
    cooled = {**copy.deepcopy(base), "allowed_fails": 1, "cooldown_time": 30}
    return {"litellm_fallbacks_timeout": base, "litellm_with_cooldown": cooled}


def fleet_config(primary_url: str, secondary_url: str) -> dict[str, Any]:
    """Router(**config) for a healthy two-backend fleet: the primary, and the secondary as its
    fallback (the set-up imagegate's priority order mirrors)."""
    return {
        "model_list": [deployment("primary", primary_url), deployment("secondary", secondary_url)],
        "fallbacks": [{"primary": ["secondary"]}],
    }


def _generation_kwargs(request: ImageRequest) -> dict[str, Any]:
    return {
        "prompt": request.prompt,
        "size": f"{request.width}x{request.height}",
        "n": request.n,
        "response_format": "b64_json",
        "extra_body": {"seed": request.seed},
    }


def router_client(router: Any, model: str, request: ImageRequest) -> Client:
    kwargs = _generation_kwargs(request)

    async def call() -> Any:
        response = await router.aimage_generation(model=model, **kwargs)
        if not response.data or not response.data[0].b64_json:
            raise RuntimeError("LiteLLM answered without an image")
        return response

    return call


def sdk_client(client: Any, request: ImageRequest) -> Client:
    """The OpenAI SDK alone (``AsyncOpenAI(max_retries=0)``): what LiteLLM's OpenAI path wraps."""
    kwargs = _generation_kwargs(request)

    async def call() -> Any:
        return await client.images.generate(model="dall-e-2", **kwargs)

    return call


def effective(router: Any) -> dict[str, Any]:
    """The Router's settings that decide failover, defaults included, as it holds them."""
    keys = (
        "timeout",
        "num_retries",
        "retry_after",
        "allowed_fails",
        "cooldown_time",
        "max_fallbacks",
    )
    return {key: getattr(router, key, None) for key in keys}


def shown(config: dict[str, Any]) -> str:
    """The Router config as Python, for the report (the key is the bench's fake one)."""
    lines = ["Router("]
    for key, value in config.items():
        lines.append(f"    {key}={value!r},")
    lines.append(")")
    return "\n".join(lines)
