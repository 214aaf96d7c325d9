"""The clients people already run, sending exactly what they send, against the real app.

Open WebUI (engine "openai"), from ``backend/open_webui/routers/images.py`` (open-webui/
open-webui @02530d50) and ``utils/headers.py`` (@0790441f):

    headers = {'Authorization': f'Bearer {KEY}', 'Content-Type': 'application/json'}
    (+ X-OpenWebUI-User-Name/-Id/-Email/-Role with ENABLE_FORWARD_USER_INFO_HEADERS)
    url = f'{BASE}/images/generations' (+ f'?api-version={VERSION}' when one is set)
    data = {'model': model, 'prompt': ..., 'n': ..., 'size': size or IMAGE_SIZE ('512x512'),
            **({} if re.match('^gpt-image', model) else {'response_format': 'b64_json'}),
            **IMAGES_OPENAI_API_PARAMS}          # admin-defined extras, merged last
    aiohttp post(url, json=data, headers=headers) -> r.raise_for_status(); res = await r.json()
    for image in res['data']: image['url'] is fetched with the same headers minus
    Content-Type and must answer an image/* content type; else image['b64_json'] is decoded.

LiteLLM (``litellm.image_generation(model="openai/flux-dev", api_base=..., cfg_scale=...)``,
litellm/llms/openai/openai.py): the provider prefix is cut (body ``model`` is ``flux-dev``),
parameters OpenAI does not define go to ``extra_body`` (top level of the JSON), and the call
is ``OpenAI(api_key, base_url).images.generate(model=..., prompt=..., **params)``: the request
below is that call, made with the real openai SDK. (LiteLLM itself runs as a client in the
bench environment: ``scripts/bench.py clients``.)
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import openai
import pytest
from imagegate.server import ServerOptions
from imagegate.testing import Knobs
from PIL import Image

from tests.server.kit import a1111_settings, gateway

KEY = "sk-webui"
TXT2IMG = "/sdapi/v1/txt2img"
IMAGE_URL_RESPONSE_MODELS = r"^gpt-image"  # Open WebUI's IMAGE_URL_RESPONSE_MODELS_REGEX_PATTERN
FORWARDED = {  # ENABLE_FORWARD_USER_INFO_HEADERS=true
    "X-OpenWebUI-User-Name": quote("Ada Lovelace", safe=" "),
    "X-OpenWebUI-User-Id": "6f1c2a9e-8d1b-4b8e-9a57-3f0e5c1d2b7a",
    "X-OpenWebUI-User-Email": "ada@example.com",
    "X-OpenWebUI-User-Role": "admin",
}


@pytest.fixture
async def base(a1111_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """An env-only style set-up: one backend, no aliases, default [service]."""
    settings = a1111_settings(a1111_url, tmp_path)
    async with gateway(settings, ServerOptions(api_keys=(KEY,))) as (url, _):
        yield f"{url}/v1"


async def open_webui_generate(
    base_url: str,
    model: str,
    *,
    api_version: str | None = None,
    forward_user: bool = False,
    size: str | None = "512x512",
    extra_params: dict[str, Any] | None = None,
) -> tuple[list[Image.Image], Any]:
    """What Open WebUI's openai engine does, step by step (see the module docstring)."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    if forward_user:
        headers.update(FORWARDED)
    url = f"{base_url}/images/generations"
    if api_version:
        url = f"{url}?api-version={api_version}"
    data: dict[str, Any] = {
        "model": model,
        "prompt": "a red fox",
        "n": 1,
        **({"size": size} if size else {}),
        **({} if re.match(IMAGE_URL_RESPONSE_MODELS, model) else {"response_format": "b64_json"}),
        **(extra_params or {}),
    }
    images = []
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=data, headers=headers) as r:
            r.raise_for_status()
            res = await r.json(content_type=None)
            answer_headers = r.headers
        for image in res["data"]:
            if image.get("url"):
                get_headers = {k: v for k, v in headers.items() if k != "Content-Type"}
                async with session.get(image["url"], headers=get_headers) as r:
                    r.raise_for_status()
                    assert r.headers["content-type"].startswith("image/")
                    raw = await r.read()
            else:
                raw = base64.b64decode(image["b64_json"])
            images.append(Image.open(io.BytesIO(raw)))
    return images, answer_headers


@pytest.mark.parametrize("model", ["dall-e-2", "dall-e-3", "gpt-image-1", "my-sd"])
async def test_open_webui_default_config_gets_an_image_for_any_model_name(
    base: str, knobs: Knobs, model: str
) -> None:
    """dall-e-*/custom names come with response_format b64_json; gpt-image-1 without."""
    images, headers = await open_webui_generate(base, model)
    assert [img.size for img in images] == [(512, 512)]
    assert headers["x-imagegate-backend"] == "local"
    assert "x-imagegate-ignored" not in headers


async def test_open_webui_with_api_version_and_forwarded_user_headers(base: str) -> None:
    images, headers = await open_webui_generate(
        base, "gpt-image-1", api_version="2025-04-01-preview", forward_user=True, size=None
    )
    assert [img.size for img in images] == [(1024, 1024)]  # no size: "auto"
    assert headers["x-imagegate-backend"] == "local"


async def test_open_webui_admin_params_map_or_are_listed_as_ignored(base: str, knobs: Knobs) -> None:
    """IMAGES_OPENAI_API_PARAMS: what an admin adds for an SD backend."""
    params = {"cfg_scale": 6, "sampler_name": "DPM++ 2M", "steps": 12, "seed": 42,
              "negative_prompt": "blurry", "scheduler": "karras", "clip_skip": 2}
    images, headers = await open_webui_generate(base, "my-sd", extra_params=params)
    assert len(images) == 1
    assert headers["x-imagegate-ignored"] == "clip_skip, scheduler"
    sent = [r.body for r in knobs.requests if r.path == TXT2IMG][-1]
    assert (sent["cfg_scale"], sent["sampler_name"], sent["steps"], sent["seed"]) == (
        6, "DPM++ 2M", 12, 42)
    assert sent["negative_prompt"] == "blurry" and "clip_skip" not in sent


async def test_litellm_s_request_made_with_the_real_openai_sdk(base: str, knobs: Knobs) -> None:
    def call() -> Any:
        with openai.OpenAI(api_key=KEY, base_url=base, max_retries=0) as client:
            return client.images.with_raw_response.generate(
                model="flux-dev",  # litellm's "openai/flux-dev", prefix cut
                prompt="a red fox",
                size="1024x1024",
                extra_body={"cfg_scale": 3.5, "aspect_ratio": "1:1"},
                timeout=600,
            )

    raw = await asyncio.to_thread(call)
    answer = raw.parse()
    assert answer.data and answer.data[0].b64_json
    assert raw.headers["x-imagegate-backend"] == "local"
    assert raw.headers["x-imagegate-ignored"] == "aspect_ratio"
    sent = [r.body for r in knobs.requests if r.path == TXT2IMG][-1]
    assert sent["cfg_scale"] == 3.5 and (sent["width"], sent["height"]) == (1024, 1024)


async def test_open_webui_url_answers_are_fetched_with_its_own_headers(
    a1111_url: str, tmp_path: Path
) -> None:
    """Open WebUI fetches a ``url`` answer with the same Bearer header: a signed link
    ignores it, and answers an image/* content type."""
    settings = a1111_settings(a1111_url, tmp_path)
    async with gateway(settings, ServerOptions(api_keys=(KEY,))) as (url, _):
        images, _h = await open_webui_generate(
            f"{url}/v1", "dall-e-2", extra_params={"response_format": "url"}
        )
    assert [img.size for img in images] == [(512, 512)]
