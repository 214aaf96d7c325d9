"""A1111 progress, previews and cancel, against the emulator's webui state (real loopback).

The emulator keeps the webui's rules (testing/a1111_webui.py, with sources): a task id is
queued, then active, then finished; ``/internal/progress`` exists only with the UI; the
interrupt is global; a client that goes away does not stop its job.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from imagegate import AllBackendsFailed, ImageRequest, ImageService
from imagegate.backends.a1111 import TaskProgress, parse_global_progress, parse_internal_progress
from imagegate.events import PreviewEvent, ProgressEvent, QueuedEvent
from imagegate.testing import Knobs, make_image
from imagegate.testing.a1111_webui import Webui

from tests.conftest import make_settings
from tests.routing.support import eventually

SLOW = ImageRequest(prompt="a lighthouse", width=128, height=128, steps=20)


def settings(url: str, tmp_path: Path, **keys: Any) -> Any:
    table = {"name": "sd", "kind": "a1111", "base_url": url, "progress_interval_s": 0.02,
             "max_concurrency": 4, "queue": False, **keys}
    return make_settings([table], service={"probe_interval_s": 3600}, tmp_path=tmp_path)




async def test_steps_become_progress_events_and_live_previews_become_preview_events(
    slow_a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with ImageService(settings(slow_a1111_url, tmp_path)) as service:
        events = [e async for e in service.stream(SLOW, previews=True)]
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    assert len(progress) >= 3
    fractions = [e.fraction for e in progress]
    assert fractions == sorted(fractions) and 0 < fractions[-1] <= 1  # type: ignore[type-var]
    assert {e.steps for e in progress} == {20}
    assert all(e.step == round((e.fraction or 0) * 20) for e in progress)
    previews = [e for e in events if isinstance(e, PreviewEvent)]
    assert previews and all(p.format == "png" and p.image.startswith(b"\x89PNG") for p in previews)
    assert len({p.image for p in previews}) == len(previews)  # each one new
    assert events[-1].type == "completed"
    (body,) = [r.body for r in knobs.requests if r.path == "/sdapi/v1/txt2img"]
    polls = [r.body for r in knobs.requests if r.path == "/internal/progress"]
    assert polls and all(p["id_task"] == body["force_task_id"] for p in polls)
    assert body["force_task_id"].startswith("task(imagegate-")


async def test_without_previews_none_is_asked_for(
    slow_a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with ImageService(settings(slow_a1111_url, tmp_path)) as service:
        events = [e async for e in service.stream(SLOW)]
    assert not [e for e in events if isinstance(e, PreviewEvent)]
    polls = [r.body for r in knobs.requests if r.path == "/internal/progress"]
    assert polls and all(p["live_preview"] is False for p in polls)


async def test_nobody_listening_means_no_progress_poll_at_all(
    slow_a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with ImageService(settings(slow_a1111_url, tmp_path)) as service:
        await service.generate(SLOW)
    assert [r.path for r in knobs.requests] == ["/sdapi/v1/txt2img"]


async def test_a_task_waiting_for_the_gpu_is_queued_with_its_place(
    slow_a1111_url: str, webui: Webui, tmp_path: Path
) -> None:
    async with ImageService(settings(slow_a1111_url, tmp_path)) as service:
        first = asyncio.create_task(service.generate(SLOW))
        await eventually(lambda: webui.current_task is not None)
        events = [e async for e in service.stream(SLOW)]
        await first
    queued = [e for e in events if isinstance(e, QueuedEvent)]
    assert queued and (queued[0].position, queued[0].queue_size) == (1, 1)
    kinds = [e.type for e in events]
    assert kinds.index("queued") < kinds.index("progress") < kinds.index("completed")


@pytest.mark.parametrize("webui", [Webui(step_s=0.02, internal_api=False)], ids=["nowebui"])
async def test_without_internal_progress_the_global_progress_is_read(
    slow_a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with ImageService(settings(slow_a1111_url, tmp_path)) as service:
        events = [e async for e in service.stream(SLOW, previews=True)]
        again = [e async for e in service.stream(SLOW)]
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    assert progress and {e.steps for e in progress} == {20}
    assert [e for e in events if isinstance(e, PreviewEvent)]
    assert [e for e in again if isinstance(e, ProgressEvent)]
    paths = [r.path for r in knobs.requests]
    assert paths.count("/internal/progress") == 1  # one 404 is enough: remembered
    assert "/sdapi/v1/progress" in paths


@pytest.mark.parametrize("webui", [Webui(step_s=0.02, honours_force_task_id=False)], ids=["old"])
async def test_a_webui_that_ignores_force_task_id_falls_back_to_the_global_progress(
    slow_a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with ImageService(settings(slow_a1111_url, tmp_path)) as service:
        events = [e async for e in service.stream(ImageRequest(prompt="x", width=64, height=64, steps=40))]
    assert [e for e in events if isinstance(e, ProgressEvent)]
    assert "/sdapi/v1/progress" in [r.path for r in knobs.requests]


async def test_cancelling_interrupts_our_running_task(
    slow_a1111_url: str, webui: Webui, tmp_path: Path
) -> None:
    async with ImageService(settings(slow_a1111_url, tmp_path)) as service:
        task = asyncio.create_task(service.generate(ImageRequest(prompt="x", steps=150)))
        await eventually(lambda: webui.sampling_step > 2)
        running = webui.current_task
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [i.task for i in webui.interrupts] == [running]
    await eventually(lambda: webui.current_task is None)  # the webui stopped early
    assert webui.sampling_step < 150


async def test_a_cancelled_task_that_is_still_queued_interrupts_nothing(
    slow_a1111_url: str, webui: Webui, tmp_path: Path
) -> None:
    async with ImageService(settings(slow_a1111_url, tmp_path)) as service:
        other = asyncio.create_task(service.generate(ImageRequest(prompt="other", steps=30)))
        await eventually(lambda: webui.current_task is not None)
        ours = asyncio.create_task(service.generate(ImageRequest(prompt="ours", steps=30)))
        await eventually(lambda: len(webui.pending_tasks) == 1)
        ours.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ours
        assert webui.interrupts == []  # the other client's job runs on
        assert (await other).backend == "sd"


async def test_a_timed_out_call_interrupts_the_job_it_left_running(
    slow_a1111_url: str, webui: Webui, tmp_path: Path
) -> None:
    async with ImageService(settings(slow_a1111_url, tmp_path, read_timeout_s=0.3)) as service:
        with pytest.raises(AllBackendsFailed, match="generation_timeout"):
            await service.generate(ImageRequest(prompt="x", steps=150))
    assert len(webui.interrupts) == 1 and webui.interrupts[0].task is not None


# -- the pure half ------------------------------------------------------------------------------


def test_internal_progress_of_a_queued_task_reads_its_place() -> None:
    state = parse_internal_progress({"active": False, "queued": True, "completed": False,
                                     "textinfo": "In queue: 2/3", "id_live_preview": -1})
    assert (state.queued, state.position, state.queue_size, state.fraction) == (True, 2, 3, None)


def test_internal_progress_of_an_active_task_reads_fraction_eta_and_preview() -> None:
    png = make_image(8, 8)
    import base64

    body = {"active": True, "queued": False, "completed": False, "progress": 0.4, "eta": 3.5,
            "live_preview": "data:image/png;base64," + base64.b64encode(png).decode(),
            "id_live_preview": 7, "textinfo": None}
    state = parse_internal_progress(body)
    assert (state.active, state.fraction, state.eta_s, state.preview, state.preview_id) == (
        True, 0.4, 3.5, png, 7)


@pytest.mark.parametrize("body", [None, [], {"active": False, "queued": False, "completed": False}])
def test_an_unknown_task_reads_as_not_known(body: Any) -> None:
    assert parse_internal_progress(body).known is False


def test_global_progress_with_no_job_is_inactive_and_with_one_has_steps() -> None:
    assert parse_global_progress({"progress": 0, "state": {"job_count": 0}}) == TaskProgress(active=False)
    state = parse_global_progress({"progress": 0.51, "eta_relative": 2.0, "current_image": None,
                                   "state": {"job_count": 1, "sampling_step": 10, "sampling_steps": 20}})
    assert (state.fraction, state.step, state.steps, state.eta_s) == (0.51, 10, 20, 2.0)
