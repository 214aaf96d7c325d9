"""The official ``openai`` SDK, unchanged, pointed at imagegate with ``base_url``.

The sync client blocks, so it runs in a thread while the server runs in the test's loop.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from imagegate.server import ServerOptions
from imagegate.testing import Knobs
from PIL import Image

from tests.conftest import make_settings
from tests.server.kit import a1111_settings, closed_port_url, gateway

KEY = "sk-imagegate-test"


@pytest.fixture
async def base_url(a1111_url: str, tmp_path: Path) -> AsyncIterator[str]:
    settings = a1111_settings(a1111_url, tmp_path, aliases={"dall-e-3": "local"})
    options = ServerOptions(api_keys=(KEY,))
    async with gateway(settings, options) as (url, _):
        yield f"{url}/v1"


def _decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


async def test_sync_sdk_gets_a_b64_json_image_that_decodes(base_url: str) -> None:
    def call() -> openai.types.ImagesResponse:
        with openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0) as client:
            return client.images.generate(
                prompt="a lighthouse", model="dall-e-3", size="512x512", response_format="b64_json"
            )

    answer = await asyncio.to_thread(call)
    assert answer.data is not None and len(answer.data) == 1
    assert answer.data[0].b64_json is not None
    assert _decode(answer.data[0].b64_json).size == (512, 512)


async def test_sync_sdk_gets_a_url_that_serves_the_image(base_url: str) -> None:
    def call() -> bytes:
        with openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0) as client:
            answer = client.images.generate(
                prompt="a lighthouse", size="256x256", response_format="url", n=2
            )
        assert answer.data is not None and len(answer.data) == 2
        url = answer.data[1].url
        assert url is not None
        response = httpx.get(url)  # a signed link: no header needed
        response.raise_for_status()
        return response.content

    with Image.open(io.BytesIO(await asyncio.to_thread(call))) as img:
        assert img.size == (256, 256)


async def test_async_sdk_with_20_concurrent_calls(base_url: str, knobs: Knobs) -> None:
    knobs.latency_s = 0.05
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0) as client:
        answers = await asyncio.gather(
            *(client.images.generate(prompt=f"picture {i}", size="256x256") for i in range(20))
        )
    assert len(answers) == 20
    for answer in answers:
        assert answer.data is not None and answer.data[0].b64_json is not None
        assert _decode(answer.data[0].b64_json).size == (256, 256)
    assert sum(r.path == "/sdapi/v1/txt2img" for r in knobs.requests) == 20


async def test_sdk_raises_its_own_errors_with_our_details(base_url: str, knobs: Knobs) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.images.generate(prompt="x", size="4096x4096")
        assert bad.value.body["param"] == "size"  # type: ignore[index]
        # the provider says no (the webui's own validation error, 422): 400, not retried
        knobs.arm("status", status=422, path="/sdapi/v1/txt2img")
        with pytest.raises(openai.BadRequestError) as refused:
            await client.images.generate(prompt="x")
        assert refused.value.body["code"] == "rejected_by_backend"  # type: ignore[index]
        assert refused.value.body["attempts"][0]["outcome"] == "rejected"  # type: ignore[index]
    async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.images.generate(prompt="x")


async def test_sdk_sees_all_backends_failed_as_a_server_error_with_the_trail(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        [{"name": "gone", "kind": "a1111", "base_url": closed_port_url()}],
        service={"output_dir": tmp_path / "o"},
        tmp_path=tmp_path,
    )
    async with (
        gateway(settings) as (url, _),
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client,
    ):
        with pytest.raises(openai.InternalServerError) as err:
            await client.images.generate(prompt="x", size="64x64")
    assert err.value.status_code == 502
    assert "gone: connect_failed" in err.value.message
