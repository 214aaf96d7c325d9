"""The router stand-in is as strict as the router: each provider route refuses what the real
one refuses, in that provider's shape (the rules and their sources are in
``imagegate.testing.hf_inference``), and answers what its clients read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from imagegate.testing import Knobs, serve_app
from imagegate.testing import hf_inference as hf_emulator

TOKEN = "hf_emulator_0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCHNELL = "black-forest-labs/FLUX.1-schnell"


@pytest.fixture
async def post(knobs: Knobs) -> AsyncIterator[Any]:
    async with serve_app(hf_emulator.create_app(knobs=knobs, api_key=TOKEN)) as url, aiohttp.ClientSession() as s:
        async def send(path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
            async with s.post(url + path, json=body, headers={**AUTH, **(headers or {})}) as resp:
                return resp.status, await resp.json(content_type=None)

        yield send


GOOD = {
    "/fal-ai/fal-ai/flux/schnell": {"prompt": "p", "image_size": {"width": 64, "height": 64}},
    "/together/v1/images/generations": {"prompt": "p", "model": SCHNELL, "response_format": "base64"},
    "/nscale/v1/images/generations": {"prompt": "p", "model": SCHNELL, "size": "64x64"},
    "/replicate/v1/models/black-forest-labs/flux-schnell/predictions": {"input": {"prompt": "p"}},
    "/wavespeed/api/v3/wavespeed-ai/flux-schnell": {"prompt": "p"},
    "/zai-org/api/paas/v4/async/images/generations": {"prompt": "p", "model": "glm-image", "size": "1024x1024"},
}


@pytest.mark.parametrize("path", list(GOOD))
async def test_every_provider_route_wants_the_hf_token(post: Any, path: str) -> None:
    status, body = await post(path, GOOD[path], {"Authorization": "Bearer hf_wrong"})
    assert (status, body) == (401, {"error": "Invalid credentials in Authorization header"})


@pytest.mark.parametrize(("path", "body"), [
    ("/fal-ai/fal-ai/unknown", {"prompt": "p"}),
    ("/together/v1/images/generations", {"prompt": "p", "model": "nobody/model"}),
    ("/replicate/v1/models/nobody/model/predictions", {"input": {"prompt": "p"}}),
    ("/wavespeed/api/v3/nobody/model", {"prompt": "p"}),
    ("/zai-org/api/paas/v4/async/images/generations", {"prompt": "p", "model": "cogview-3"}),
])
async def test_a_provider_side_id_the_provider_does_not_serve_is_404(post: Any, path: str, body: Any) -> None:
    status, answer = await post(path, body)
    assert status == 404 and answer["error"].startswith("Model not supported by provider")


@pytest.mark.parametrize(("path", "body", "status", "where"), [
    ("/fal-ai/fal-ai/flux/schnell", {"image_size": "square"}, 422, ("detail", 0, "loc")),
    ("/fal-ai/fal-ai/flux/schnell", {"prompt": "p", "image_size": "huge"}, 422, ("detail", 0, "msg")),
    ("/together/v1/images/generations", {"prompt": "p", "model": SCHNELL, "steps": "4"}, 400, ("error", "message")),
    ("/together/v1/images/generations", {"prompt": "p", "model": SCHNELL, "n": 9}, 400, ("error", "message")),
    ("/nscale/v1/images/generations", {"prompt": "p", "model": SCHNELL, "size": "big"}, 400, ("error", "message")),
    ("/replicate/v1/models/black-forest-labs/flux-schnell/predictions", {"prompt": "p"}, 422, ("detail",)),
    ("/wavespeed/api/v3/wavespeed-ai/flux-schnell", {"prompt": 3}, 400, ("message",)),
    ("/zai-org/api/paas/v4/async/images/generations",
     {"prompt": "p", "model": "glm-image", "size": "1000x1000"}, 400, ("error", "code")),
])
async def test_invalid_bodies_are_refused_in_the_providers_own_shape(
    post: Any, path: str, body: Any, status: int, where: tuple[Any, ...]
) -> None:
    got, answer = await post(path, body)
    assert got == status
    for step in where:
        answer = answer[step]
    assert answer


@pytest.mark.parametrize("path", list(GOOD))
async def test_every_good_body_is_answered(post: Any, path: str) -> None:
    status, _ = await post(path, GOOD[path], {"Prefer": "wait"})
    assert status in (200, 201)


async def test_replicate_without_prefer_wait_answers_a_prediction_that_only_starts(post: Any) -> None:
    path = "/replicate/v1/models/black-forest-labs/flux-schnell/predictions"
    status, waiting = await post(path, GOOD[path], {"Prefer": "wait"})
    _, started = await post(path, GOOD[path])
    assert status == 201 and waiting["status"] == "succeeded" and waiting["output"][0].startswith("http")
    assert (started["status"], started["output"]) == ("starting", None)


async def test_one_route_can_be_black_holed_while_the_others_answer(knobs: Knobs) -> None:
    knobs.arm("stall", path="/fal-ai/*", count=10)
    async with serve_app(hf_emulator.create_app(knobs=knobs, api_key=TOKEN)) as url, aiohttp.ClientSession() as s:
        timeout = aiohttp.ClientTimeout(total=0.3)
        with pytest.raises(TimeoutError):
            async with s.post(url + "/fal-ai/fal-ai/flux/schnell", json=GOOD["/fal-ai/fal-ai/flux/schnell"],
                              headers=AUTH, timeout=timeout):
                pass
        async with s.post(url + "/together/v1/images/generations", json=GOOD["/together/v1/images/generations"],
                          headers=AUTH, timeout=timeout) as resp:
            assert resp.status == 200
