"""The ComfyUI backend against the ComfyUI emulator: real HTTP and a real websocket (wss, over
TLS with a throwaway CA) on loopback; the emulator runs its queue and executor for real."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from imagegate.backends.comfyui import ComfyUIBackend
from imagegate.backends.registry import load_settings
from imagegate.errors import (
    AuthFailed,
    BadResponse,
    ConnectFailed,
    GenerationTimeout,
    HandshakeTimeout,
    Rejected,
    ServerError,
)
from imagegate.events import PreviewEvent, ProgressEvent, QueuedEvent
from imagegate.models import ImageFormat, ImageRequest
from imagegate.routing import ImageService
from imagegate.testing import Knobs, LocalCA, serve_app
from imagegate.testing import comfyui as comfyui_emulator
from imagegate.testing.comfyui_nodes import CHECKPOINTS

from tests.backends.support import BackendCase, cli_generate, fails
from tests.conftest import write_config
from tests.server.kit import closed_port_url

COMFY = BackendCase(
    name="comfy", kind="comfyui", cls=ComfyUIBackend,
    table={"poll_interval_s": 0.05, "connect_timeout_s": 5.0, "read_timeout_s": 5.0},
    request={"prompt": "a lighthouse at dusk", "width": 256, "height": 192, "steps": 4},
)
generate = COMFY.generate


def comfy_app(knobs: Knobs, **options: Any) -> web.Application:
    return comfyui_emulator.create_app(knobs=knobs, **options)


@pytest.fixture
def app(knobs: Knobs) -> web.Application:
    return comfy_app(knobs)


@pytest.fixture
async def comfy_url(app: web.Application, local_ca: LocalCA) -> AsyncIterator[str]:
    async with serve_app(app, tls=local_ca) as url:
        yield url


async def until(condition: Any, timeout: float = 5.0) -> None:
    """Wait (polling) until ``condition()`` holds; fail after ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def posted(knobs: Knobs) -> list[dict[str, Any]]:
    return [r.body for r in knobs.requests if r.method == "POST" and r.path == "/prompt"]


def state(app: web.Application) -> Any:
    return app[comfyui_emulator.STATE_KEY]


# --- the "done when" ---------------------------------------------------------------


