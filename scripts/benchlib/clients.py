"""``clients``: LiteLLM, as its users call it, against a real ``imagegate serve`` process.

The default test suite sends LiteLLM's request shape with the openai SDK
(tests/server/test_clients.py); this scenario runs LiteLLM itself, which pins older openai and
huggingface_hub releases and so lives in the bench environment (``pip install -e '.[bench]'``,
see BENCHMARKS.md). Three processes on 127.0.0.1: the A1111 emulator, ``imagegate serve``
configured by ``A1111_URL`` alone (no config file, no aliases), and this one. Each case is a
call from LiteLLM's documentation, with a model name imagegate has never heard of; it passes
when LiteLLM returns an image. Skipped, with one line saying so, without litellm.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from benchlib import litellm_side
from benchlib.common import API_KEY, free_port, machine, process

SKIP = "clients: skipped, litellm is not installed (pip install -e '.[bench]', see BENCHMARKS.md)"
PNG = b"\x89PNG\r\n\x1a\n"


@contextlib.contextmanager
def gateway() -> Iterator[str]:
    """The A1111 emulator and ``imagegate serve`` (env-only config, one API key)."""
    a1111_port, serve_port = free_port(), free_port()
    emulator = [sys.executable, "-m", "imagegate.testing", "a1111", "--port", str(a1111_port)]
    serve = [sys.executable, "-m", "imagegate", "serve", "--port", str(serve_port)]
    env = {"A1111_URL": f"http://127.0.0.1:{a1111_port}", "IMAGEGATE_API_KEY": API_KEY,
           "IMAGEGATE_CONFIG": ""}
    with process(emulator, a1111_port) as a1111_url, process(serve, serve_port, env=env) as url:
        del a1111_url
        yield url


def _has_png(response: Any) -> bool:
    data = getattr(response, "data", None) or []
    return bool(data) and base64.b64decode(data[0].b64_json or "").startswith(PNG)


def cases(litellm: Any, base: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Each call as LiteLLM's docs show it (``openai/<name>`` = any OpenAI-compatible server)."""
    common = {"api_base": f"{base}/v1", "api_key": API_KEY, "prompt": "a red fox", "size": "512x512"}
    router = litellm.Router(model_list=[{
        "model_name": "images",
        "litellm_params": {"model": "openai/dall-e-3", "api_base": f"{base}/v1", "api_key": API_KEY},
    }])

    async def sync_sdk() -> Any:  # litellm.image_generation: blocking, in a thread
        return await asyncio.to_thread(litellm.image_generation, model="openai/flux-dev", **common)

    async def async_sdk() -> Any:
        return await litellm.aimage_generation(model="openai/gpt-image-1", **common)

    async def sd_params() -> Any:  # provider-specific kwargs go to the body's top level
        return await litellm.aimage_generation(
            model="openai/sdxl", cfg_scale=6.5, sampler_name="Euler a", steps=12, seed=42,
            negative_prompt="blurry", scheduler="karras", **common,
        )

    async def via_router() -> Any:
        return await router.aimage_generation(model="images", prompt="a red fox", size="512x512")

    return {
        "image_generation(model='openai/flux-dev')": sync_sdk,
        "aimage_generation(model='openai/gpt-image-1')": async_sdk,
        "aimage_generation(model='openai/sdxl', cfg_scale=..., sampler_name=..., ...)": sd_params,
        "Router(model 'openai/dall-e-3').aimage_generation": via_router,
    }


async def _run(litellm: Any, base: str) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name, call in cases(litellm, base).items():
        start = time.perf_counter()
        try:
            ok, error = _has_png(await call()), None
        except Exception as exc:  # noqa: BLE001 - a failing client is the finding
            ok, error = False, f"{type(exc).__name__}: {str(exc)[:300]}"
        results[name] = {"ok": ok, "ms": round((time.perf_counter() - start) * 1000, 1), "error": error}
    return results


def run_clients(args: argparse.Namespace) -> dict[str, Any]:
    litellm = litellm_side.load_litellm()
    if litellm is None:
        return {"scenario": "clients", "skipped": SKIP}
    with gateway() as base:
        results = asyncio.run(_run(litellm, base))
    from importlib.metadata import version

    return {
        "scenario": "clients",
        "machine": machine(),
        "litellm_version": version("litellm"),
        "openai_version": version("openai"),
        "cases": results,
        "target": "every LiteLLM call returns an image",
        "target_met": all(r["ok"] for r in results.values()),
    }


def print_clients(report: dict[str, Any]) -> None:
    if "skipped" in report:
        print(report["skipped"])
        return
    print(
        f"clients: LiteLLM {report['litellm_version']} (openai {report['openai_version']}) against "
        "`imagegate serve` configured by A1111_URL alone"
    )
    for name, r in report["cases"].items():
        print(f"  {'ok  ' if r['ok'] else 'FAIL'} {r['ms']:>8.1f} ms  {name}" + (f"  {r['error']}" if r["error"] else ""))
    print(f"target ({report['target']}): {'met' if report['target_met'] else 'MISSED'}")


def clients_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # nothing to choose
