"""The official ``openai`` SDK against the OpenAI emulator's per-model rules (a contract test:
the emulator answers what api.openai.com answers, in the shape the SDK parses).

``official=True`` is api.openai.com (OpenAI's models only, no extension fields); the default
is an OpenAI-compatible server such as imagegate's own.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from imagegate.testing import openai_images as openai_emulator
from imagegate.testing import serve_app
from openai import AsyncOpenAI

KEY = "sk-contract-0123456789"


@pytest.fixture
async def official() -> AsyncIterator[AsyncOpenAI]:
    async with serve_app(openai_emulator.create_app(api_key=KEY, official=True)) as url:
        client = AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        yield client
        await client.close()


@pytest.fixture
async def compatible() -> AsyncIterator[AsyncOpenAI]:
    async with serve_app(openai_emulator.create_app(api_key=KEY)) as url:
        client = AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        yield client
        await client.close()


async def refused(client: AsyncOpenAI, **params: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.generate(prompt="a fox", **params)
    assert caught.value.status_code == 400 and caught.value.type == "invalid_request_error"
    return caught.value


@pytest.mark.parametrize(
    ("model", "size", "n"),
    [("dall-e-2", "256x256", 10), ("dall-e-2", "512x512", 1), ("dall-e-3", "1792x1024", 1),
     ("gpt-image-1", "1536x1024", 2), ("gpt-image-1-mini", "1024x1536", 1),
     ("chatgpt-image-latest", "1024x1024", 1)],
)
async def test_each_model_serves_its_sizes_and_counts(
    official: AsyncOpenAI, model: str, size: str, n: int
) -> None:
    extra = {} if model.startswith(("gpt", "chatgpt")) else {"response_format": "b64_json"}
    answer = await official.images.generate(model=model, prompt="a fox", size=size, n=n, **extra)  # type: ignore[arg-type]
    assert len(answer.data) == n
    data = base64.b64decode(answer.data[0].b64_json or "")
    assert data.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("model", "size", "supported"),
    [
        ("dall-e-2", "1024x1536", "'256x256', '512x512', and '1024x1024'"),
        ("dall-e-3", "512x512", "'1024x1024', '1792x1024', and '1024x1792'"),
        ("gpt-image-1", "512x512", "'1024x1024', '1536x1024', '1024x1536', and 'auto'"),
        ("chatgpt-image-latest", "1792x1024", "'1024x1024', '1536x1024', '1024x1536', and 'auto'"),
    ],
)
async def test_a_size_the_model_does_not_make_is_invalid_value_listing_the_supported_ones(
    official: AsyncOpenAI, model: str, size: str, supported: str
) -> None:
    error = await refused(official, model=model, size=size)
    assert (error.code, error.param) == ("invalid_value", "size")
    assert f"Invalid value: '{size}'. Supported values are: {supported}." in str(error)


async def test_dall_e_3_makes_one_image_per_call(official: AsyncOpenAI) -> None:
    error = await refused(official, model="dall-e-3", n=2)
    assert (error.code, error.param) == ("invalid_value", "n")


async def test_dall_e_2_takes_prompts_up_to_1000_characters(official: AsyncOpenAI) -> None:
    await official.images.generate(model="dall-e-2", prompt="x" * 1000, size="256x256",
                                   response_format="b64_json")
    with pytest.raises(openai.BadRequestError) as caught:
        await official.images.generate(model="dall-e-2", prompt="x" * 1001, size="256x256")
    assert caught.value.param == "prompt"


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        ("gpt-image-1", "response_format", "b64_json"),  # vercel/ai#6102
        ("chatgpt-image-latest", "response_format", "b64_json"),
        ("gpt-image-1", "style", "vivid"),
        ("dall-e-3", "moderation", "low"),  # laravel/ai#255
        ("dall-e-2", "output_format", "webp"),
    ],
)
async def test_a_field_of_another_model_is_an_unknown_parameter(
    official: AsyncOpenAI, model: str, field: str, value: str
) -> None:
    size = "1024x1024"
    error = await refused(official, model=model, size=size, **{field: value})
    assert (error.code, error.param) == ("unknown_parameter", field)
    assert f"Unknown parameter: '{field}'." in str(error)


async def test_api_openai_com_refuses_imagegate_extensions_and_a_compatible_server_takes_them(
    official: AsyncOpenAI, compatible: AsyncOpenAI
) -> None:
    error = await refused(official, model="gpt-image-1", extra_body={"seed": 7})
    assert (error.code, error.param) == ("unknown_parameter", "seed")
    answer = await compatible.images.generate(
        model="gpt-image-1", prompt="a fox", extra_body={"seed": 7, "negative_prompt": "fog"}
    )
    assert answer.data[0].b64_json


async def test_no_model_means_dall_e_2_on_api_openai_com_and_any_size_on_a_compatible_server(
    official: AsyncOpenAI, compatible: AsyncOpenAI
) -> None:
    error = await refused(official, size="1024x1536")
    assert error.param == "size" and "'256x256'" in str(error)
    answer = await compatible.images.generate(prompt="a fox", size="96x64")
    assert base64.b64decode(answer.data[0].b64_json or "")[:4] == b"\x89PNG"


async def test_dall_e_answers_urls_unless_asked_for_base64_and_gpt_image_always_base64(
    official: AsyncOpenAI,
) -> None:
    dalle = await official.images.generate(model="dall-e-2", prompt="a fox", size="256x256")
    assert dalle.data[0].url and not dalle.data[0].b64_json
    gpt = await official.images.generate(model="gpt-image-1", prompt="a fox", output_format="webp")
    data = base64.b64decode(gpt.data[0].b64_json or "")
    assert data[:4] == b"RIFF" and gpt.output_format == "webp"


async def test_the_model_list_is_openais_on_the_official_flavour(
    official: AsyncOpenAI, compatible: AsyncOpenAI
) -> None:
    names = [m.id async for m in official.models.list()]
    assert "emulator-image" not in names and {"chatgpt-image-latest", "dall-e-3"} <= set(names)
    assert "emulator-image" in [m.id async for m in compatible.models.list()]


async def test_the_command_line_serves_the_official_flavour() -> None:
    import asyncio
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imagegate.testing", "openai", "--port", "0", "--official", "--api-key", KEY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        url = line.split("listening on ")[1].strip()
        client = AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        error = await refused(client, model="gpt-image-1", extra_body={"seed": 7})
        await client.close()
    finally:
        proc.terminate()
        await proc.wait()
    assert (error.code, error.param) == ("unknown_parameter", "seed")
