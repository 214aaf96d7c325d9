"""The fal, Replicate and Together emulators keep their providers' documented rules, over a real
loopback socket (a raw aiohttp client here, not imagegate's backends)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from imagegate.testing import Knobs, serve_app
from imagegate.testing import fal as fal_emulator
from imagegate.testing import replicate as replicate_emulator
from imagegate.testing import together as together_emulator

Call = tuple[aiohttp.ClientSession, str]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        yield http


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any, Any]:
    async with http.request(method, url, **kw) as resp:
        text = await resp.text()
        body = json.loads(text) if text and resp.content_type == "application/json" else text
        return resp.status, body, resp.headers


# --- fal ---------------------------------------------------------------------------------------

FAL_KEY = {"Authorization": "Key id:secret"}


async def test_fal_queue_urls_drop_the_sub_path_and_requests_live_only_there(
    session: aiohttp.ClientSession, knobs: Knobs
) -> None:
    async with serve_app(fal_emulator.create_app(knobs=knobs, api_key="id:secret")) as url:
        status, sub, headers = await call(session, "POST", url + "/fal-ai/flux/schnell", headers=FAL_KEY,
                                          json={"prompt": "fox"})
        assert status == 200 and headers["x-fal-request-id"] == sub["request_id"]
        rid = sub["request_id"]
        assert sub["status_url"] == f"{url}/fal-ai/flux/requests/{rid}/status" and sub["status"] == "IN_QUEUE"
        assert (await call(session, "GET", f"{url}/fal-ai/flux/schnell/requests/{rid}/status", headers=FAL_KEY))[0] \
            == 404  # the sub-path is not where status lives
        status, done, _ = await call(session, "GET", sub["status_url"], headers=FAL_KEY, params={"logs": "1"})
        assert done["status"] == "COMPLETED" and isinstance(done["logs"], list) and "metrics" in done
        status, result, _ = await call(session, "GET", sub["response_url"], headers=FAL_KEY)
        assert status == 200 and result["images"][0]["width"] == 1024 and result["has_nsfw_concepts"] == [False]
        assert result["images"][0]["content_type"] == "image/jpeg"  # output_format defaults to jpeg
        assert (await call(session, "PUT", sub["cancel_url"], headers=FAL_KEY))[1] == {"status": "ALREADY_COMPLETED"}


async def test_fal_refuses_a_wrong_key_and_validates_input_when_it_runs(
    session: aiohttp.ClientSession, knobs: Knobs
) -> None:
    async with serve_app(fal_emulator.create_app(knobs=knobs, api_key="id:secret")) as url:
        status, body, _ = await call(session, "POST", url + "/fal-ai/flux/schnell", json={"prompt": "x"},
                                     headers={"Authorization": "Key id:wrong"})
        assert (status, body) == (401, {"detail": "No user found for Key ID and Secret"})
        _, sub, _ = await call(session, "POST", url + "/fal-ai/flux/schnell", headers=FAL_KEY,
                               json={"prompt": "x", "num_inference_steps": 13, "image_size": {"width": 20000}})
        status, body, headers = await call(session, "GET", sub["response_url"], headers=FAL_KEY)
    assert status == 422 and headers["X-Fal-Retryable"] == "false"
    assert [(d["loc"], d["type"]) for d in body["detail"]] == [
        (["body", "image_size", "width"], "less_than_equal"), (["body", "image_size", "height"], "missing"),
        (["body", "num_inference_steps"], "less_than_equal")]


async def test_fal_status_without_logs_has_a_null_logs_key_and_cancel_is_accepted_while_queued(
    session: aiohttp.ClientSession, knobs: Knobs
) -> None:
    knobs.arm("plan", queue=[1], steps=2)
    async with serve_app(fal_emulator.create_app(knobs=knobs, api_key="id:secret")) as url:
        _, sub, _ = await call(session, "POST", url + "/fal-ai/flux/schnell", headers=FAL_KEY, json={"prompt": "x"})
        assert sub["queue_position"] == 1
        _, queued, _ = await call(session, "GET", sub["status_url"], headers=FAL_KEY)
        _, running, _ = await call(session, "GET", sub["status_url"], headers=FAL_KEY, params={"logs": "0"})
        assert (queued["status"], queued["queue_position"]) == ("IN_QUEUE", 1)
        assert running["status"] == "IN_PROGRESS" and "logs" in running and running["logs"] is None
        status, answer, _ = await call(session, "PUT", sub["cancel_url"], headers=FAL_KEY)
        assert (status, answer) == (202, {"status": "CANCELLATION_REQUESTED"})
        _, after, _ = await call(session, "GET", sub["status_url"], headers=FAL_KEY)
    assert after["status"] == "COMPLETED" and after["error_type"] == "cancelled"


# --- Replicate -----------------------------------------------------------------------------------

R8 = {"Authorization": "Bearer r8_x"}


async def test_replicate_prefer_wait_holds_until_done_and_without_it_answers_starting(
    session: aiohttp.ClientSession, knobs: Knobs
) -> None:
    knobs.arm("slow", seconds=0.2, count=2)
    async with serve_app(replicate_emulator.create_app(knobs=knobs, api_key="r8_x")) as url:
        create = url + "/v1/models/black-forest-labs/flux-schnell/predictions"
        started = time.monotonic()
        status, held, _ = await call(session, "POST", create, headers={**R8, "Prefer": "wait=5"},
                                     json={"input": {"prompt": "fox"}})
        assert status == 201 and held["status"] == "succeeded" and time.monotonic() - started >= 0.19
        assert held["version"] == "hidden" and held["output"][0].startswith(f"{url}/delivery/")
        assert set(held["urls"]) == {"get", "cancel", "stream", "web"}
        _, early, _ = await call(session, "POST", create, headers=R8, json={"input": {"prompt": "fox"}})
        assert (early["status"], early["output"]) == ("starting", None)
        _, canceled, _ = await call(session, "POST", early["urls"]["cancel"], headers=R8)
        assert canceled["status"] == "canceled"


async def test_replicate_refuses_bad_bodies_with_invalid_fields(session: aiohttp.ClientSession, knobs: Knobs) -> None:
    async with serve_app(replicate_emulator.create_app(knobs=knobs, api_key="r8_x")) as url:
        create = url + "/v1/models/black-forest-labs/flux-schnell/predictions"
        status, body, _ = await call(session, "POST", create, headers=R8, json={"inptu": {}})
        assert status == 422 and [f["description"] for f in body["invalid_fields"]] == [
            "Additional property inptu is not allowed", "input is required"]
        _, body, _ = await call(session, "POST", create, headers=R8,
                                json={"input": {"prompt": "x", "num_outputs": 9, "aspect_ratio": "7:3"}})
        assert {f["field"] for f in body["invalid_fields"]} == {"input.num_outputs", "input.aspect_ratio"}
        status, body, _ = await call(session, "POST", url + "/v1/predictions", headers=R8,
                                     json={"version": "0" * 64, "input": {"prompt": "x"}})
        assert (status, body["title"]) == (422, "Invalid version or not permitted")
        status, _, _ = await call(session, "POST", url + "/v1/models/stability-ai/sdxl/predictions", headers=R8,
                                  json={"input": {"prompt": "x"}})
        assert status == 404  # not an official model: run by version
        status, body, _ = await call(session, "GET", url + "/v1/account", headers={"Authorization": "Bearer no"})
        assert (status, body["title"]) == (401, "Unauthenticated")


async def test_replicate_serves_a_cog_schema_with_ref_enums(session: aiohttp.ClientSession, knobs: Knobs) -> None:
    async with serve_app(replicate_emulator.create_app(knobs=knobs, api_key="r8_x")) as url:
        _, model, _ = await call(session, "GET", url + "/v1/models/stability-ai/sdxl", headers=R8)
    schemas = model["latest_version"]["openapi_schema"]["components"]["schemas"]
    assert schemas["Input"]["properties"]["scheduler"]["allOf"] == [{"$ref": "#/components/schemas/scheduler"}]
    assert "K_EULER" in schemas["scheduler"]["enum"]
    assert schemas["Output"] == {"type": "array", "items": {"type": "string", "format": "uri"}, "title": "Output"}


# --- Together ------------------------------------------------------------------------------------

TG = {"Authorization": "Bearer tg"}


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"prompt": "x"}, 400, "model"),
    ({"model": "black-forest-labs/FLUX.1-schnell", "prompt": "x", "response_format": "b64_json"}, 400,
     "response_format"),
    ({"model": "black-forest-labs/FLUX.1-schnell", "prompt": "x", "output_format": "webp"}, 400, "output_format"),
    ({"model": "black-forest-labs/FLUX.1-schnell", "prompt": "x", "n": 5}, 400, "n"),
    ({"model": "meta-llama/Llama-3.3-70B-Instruct-Turbo", "prompt": "x"}, 404, "model"),
])
async def test_together_refuses_what_its_spec_refuses(
    session: aiohttp.ClientSession, knobs: Knobs, body: dict[str, Any], status: int, param: str
) -> None:
    async with serve_app(together_emulator.create_app(knobs=knobs, api_key="tg")) as url:
        got, answer, _ = await call(session, "POST", url + "/v1/images/generations", headers=TG, json=body)
    assert got == status and answer["error"]["param"] == param and set(answer["error"]) == {
        "message", "type", "param", "code"}


async def test_together_answers_image_response_and_a_bare_model_list(
    session: aiohttp.ClientSession, knobs: Knobs
) -> None:
    async with serve_app(together_emulator.create_app(knobs=knobs, api_key="tg")) as url:
        _, answer, _ = await call(session, "POST", url + "/v1/images/generations", headers=TG, json={
            "model": "black-forest-labs/FLUX.1-schnell", "prompt": "x", "response_format": "base64", "n": 2})
        _, models, _ = await call(session, "GET", url + "/v1/models", headers=TG)
        status, refused, _ = await call(session, "GET", url + "/v1/models", headers={"Authorization": "Bearer no"})
    assert answer["object"] == "list" and [d["index"] for d in answer["data"]] == [0, 1]
    assert {d["type"] for d in answer["data"]} == {"b64_json"}
    assert isinstance(models, list) and {m["type"] for m in models} == {"image", "chat"}
    assert (status, refused["error"]["code"]) == (401, "invalid_api_key")