async def test_cli_generate_writes_512x384_and_the_workflow_carries_the_request(
    comfy_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    config = write_config(tmp_path, f'[[backend]]\nname = "comfy"\nkind = "comfyui"\nbase_url = "{comfy_url}"\n'
                                    f'ca_bundle = "{local_ca.ca_file}"\n')
    doc = await cli_generate(
        "a windmill at noon", "--width", "512", "--height", "384", "--seed", "9", "--steps", "12",
        config=config, env={}, cwd=tmp_path,
    )
    (image,) = doc["images"]
    assert (image["width"], image["height"], image["seed"]) == (512, 384, 9)
    (body,) = posted(knobs)
    graph = body["prompt"]
    assert graph["6"]["inputs"]["text"] == "a windmill at noon"  # the KSampler's positive encoder
    assert graph["7"]["inputs"]["text"] == ""
    assert (graph["3"]["inputs"]["seed"], graph["3"]["inputs"]["steps"]) == (9, 12)
    assert (graph["5"]["inputs"]["width"], graph["5"]["inputs"]["height"], graph["5"]["inputs"]["batch_size"]) == (
        512, 384, 1)
    assert graph["4"]["inputs"]["ckpt_name"] == CHECKPOINTS[0]  # none configured: the server's first
    assert body["client_id"] and body["prompt_id"] and body["extra_data"] == {"preview_method": "none"}


async def test_progress_and_previews_arrive_over_the_websocket(
    knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with (
        serve_app(comfy_app(knobs, step_s=0.01), tls=local_ca) as url,
        ImageService(COMFY.settings(url, tmp_path, local_ca)) as service,
    ):
        events = [e async for e in service.stream(ImageRequest(**COMFY.request), previews=True)]
    steps = [(e.step, e.steps) for e in events if isinstance(e, ProgressEvent)]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    previews = [e for e in events if isinstance(e, PreviewEvent)]
    assert len(previews) == 4 and previews[0].format == "jpeg" and previews[0].width == 32
    assert events[-1].type == "completed"
    assert posted(knobs)[0]["extra_data"] == {"preview_method": "auto"}


async def test_a_prompt_behind_another_is_told_its_queue_place(knobs: Knobs, tmp_path: Path, local_ca: LocalCA) -> None:
    async with (
        serve_app(comfy_app(knobs, step_s=0.05), tls=local_ca) as url,
        ImageService(COMFY.settings(url, tmp_path, local_ca, max_concurrency=2)) as service,
    ):
        first = asyncio.create_task(service.generate(ImageRequest(**COMFY.request)))
        await until(lambda: posted(knobs))
        events = [e async for e in service.stream(ImageRequest(**COMFY.request))]
        await first
    queued = [(e.position, e.queue_size) for e in events if isinstance(e, QueuedEvent)]
    assert (1, 2) in queued
    assert events[-1].type == "completed"


async def test_n_images_are_one_batch(comfy_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA) -> None:
    async with COMFY.backend(comfy_url, tmp_path, local_ca, model=CHECKPOINTS[1]) as backend:
        images = await generate(backend, n=3, seed=5)
    assert [(i.width, i.height, i.format) for i in images] == [(256, 192, ImageFormat.PNG)] * 3
    assert len({i.data for i in images}) == 3 and images[0].seed == 5
    (body,) = posted(knobs)
    assert body["prompt"]["5"]["inputs"]["batch_size"] == 3 and body["prompt"]["4"]["inputs"]["ckpt_name"] == CHECKPOINTS[1]
    views = [r for r in knobs.requests if r.path == "/view"]
    assert [v.query["type"] for v in views] == ["output"] * 3


# --- a user's own workflow ---------------------------------------------------------------------

LORA_WORKFLOW = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINTS[1]}},
    "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": "add_detail.safetensors",
                                                 "strength_model": 0.8, "strength_clip": 0.8}},
    "10": {"class_type": "CLIPTextEncode", "inputs": {"text": "placeholder", "clip": ["2", 1]}},
    "11": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres, watermark", "clip": ["2", 1]}},
    "20": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    "30": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 30, "cfg": 5.5, "sampler_name": "dpmpp_2m",
                                                "scheduler": "karras", "denoise": 1.0, "model": ["2", 0],
                                                "positive": ["10", 0], "negative": ["11", 0], "latent_image": ["20", 0]}},
    "40": {"class_type": "VAEDecode", "inputs": {"samples": ["30", 0], "vae": ["1", 2]}},
    "50": {"class_type": "PreviewImage", "inputs": {"images": ["40", 0]}},
}


async def test_a_user_workflow_gets_the_request_in_the_nodes_found_by_class(
    comfy_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "lora_api.json").write_text(json.dumps(LORA_WORKFLOW))
    async with COMFY.backend(comfy_url, tmp_path, local_ca, workflow="flows/lora_api.json") as backend:
        (image,) = await generate(backend, width=512, height=384, seed=9, steps=12)
        caps = backend.capabilities
    assert (image.width, image.height) == (512, 384)
    graph = posted(knobs)[0]["prompt"]
    assert graph["10"]["inputs"]["text"] == "a lighthouse at dusk"
    assert graph["11"]["inputs"]["text"] == "lowres, watermark"  # no negative asked: the workflow's stays
    assert (graph["30"]["inputs"]["seed"], graph["30"]["inputs"]["steps"], graph["30"]["inputs"]["cfg"]) == (9, 12, 5.5)
    assert (graph["20"]["inputs"]["width"], graph["20"]["inputs"]["height"]) == (512, 384)
    assert graph["1"]["inputs"]["ckpt_name"] == CHECKPOINTS[1]  # found through the LoRA loader, kept
    assert [r.query["type"] for r in knobs.requests if r.path == "/view"] == ["temp"]  # PreviewImage only
    assert "model" in caps.takes and "negative_prompt" in caps.takes


