"""OpenAI's image stream, as the official openai SDK reads it, from imagegate in front of a
slow A1111 emulator (steps over time, live previews). The SDK runs unchanged.

The first test is the evidence for how imagegate sends its own events on this stream: a
typed JSON event of any other type is NOT skipped by the SDK, comments are.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from imagegate.server import ServerOptions
from imagegate.testing import Knobs, LocalCA, serve_app
from imagegate.testing import novita as novita_emulator
from imagegate.testing.a1111_webui import Webui
from PIL import Image

from tests.conftest import make_settings
from tests.routing.support import eventually
from tests.server.kit import a1111_settings, gateway

KEY = "sk-stream"
PARTIAL = {"type": "image_generation.partial_image", "b64_json": "iVBORw0KGgo=",
           "partial_image_index": 0, "created_at": 1, "size": "8x8", "quality": "auto",
           "background": "auto", "output_format": "png"}


# -- what the SDK does with events that are not its own ----------------------------------------


def _frames(extra: bytes) -> bytes:
    partial = b"event: image_generation.partial_image\ndata: " + json.dumps(PARTIAL).encode() + b"\n\n"
    return partial + extra + b"data: [DONE]\n\n"


@pytest.fixture
async def fixed_stream() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        extra = {
            "typed": b'event: imagegate.progress\ndata: {"type": "imagegate.progress", "fraction": 0.5}\n\n',
            "comment": b': imagegate.progress {"type":"progress","fraction":0.5}\n\n',
        }[request.match_info["kind"]]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_frames(extra))
        return response

    app = web.Application()
    app.router.add_post("/{kind}/images/generations", handler)
    async with serve_app(app) as url:
        yield url


@pytest.mark.parametrize("strict", [False, True])
async def test_the_sdk_does_not_skip_a_typed_event_of_another_type_but_skips_comments(
    fixed_stream: str, strict: bool
) -> None:
    def events(kind: str) -> list[Any]:
        with openai.OpenAI(base_url=f"{fixed_stream}/{kind}", api_key="x", max_retries=0,
                           _strict_response_validation=strict) as client:
            return list(client.images.generate(prompt="x", stream=True, partial_images=1))

    if strict:
        with pytest.raises(openai.APIResponseValidationError):
            await asyncio.to_thread(events, "typed")
    else:  # handed to the user disguised as a partial image without an image
        typed = await asyncio.to_thread(events, "typed")
        assert [(type(e).__name__, e.type) for e in typed][1] == (
            "ImageGenPartialImageEvent", "imagegate.progress")
        assert typed[1].b64_json is None
    commented = await asyncio.to_thread(events, "comment")
    assert [e.type for e in commented] == ["image_generation.partial_image"]


# -- imagegate's stream ------------------------------------------------------------------------




@pytest.fixture
async def base_url(slow_a1111_url: str, tmp_path: Path) -> AsyncIterator[str]:
    settings = a1111_settings(slow_a1111_url, tmp_path, backend={"progress_interval_s": 0.03})
    async with gateway(settings, ServerOptions(api_keys=(KEY,))) as (url, _):
        yield f"{url}/v1"


def _image(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


@pytest.mark.parametrize("strict", [False, True])
async def test_the_sdk_streams_partial_images_then_the_final_image(base_url: str, strict: bool) -> None:
    def call() -> list[Any]:
        with openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0,
                           _strict_response_validation=strict) as client:
            stream = client.images.generate(prompt="a lighthouse", size="256x256", stream=True,
                                            partial_images=2, extra_body={"steps": 30})
            return list(stream)

    events = await asyncio.to_thread(call)
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for partial in events[:2]:
        assert _image(partial.b64_json).size == tuple(int(v) for v in partial.size.split("x"))
    final = events[-1]
    assert _image(final.b64_json).size == (256, 256) and final.size == "256x256"
    assert final.output_format == "png" and final.usage is not None


async def test_the_async_sdk_with_no_partial_images_gets_the_final_image_only(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0) as client:
        stream = await client.images.generate(prompt="x", size="128x128", stream=True,
                                              partial_images=0, n=2, extra_body={"steps": 10})
        events = [e async for e in stream]
    assert [e.type for e in events] == ["image_generation.completed"] * 2


async def test_progress_goes_out_as_comments_and_the_stream_is_event_stream(base_url: str) -> None:
    body = {"prompt": "x", "size": "128x128", "stream": True, "steps": 30}
    async with aiohttp.ClientSession() as http, http.post(
        base_url + "/images/generations", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        text = (await resp.read()).decode()
    comments = [line for line in text.splitlines() if line.startswith(": imagegate.")]
    progress = [json.loads(c.split(" ", 2)[2]) for c in comments if c.startswith(": imagegate.progress")]
    assert progress and all(p["type"] == "progress" and p["steps"] == 30 for p in progress)
    assert "\nid:" not in text and not text.startswith("id:")  # no ids on this stream
    assert text.endswith("data: [DONE]\n\n")


async def test_a_failure_before_the_stream_opens_is_the_plain_error_status(
    base_url: str, knobs: Knobs
) -> None:
    knobs.arm("status", status=500, count=5)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.images.generate(prompt="x", stream=True, partial_images=1)
    assert caught.value.status_code == 502


async def test_a_failure_after_the_stream_opened_raises_in_the_sdk(
    knobs: Knobs, local_ca: LocalCA, tmp_path: Path
) -> None:
    plan = ["TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING", "TASK_STATUS_FAILED"]
    knobs.arm("task_plan", statuses=plan, reason="the GPU caught fire")
    app = novita_emulator.create_app(knobs=knobs, api_key="nk")
    async with serve_app(app, tls=local_ca) as novita_url:
        table = {"name": "novita", "kind": "novita", "base_url": novita_url, "poll_interval_s": 0.05,
                 "ca_bundle": str(local_ca.ca_file)}
        settings = make_settings([table], service={"output_dir": str(tmp_path / "o")},
                                 environ={"NOVITA_API_KEY": "nk"}, tmp_path=tmp_path)
        async with gateway(settings) as (url, _), openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="x", max_retries=0
        ) as client:
            stream = await client.images.generate(prompt="x", stream=True, size="256x256")
            with pytest.raises(openai.APIError, match="caught fire"):
                async for _ in stream:
                    pass


async def test_a_client_that_leaves_the_stream_interrupts_the_webui(
    base_url: str, webui: Webui
) -> None:
    body = {"prompt": "x", "size": "128x128", "stream": True, "steps": 150}
    async with aiohttp.ClientSession() as http, http.post(
        base_url + "/images/generations", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as resp:
        await resp.content.readline()  # the stream is open: the job runs
        await eventually(lambda: webui.sampling_step > 2)
        running = webui.current_task
    # the connection is closed: the gateway cancels the generation, the A1111 job is interrupted
    await eventually(lambda: [i.task for i in webui.interrupts] == [running], timeout=5)
