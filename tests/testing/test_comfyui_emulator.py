"""The ComfyUI emulator speaks ComfyUI's API and websocket protocol, over a real loopback socket
(a raw aiohttp client here, not imagegate's backend)."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from imagegate.backends.comfyui import BUILT_IN
from imagegate.testing import Knobs, serve_app
from imagegate.testing import comfyui as comfyui_emulator
from imagegate.testing.comfyui_nodes import CHECKPOINTS

Client = tuple[aiohttp.ClientSession, str]


def graph(**changes: Any) -> dict[str, Any]:
    g: dict[str, Any] = json.loads(json.dumps(BUILT_IN))
    g["4"]["inputs"]["ckpt_name"] = CHECKPOINTS[0]
    g["6"]["inputs"]["text"] = "a fox"
    for key, value in changes.items():
        node, name = key.split("__")
        g[node]["inputs"][name] = value
    return g


@pytest.fixture
def app(knobs: Knobs) -> web.Application:
    return comfyui_emulator.create_app(knobs=knobs)


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[Client]:
    async with serve_app(app) as url, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session, url


async def post(client: Client, path: str, body: Any) -> tuple[int, Any]:
    session, url = client
    async with session.post(url + path, json=body) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


async def get(client: Client, path: str) -> tuple[int, Any]:
    session, url = client
    async with session.get(url + path) as resp:
        return resp.status, await resp.json() if resp.content_type == "application/json" else await resp.read()


async def messages_until_done(ws: aiohttp.ClientWebSocketResponse, prompt_id: str) -> list[Any]:
    """Every frame (JSON as (type, data), binary as bytes) up to ``executing`` node null."""
    seen: list[Any] = []
    async with asyncio.timeout(5):
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                seen.append(msg.data)
                continue
            doc = json.loads(msg.data)
            seen.append((doc["type"], doc["data"]))
            if doc["type"] == "executing" and doc["data"]["node"] is None and doc["data"]["prompt_id"] == prompt_id:
                return seen
    return seen


async def test_a_prompt_runs_with_its_messages_in_comfyuis_order(client: Client) -> None:
    session, url = client
    async with session.ws_connect(url + "/ws?clientId=me") as ws:
        first = await ws.receive_json()
        assert first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"}}
        status, answer = await post(client, "/prompt", {"prompt": graph(**{"3__steps": 3}), "client_id": "me"})
        assert status == 200 and answer["number"] == 0 and answer["node_errors"] == {}
        pid = answer["prompt_id"]
        seen = await messages_until_done(ws, pid)
    kinds = [m[0] if isinstance(m, tuple) else "binary" for m in seen]
    start = kinds.index("execution_start")
    assert kinds[start:start + 2] == ["execution_start", "execution_cached"]
    assert kinds.count("progress") == 3 and kinds.count("binary") == 3  # preview_method auto by default
    assert [m[1]["value"] for m in seen if isinstance(m, tuple) and m[0] == "progress"] == [1, 2, 3]
    assert kinds[-3:] == ["executed", "execution_success", "executing"]
    frame = next(m for m in seen if isinstance(m, bytes))
    assert struct.unpack(">II", frame[:8]) == (1, 1) and frame[8:11] == b"\xff\xd8\xff"  # type 1, JPEG
    executed = next(m[1] for m in seen if isinstance(m, tuple) and m[0] == "executed")
    assert executed["node"] == "9" and executed["output"]["images"][0]["type"] == "output"
    _, history = await get(client, f"/history/{pid}")
    assert history[pid]["status"]["status_str"] == "success"
    assert [m[0] for m in history[pid]["status"]["messages"]] == ["execution_start", "execution_cached",
                                                                   "execution_success"]
    image = history[pid]["outputs"]["9"]["images"][0]
    status, data = await get(client, f"/view?filename={image['filename']}&subfolder=&type=output")
    assert status == 200 and data.startswith(b"\x89PNG")


async def test_preview_metadata_frames_follow_the_feature_flag(client: Client) -> None:
    session, url = client
    async with session.ws_connect(url + "/ws?clientId=me") as ws:
        await ws.receive_json()
        await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        flags = await ws.receive_json()
        assert flags["type"] == "feature_flags" and flags["data"]["supports_preview_metadata"] is True
        _, answer = await post(client, "/prompt", {"prompt": graph(**{"3__steps": 1}), "client_id": "me"})
        seen = await messages_until_done(ws, answer["prompt_id"])
    (frame,) = [m for m in seen if isinstance(m, bytes)]
    (event, size) = struct.unpack(">II", frame[:8])
    meta = json.loads(frame[8:8 + size])
    assert event == 4 and meta["prompt_id"] == answer["prompt_id"] and meta["image_type"] == "image/jpeg"


async def test_a_prompts_messages_go_only_to_its_own_client(client: Client) -> None:
    session, url = client
    async with session.ws_connect(url + "/ws?clientId=a") as a, session.ws_connect(url + "/ws?clientId=b") as b:
        await a.receive_json()
        await b.receive_json()
        _, answer = await post(client, "/prompt", {"prompt": graph(**{"3__steps": 1}), "client_id": "a",
                                                   "extra_data": {"preview_method": "none"}})
        await messages_until_done(a, answer["prompt_id"])
        others = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                async for msg in b:
                    others.append(json.loads(msg.data)["type"])
    assert others and set(others) == {"status"}  # only the broadcast status reached b


async def test_validation_errors_have_comfyuis_shape(client: Client) -> None:
    status, body = await post(client, "/prompt", {"prompt": graph(**{"3__steps": 20000, "4__ckpt_name": "x.ckpt"})})
    assert status == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    steps = body["node_errors"]["3"]
    assert steps["class_type"] == "KSampler" and steps["dependent_outputs"] == ["9"]
    assert steps["errors"][0]["message"] == "Value 20000 bigger than max of 10000"
    assert body["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"
    g = graph()
    g["8"]["inputs"]["samples"] = ["6", 0]  # CONDITIONING where LATENT is wanted
    _, body = await post(client, "/prompt", {"prompt": g})
    assert body["node_errors"]["8"]["errors"][0]["details"] == "samples, received_type(CONDITIONING) mismatch " \
                                                               "input_type(LATENT)"
    g = graph()
    g["9"]["class_type"] = "SaveImageWebsocket"
    _, body = await post(client, "/prompt", {"prompt": g})
    assert body["error"]["type"] == "missing_node_type" and body["node_errors"] == {}
    _, body = await post(client, "/prompt", {"prompt": {k: v for k, v in graph().items() if k != "9"}})
    assert body["error"]["type"] == "prompt_no_outputs"
    _, body = await post(client, "/prompt", {"client_id": "x"})
    assert body["error"]["type"] == "no_prompt"
    _, body = await post(client, "/prompt", {"prompt": graph(), "prompt_id": "ABC"})
    assert body["error"]["type"] == "invalid_prompt_id"


async def test_a_client_prompt_id_is_kept_and_an_older_server_mints_its_own(knobs: Knobs) -> None:
    mine = str(uuid.uuid4())
    for legacy in (False, True):
        async with (
            serve_app(comfyui_emulator.create_app(knobs=knobs, legacy=legacy)) as url,
            aiohttp.ClientSession() as session,
            session.post(url + "/prompt", json={"prompt": graph(), "prompt_id": mine}) as resp,
        ):
            answer = await resp.json()
        assert (answer["prompt_id"] == mine) is not legacy


async def test_interrupt_stops_only_the_named_running_prompt_and_queue_delete_removes_pending(knobs: Knobs) -> None:
    app = comfyui_emulator.create_app(knobs=knobs, step_s=0.02)
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        client = (session, url)
        _, first = await post(client, "/prompt", {"prompt": graph(**{"3__steps": 100})})
        _, second = await post(client, "/prompt", {"prompt": graph(**{"3__steps": 100})})
        async with asyncio.timeout(5):
            while (await get(client, "/queue"))[1]["queue_running"] == []:
                await asyncio.sleep(0.01)
        _, queue = await get(client, "/queue")
        assert [i[1] for i in queue["queue_running"]] == [first["prompt_id"]]
        assert [i[1] for i in queue["queue_pending"]] == [second["prompt_id"]] and len(queue["queue_pending"][0]) == 5
        assert (await post(client, "/interrupt", {"prompt_id": second["prompt_id"]}))[0] == 200  # not running: no-op
        assert (await post(client, "/queue", {"delete": [second["prompt_id"]]}))[0] == 200
        assert (await post(client, "/interrupt", {"prompt_id": first["prompt_id"]}))[0] == 200
        async with asyncio.timeout(5):
            while first["prompt_id"] not in (await get(client, "/history"))[1]:
                await asyncio.sleep(0.01)
        _, history = await get(client, "/history")
    record = history[first["prompt_id"]]
    assert record["status"]["status_str"] == "error"
    assert record["status"]["messages"][-1][0] == "execution_interrupted"
    assert second["prompt_id"] not in history


async def test_view_refuses_what_comfyui_refuses(client: Client) -> None:
    assert (await get(client, "/view?filename=nope.png"))[0] == 404
    assert (await get(client, "/view"))[0] == 404
    assert (await get(client, "/view?filename=../x.png"))[0] == 400
    assert (await get(client, "/view?filename=a.png&type=secret"))[0] == 400
    assert (await get(client, "/view?filename=a.png&subfolder=../../etc"))[0] == 403


async def test_object_info_lists_checkpoints_and_samplers_as_v1_combos(client: Client) -> None:
    _, info = await get(client, "/object_info/CheckpointLoaderSimple")
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == CHECKPOINTS
    _, sampler = await get(client, "/api/object_info/KSampler")  # every route also under /api
    assert "euler" in sampler["KSampler"]["input"]["required"]["sampler_name"][0]
    assert (await get(client, "/object_info/NoSuchNode"))[1] == {}
    _, stats = await get(client, "/system_stats")
    assert stats["system"]["comfyui_version"] and stats["devices"][0]["type"] == "cuda"


async def test_a_foreign_origin_on_a_loopback_host_is_a_bare_403(client: Client) -> None:
    session, url = client
    async with session.get(url + "/system_stats", headers={"Origin": "http://evil.example"}) as resp:
        assert resp.status == 403 and await resp.read() == b""
    async with session.get(url + "/system_stats", headers={"Origin": url}) as resp:
        assert resp.status == 200


async def test_an_execution_error_reaches_the_socket_and_the_history(client: Client, knobs: Knobs) -> None:
    knobs.arm("execution_error", message="boom", type="RuntimeError")
    session, url = client
    async with session.ws_connect(url + "/ws?clientId=me") as ws:
        _, answer = await post(client, "/prompt", {"prompt": graph(**{"3__steps": 1}), "client_id": "me"})
        seen = await messages_until_done(ws, answer["prompt_id"])
    error = next(m[1] for m in seen if isinstance(m, tuple) and m[0] == "execution_error")
    assert (error["exception_message"], error["exception_type"], error["node_type"]) == ("boom", "RuntimeError",
                                                                                        "KSampler")
    _, history = await get(client, f"/history/{answer['prompt_id']}")
    assert history[answer["prompt_id"]]["status"]["completed"] is False
