"""``imagegate demo --scenario kinds``: every kind of backend imagegate knows, each through its
own stand-in, one real request apiece.

The kinds are the provider registry's rows whose emulator is an aiohttp app (all but the
Space, whose stand-in is a Gradio process: the other scenarios show a hung one). Each
emulator is started on a free loopback port with the demo's key, configured through a
real TOML file and the real loader, and asked for the same image through the real router
(``generate(..., backend=name)``); the narration is one line per kind, the trail as in the
other scenarios. Nothing leaves the machine and no key is needed.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

from imagegate.backends.registry import REGISTRY, Provider, load_settings
from imagegate.cli.output import EXIT_FAILED, EXIT_OK, failure_json, result_json
from imagegate.errors import AllBackendsFailed
from imagegate.models import ImageRequest
from imagegate.routing import ImageService
from imagegate.store import ImageStore, write_atomic
from imagegate.testing import serve_app

__all__ = ["KEY", "KEY_ENV", "TOUR_TABLES", "run_tour", "tour_kinds"]

KEY_ENV = "IMAGEGATE_DEMO_KEY"
KEY = "demo-key"  # every stand-in's key here: not a secret
SIZE = 512
# what a kind's stand-in needs besides base_url and the key: the model it serves, quick polling
TOUR_TABLES: dict[str, dict[str, Any]] = {
    "novita": {"poll_interval_s": 0.05},
    "hf_inference": {"model": "emulator/tiny"},
    "fal": {"poll_interval_s": 0.05},
    "replicate": {"poll_interval_s": 0.05,
                  "model": "stability-ai/sdxl:13f35c1d2354fab73101e29a49eb071b45bf24988f11a3b49a061a745356d1d3"},
}


def tour_kinds() -> list[Provider]:
    """The registry's rows the tour runs: those whose emulator is an aiohttp app."""
    rows = []
    for provider in REGISTRY:
        module = importlib.import_module(provider.emulator) if provider.emulator else None
        if module is not None and hasattr(module, "create_app"):
            rows.append(provider)
    return rows


@contextlib.asynccontextmanager
async def _stand_ins(kinds: list[Provider]) -> AsyncIterator[dict[str, str]]:
    async with contextlib.AsyncExitStack() as stack:
        urls = {}
        for provider in kinds:
            create_app = importlib.import_module(str(provider.emulator)).create_app
            takes_key = "api_key" in inspect.signature(create_app).parameters
            app = create_app(api_key=KEY) if takes_key and _keyed(provider) else create_app()
            urls[provider.kind] = await stack.enter_async_context(serve_app(app))
        yield urls


def _keyed(provider: Provider) -> bool:
    return "api_key_env" in provider.settings.model_fields and provider.kind != "comfyui"


def _config(kinds: list[Provider], urls: dict[str, str]) -> str:
    lines = ["# written by `imagegate demo --scenario kinds`: local stand-ins, not real providers",
             "[service]", "deadline_s = 20", "probe_interval_s = 60", "max_attempts = 1"]
    for provider in kinds:
        table: dict[str, Any] = {"name": provider.kind, "kind": provider.kind, "base_url": urls[provider.kind],
                                 **TOUR_TABLES.get(provider.kind, {})}
        if _keyed(provider):
            table["api_key_env"] = KEY_ENV
        lines += ["", "[[backend]]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


async def run_tour(prompt: str, *, out_dir: Path, narration: TextIO, trail: TextIO | None, workdir: Path) -> int:
    """One request through each kind; exit 0 when every kind served it."""
    kinds = tour_kinds()
    narration.write(f"imagegate demo: every kind of backend, each through its own stand-in ({len(kinds)} kinds)\n\n"
                    "The providers are local stand-ins (emulators on 127.0.0.1), not real services; the config\n"
                    "loader, router, backends and image store are the code you would run.\n\n")
    docs: list[dict[str, Any]] = []
    code = EXIT_OK
    async with _stand_ins(kinds) as urls:
        config = workdir / "imagegate.toml"
        write_atomic(config, _config(kinds, urls).encode())
        settings = load_settings(config, environ={KEY_ENV: KEY}, dotenv=False)
        store = ImageStore(out_dir)
        async with ImageService(settings) as service:
            for i, provider in enumerate(kinds, 1):
                request = ImageRequest(prompt=prompt, width=SIZE, height=SIZE, seed=i)
                started = time.monotonic()
                try:
                    result = await service.generate(request, backend=provider.kind)
                except AllBackendsFailed as exc:
                    code = EXIT_FAILED
                    docs.append(failure_json(exc))
                    narration.write(f"  x  {provider.kind:<13} {provider.summary}: {exc}\n")
                    continue
                image = result.images[0]
                path = store.save(image, request, backend=result.backend)
                docs.append(result_json(result, [path]))
                took = (time.monotonic() - started) * 1000
                narration.write(f"  ok {provider.kind:<13} {provider.summary}: {image.width}x{image.height} "
                                f"{image.format.value} in {took:.0f} ms -> {path}\n")
                narration.flush()
    if trail is not None:
        trail.write("".join(json.dumps(doc) + "\n" for doc in docs))
    else:
        narration.write("\nEach kind's stand-in speaks its provider's wire protocol (sources in imagegate/testing);\n"
                        "`python3 -m imagegate.testing <kind>` runs one on its own.\n")
    narration.flush()
    return code