async def test_an_explicit_mapping_places_fields_where_it_says(
    comfy_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    (tmp_path / "flow.json").write_text(json.dumps({"prompt": LORA_WORKFLOW}))  # a saved POST body works too
    inputs = {"prompt": "11.text", "negative_prompt": "10.text", "seed": ["30.seed"]}
    async with COMFY.backend(comfy_url, tmp_path, local_ca, workflow="flow.json", inputs=inputs) as backend:
        await generate(backend, negative_prompt="blurry", seed=3)
    graph = posted(knobs)[0]["prompt"]
    assert (graph["11"]["inputs"]["text"], graph["10"]["inputs"]["text"]) == ("a lighthouse at dusk", "blurry")


# --- failures ------------------------------------------------------------------------------


async def test_a_graph_comfyui_refuses_is_rejected_naming_node_and_input(
    comfy_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with COMFY.backend(comfy_url, tmp_path, local_ca) as backend:
        with pytest.raises(Rejected, match=r"node 4 \(CheckpointLoaderSimple\): Value not in list: ckpt_name: 'nope"):
            await generate(backend, model="nope.safetensors")


async def test_an_execution_error_is_server_error_with_its_message(
    comfy_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("execution_error", message="Allocation on device 0 would exceed allowed memory")
    await fails(COMFY.backend(comfy_url, tmp_path, local_ca), generate, ServerError,
                match="failed at node 3 \\(KSampler\\): torch.OutOfMemoryError: Allocation")


async def test_a_cancelled_generate_interrupts_its_running_prompt(
    knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    app = comfy_app(knobs, step_s=0.05)
    async with serve_app(app, tls=local_ca) as url, COMFY.backend(url, tmp_path, local_ca) as backend:
        task = asyncio.create_task(generate(backend, steps=150))
        await until(lambda: state(app).running is not None)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (prompt_id,) = [b["prompt_id"] for b in posted(knobs)]
        interrupt = [r for r in knobs.requests if r.path == "/interrupt"]
        assert [r.body for r in interrupt] == [{"prompt_id": prompt_id}]
        await until(lambda: prompt_id in state(app).history)
    assert state(app).history[prompt_id]["status"]["status_str"] == "error"


async def test_a_timed_out_prompt_still_queued_is_deleted_from_the_queue(
    knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    app = comfy_app(knobs, step_s=0.05)
    async with serve_app(app, tls=local_ca) as url, COMFY.backend(url, tmp_path, local_ca) as backend:
        blocker = asyncio.create_task(generate(backend, steps=40))
        await until(lambda: state(app).running is not None)
        with pytest.raises(GenerationTimeout, match="still queued"):
            await generate(backend, deadline_s=0.3)
        deletes = [r.body for r in knobs.requests if r.method == "POST" and r.path == "/queue"]
        assert deletes == [{"delete": [posted(knobs)[1]["prompt_id"]]}]
        assert not state(app).pending and not [r for r in knobs.requests if r.path == "/interrupt"]
        await blocker


async def test_without_a_websocket_the_prompt_is_followed_through_history(
    comfy_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("no_socket")
    async with COMFY.backend(comfy_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend)
        (again,) = await generate(backend)  # no second upgrade attempt within the minute
    assert image.width == again.width == 256
    assert len([r for r in knobs.requests if r.path == "/ws"]) == 1
    assert any(r.path.startswith("/history/") for r in knobs.requests)


async def test_a_socket_lost_mid_prompt_leaves_history_to_tell_the_end(
    knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("drop_socket", path="/ws")
    async with (
        serve_app(comfy_app(knobs, step_s=0.01), tls=local_ca) as url,
        COMFY.backend(url, tmp_path, local_ca) as backend,
    ):
        (image,) = await generate(backend)
        (again,) = await generate(backend)  # a new socket for the next one
    assert image.width == again.width == 256
    assert len([r for r in knobs.requests if r.path == "/ws"]) == 2


async def test_an_older_server_minting_its_own_prompt_id_is_followed_too(
    knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with (
        serve_app(comfy_app(knobs, legacy=True, step_s=0.01), tls=local_ca) as url,
        ImageService(COMFY.settings(url, tmp_path, local_ca)) as service,
    ):
        events = [e async for e in service.stream(ImageRequest(**COMFY.request), previews=True)]
    assert [e.step for e in events if isinstance(e, ProgressEvent)] == [1, 2, 3, 4]
    assert len([e for e in events if isinstance(e, PreviewEvent)]) == 4  # type 1 frames, no metadata
    assert events[-1].type == "completed"
    result = events[-1].result  # type: ignore[union-attr]
    assert result.images[0].info["prompt_id"] != posted(knobs)[0]["prompt_id"]


async def test_an_image_that_is_no_image_is_bad_response(
    comfy_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("not_image")
    await fails(COMFY.backend(comfy_url, tmp_path, local_ca), generate, BadResponse, match="not a PNG")


async def test_stalled_prompt_post_is_generation_timeout(
    comfy_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("stall", path="/prompt")
    opened = COMFY.backend(comfy_url, tmp_path, local_ca, read_timeout_s=0.3, model=CHECKPOINTS[0])
    await fails(opened, generate, GenerationTimeout, within_s=0.3 + 1.5)


async def test_tls_black_hole_is_handshake_timeout(blackhole_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    opened = COMFY.backend(blackhole_url, tmp_path, local_ca, connect_timeout_s=0.3)
    await fails(opened, generate, HandshakeTimeout, within_s=0.3 + 0.2)


async def test_a_refused_port_is_connect_failed(tmp_path: Path) -> None:
    await fails(COMFY.backend(closed_port_url(), tmp_path), generate, ConnectFailed)


async def test_behind_a_proxy_the_bearer_key_goes_with_http_and_the_websocket(
    knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    key = "proxy-key-7f3e9a0c41"
    async with serve_app(comfy_app(knobs, api_key=key), tls=local_ca) as url:
        opened = COMFY.backend(url, tmp_path, local_ca, api_key_env="COMFY_PROXY_KEY", environ={"COMFY_PROXY_KEY": key})
        async with opened as backend:
            (image,) = await generate(backend)
        wrong = COMFY.backend(url, tmp_path, local_ca, api_key_env="COMFY_PROXY_KEY",
                              environ={"COMFY_PROXY_KEY": "proxy-key-wrong"})
        await fails(wrong, generate, AuthFailed)
    assert image.width == 256
    socket = next(r for r in knobs.requests if r.path == "/ws")
    assert socket.headers["Authorization"] == f"Bearer {key}"


# --- probe, config ------------------------------------------------------------------------------


async def test_probe_reads_system_stats_and_discovers_checkpoints_and_samplers(
    comfy_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with COMFY.backend(comfy_url, tmp_path, local_ca) as backend:
        assert backend.capabilities.models is None
        health = await backend.probe(timeout=2)
        caps = backend.capabilities
    assert health.ok and (health.detail or "").startswith("ComfyUI 0.3.40 on cuda:0")
    assert caps.models == tuple(CHECKPOINTS) and caps.samplers is not None and "dpmpp_2m" in caps.samplers
    assert caps.source.startswith("discovered: checkpoints, samplers")
    assert [r.path for r in knobs.requests] == ["/system_stats", "/object_info/CheckpointLoaderSimple",
                                                "/object_info/KSampler"]


async def test_the_router_refuses_a_checkpoint_the_server_lacks_before_sending(
    comfy_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with ImageService(COMFY.settings(comfy_url, tmp_path, local_ca)) as service:
        await service.backend("comfy").probe(timeout=2)
        with pytest.raises(Exception, match="model"):
            await service.generate(ImageRequest(**{**COMFY.request, "model": "missing.safetensors"}))
    assert not posted(knobs)


def test_comfyui_url_alone_enables_the_backend() -> None:
    settings = load_settings(None, environ={"COMFYUI_URL": "http://127.0.0.1:8188"}, dotenv=False)
    assert [(b.kind, b.base_url) for b in settings.backends] == [("comfyui", "http://127.0.0.1:8188")]
