"""The A1111 backend against Forge, reForge and SD.Next: the A1111 emulator in each fork's
flavor (testing/a1111_forks.py, with sources), over real loopback HTTP.

What differs and what the backend must survive: Forge's FastAPI-default error bodies (no
webui middleware); SD.Next's missing ``/internal/progress`` and ``/sdapi/v1/schedulers``,
its own sampler set, its 404 for an unknown sampler, its ignored ``force_task_id``, its
defaults (1024x1024, cfg 6.0, UniPC).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from imagegate import ImageRequest, ImageService
from imagegate.backends.a1111 import A1111Backend
from imagegate.errors import InvalidRequest, Rejected, ServerError
from imagegate.events import ProgressEvent
from imagegate.models import Deadline
from imagegate.testing import Knobs, serve_app
from imagegate.testing import a1111 as a1111_emulator
from imagegate.testing.a1111_webui import Webui

from tests.conftest import make_settings
from tests.routing.support import eventually

FLAVORS = ("forge", "reforge", "sdnext")
REQUEST = ImageRequest(prompt="a windmill at noon", width=512, height=384, seed=9, steps=12)
Serve = Callable[..., Any]


def settings(url: str, tmp_path: Path, **keys: Any) -> Any:
    table = {"name": "sd", "kind": "a1111", "base_url": url, "progress_interval_s": 0.02, "read_timeout_s": 10,
             **keys}
    return make_settings([table], service={"probe_interval_s": 3600}, tmp_path=tmp_path)


@pytest.fixture
async def fork(knobs: Knobs) -> AsyncIterator[Serve]:
    """``await fork(flavor, **options)`` -> the URL of that fork's stand-in (closed at the end)."""
    async with contextlib.AsyncExitStack() as stack:
        async def serve(flavor: str, **options: Any) -> str:
            app = a1111_emulator.create_app(knobs=knobs, flavor=flavor, **options)
            return str(await stack.enter_async_context(serve_app(app)))
        yield serve


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_each_fork_serves_the_size_and_seed_asked(fork: Serve, knobs: Knobs, tmp_path: Path, flavor: str) -> None:
    url = await fork(flavor)
    async with ImageService(settings(url, tmp_path)) as service:
        health = await service.backend("sd").probe(timeout=2)
        result = await service.generate(REQUEST)
    assert health.ok, health.last_error
    (image,) = result.images
    assert (image.width, image.height, image.seed) == (512, 384, 9)
    (body,) = [r.body for r in knobs.requests if r.path == "/sdapi/v1/txt2img"]
    assert (body["width"], body["height"], body["steps"], body["seed"]) == (512, 384, 12, 9)


async def test_sdnext_samplers_are_discovered_without_schedulers(fork: Serve, tmp_path: Path) -> None:
    url = await fork("sdnext")
    async with ImageService(settings(url, tmp_path)) as service:
        backend = service.backend("sd")
        await backend.probe(timeout=2)
        caps = backend.capabilities
    assert caps.samplers is not None and "UniPC" in caps.samplers and caps.scheduler_suffixes == ()


async def test_sdnext_refuses_an_unknown_sampler_with_its_404_which_is_rejected(
    fork: Serve, tmp_path: Path
) -> None:
    url = await fork("sdnext")
    async with ImageService(settings(url, tmp_path)) as service:
        backend = service.backend("sd")
        assert isinstance(backend, A1111Backend)
        request = REQUEST.model_copy(update={"sampler": "DPM++ 2M Karras"})  # A1111's combined name
        with pytest.raises(Rejected, match="Sampler not found") as caught:
            await backend.generate(request, deadline=Deadline.after(5))
    assert caught.value.status == 404


