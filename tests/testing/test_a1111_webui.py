"""The A1111 emulator's progress routes keep the webui's rules (testing/a1111_webui.py cites
them): task ids queued -> active -> completed, the global progress, a global interrupt that
still answers 200, ``--nowebui`` without ``/internal/*``, a job that outlives its client."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from imagegate.testing import a1111 as a1111_emulator
from imagegate.testing import serve_app
from imagegate.testing.a1111_webui import Webui

from tests.routing.support import eventually

TXT2IMG = "/sdapi/v1/txt2img"


@pytest.fixture
def webui() -> Webui:
    return Webui(step_s=0.02)


@pytest.fixture
async def http(webui: Webui) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    timeout = aiohttp.ClientTimeout(total=20)
    async with serve_app(a1111_emulator.create_app(webui=webui)) as url, aiohttp.ClientSession(
        timeout=timeout
    ) as session:
        yield session, url


async def progress(http: tuple[aiohttp.ClientSession, str], **body: Any) -> dict[str, Any]:
    session, url = http
    async with session.post(url + "/internal/progress", json=body) as resp:
        assert resp.status == 200
        return dict(await resp.json())


async def txt2img(http: tuple[aiohttp.ClientSession, str], **body: Any) -> dict[str, Any]:
    session, url = http
    async with session.post(url + TXT2IMG, json={"width": 64, "height": 64, **body}) as resp:
        assert resp.status == 200
        return dict(await resp.json())


async def test_a_task_id_goes_queued_then_active_then_completed(
    http: tuple[aiohttp.ClientSession, str], webui: Webui
) -> None:
    first = asyncio.create_task(txt2img(http, force_task_id="A", steps=10))
    await eventually(lambda: webui.current_task == "A")
    second = asyncio.create_task(txt2img(http, force_task_id="B", steps=10))
    await eventually(lambda: "B" in webui.pending_tasks)
    queued = await progress(http, id_task="B")
    assert queued == {"active": False, "queued": True, "completed": False, "progress": None,
                      "eta": None, "live_preview": None, "id_live_preview": -1,
                      "textinfo": "In queue: 1/1"}
    await eventually(lambda: webui.sampling_step >= 2)
    active = await progress(http, id_task="A", id_live_preview=-1)
    assert active["active"] is True and 0 < active["progress"] <= 1
    assert active["eta"] is not None and active["eta"] >= 0
    assert active["live_preview"].startswith("data:image/png;base64,")
    again = await progress(http, id_task="A", id_live_preview=active["id_live_preview"])
    assert again["live_preview"] is None or again["id_live_preview"] > active["id_live_preview"]
    await asyncio.gather(first, second)
    done = await progress(http, id_task="A")
    assert (done["active"], done["queued"], done["completed"]) == (False, False, True)
    assert (await progress(http, id_task="never"))["textinfo"] == "Waiting..."


async def test_the_global_progress_is_zero_when_idle_and_starts_at_001_in_a_job(
    http: tuple[aiohttp.ClientSession, str], webui: Webui
) -> None:
    session, url = http
    async with session.get(url + "/sdapi/v1/progress") as resp:
        idle = await resp.json()
    assert (idle["progress"], idle["eta_relative"], idle["state"]["job_count"]) == (0, 0, 0)
    job = asyncio.create_task(txt2img(http, steps=20))
    await eventually(lambda: webui.sampling_step >= 1)
    async with session.get(url + "/sdapi/v1/progress?skip_current_image=false") as resp:
        busy = await resp.json()
    assert busy["progress"] >= 0.01 and busy["state"]["sampling_steps"] == 20
    assert base64.b64decode(busy["current_image"]).startswith(b"\x89PNG")  # raw base64, no data:
    await job


async def test_an_interrupt_stops_the_running_job_which_still_answers_200(
    http: tuple[aiohttp.ClientSession, str], webui: Webui
) -> None:
    session, url = http
    job = asyncio.create_task(txt2img(http, force_task_id="A", steps=100))
    await eventually(lambda: webui.sampling_step >= 2)
    async with session.post(url + "/sdapi/v1/interrupt") as resp:
        assert resp.status == 200 and await resp.json() == {}
    answer = await job
    assert answer["images"] and webui.sampling_step < 100
    assert [i.task for i in webui.interrupts] == ["A"]
    assert "A" in webui.finished_tasks


async def test_an_interrupt_while_idle_is_lost(
    http: tuple[aiohttp.ClientSession, str], webui: Webui
) -> None:
    session, url = http
    async with session.post(url + "/sdapi/v1/interrupt"):
        pass
    await txt2img(http, steps=5)
    assert webui.sampling_step == 5  # begin() reset the flag: the job ran to its end
    assert [i.task for i in webui.interrupts] == [None]


async def test_a_client_that_goes_away_does_not_stop_its_job(
    http: tuple[aiohttp.ClientSession, str], webui: Webui
) -> None:
    call = asyncio.create_task(txt2img(http, force_task_id="gone", steps=10))
    await eventually(lambda: webui.current_task == "gone")
    call.cancel()
    await eventually(lambda: "gone" in webui.finished_tasks, timeout=5)
    assert webui.sampling_step == 10


async def test_a_bad_progress_request_is_fastapis_422(http: tuple[aiohttp.ClientSession, str]) -> None:
    session, url = http
    async with session.post(url + "/internal/progress", json={"id_live_preview": "x"}) as resp:
        assert resp.status == 422
        assert (await resp.json())["detail"][0]["loc"] == ["body", "id_live_preview"]


@pytest.mark.parametrize("webui", [Webui(internal_api=False)], ids=["nowebui"])
async def test_under_nowebui_there_is_no_internal_route(http: tuple[aiohttp.ClientSession, str]) -> None:
    session, url = http
    async with session.post(url + "/internal/progress", json={"id_task": "x"}) as resp:
        assert resp.status == 404
    async with session.get(url + "/sdapi/v1/progress") as resp:
        assert resp.status == 200