async def test_the_router_keeps_an_a1111_sampler_name_from_reaching_sdnext(
    fork: Serve, knobs: Knobs, tmp_path: Path
) -> None:
    url = await fork("sdnext")
    request = REQUEST.model_copy(update={"sampler": "DPM++ 2M Karras"})
    async with ImageService(settings(url, tmp_path)) as service:
        await service.backend("sd").probe(timeout=2)
        result = await service.generate(request)  # nearest: the sampler SD.Next lacks is dropped, said so
    assert any(a.field == "sampler" for a in result.adjustments)
    (body,) = [r.body for r in knobs.requests if r.path == "/sdapi/v1/txt2img"]
    assert "sampler_name" not in body
    strict = make_settings([{"name": "sd", "kind": "a1111", "base_url": url}],
                           service={"probe_interval_s": 3600, "adapt": "strict"}, tmp_path=tmp_path)
    async with ImageService(strict) as service:
        await service.backend("sd").probe(timeout=2)
        with pytest.raises(InvalidRequest, match="sampler"):
            await service.generate(request)


async def test_sdnext_without_internal_progress_still_reports_steps(knobs: Knobs, tmp_path: Path) -> None:
    webui = Webui(step_s=0.02)
    async with (
        serve_app(a1111_emulator.create_app(knobs=knobs, flavor="sdnext", webui=webui)) as url,
        ImageService(settings(url, tmp_path)) as service,
    ):
        events = [e async for e in service.stream(REQUEST.model_copy(update={"steps": 10}))]
    assert [r for r in knobs.requests if r.path == "/internal/progress"][:1]  # asked once, 404
    assert [e for e in events if isinstance(e, ProgressEvent)], "steps came from /sdapi/v1/progress"
    assert events[-1].type == "completed"


@pytest.mark.parametrize(("flavor", "interrupted"), [("forge", True), ("sdnext", False)])
async def test_cancel_interrupts_only_where_the_task_can_be_told_ours(
    knobs: Knobs, tmp_path: Path, flavor: str, interrupted: bool
) -> None:
    webui = Webui(step_s=0.05)
    async with (
        serve_app(a1111_emulator.create_app(knobs=knobs, flavor=flavor, webui=webui)) as url,
        ImageService(settings(url, tmp_path)) as service,
    ):
        task = asyncio.create_task(service.generate(REQUEST.model_copy(update={"steps": 100})))
        await eventually(lambda: webui.current_task is not None)
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # Forge knows our task id (force_task_id, /internal/progress): interrupted. SD.Next cannot
    # say which job runs: abandoned, never a global interrupt that could hit someone else's.
    assert bool(webui.interrupts) is interrupted


@pytest.mark.parametrize(("flavor", "body", "header"), [
    ("a1111", {"error": "HTTPException", "detail": "OutOfMemoryError", "body": "", "errors": ""}, True),
    ("forge", {"detail": "Internal Server Error"}, False),
    ("sdnext", {"error": "HTTPException", "code": 500, "detail": "Internal Server Error", "body": "",
                "errors": "500: Internal Server Error"}, True),
])
async def test_each_forks_error_shape_is_read_into_the_message(
    knobs: Knobs, tmp_path: Path, flavor: str, body: dict[str, Any], header: bool
) -> None:
    async with serve_app(a1111_emulator.create_app(knobs=knobs, flavor=flavor)) as url:
        async with aiohttp.ClientSession() as http:
            resp = await http.get(url + "/sdapi/v1/options")
            assert ("X-Process-Time" in resp.headers) is header
            resp.release()
            resp = await http.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", "steps": "many"})
            problem = (await resp.json())["detail"][0]
        knobs.arm("status", status=500)
        async with ImageService(settings(url, tmp_path)) as service:
            with pytest.raises(ServerError, match=str(body["detail"])):
                await service.backend("sd").generate(REQUEST, deadline=Deadline.after(5))
    assert knobs.requests[-1].path == "/sdapi/v1/txt2img"
    assert resp.status == 422 and problem["loc"] == ["body", "steps"]
    assert ("url" in problem) is (flavor == "forge")  # pydantic v2 only in Forge
    assert a1111_emulator.FLAVORS[flavor].error(500) == body
