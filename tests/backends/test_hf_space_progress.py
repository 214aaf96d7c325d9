"""A Space's progress as gradio_client sees it, against a real Gradio app on loopback:
queue rank, ``gr.Progress`` steps, a generator's intermediate outputs as previews, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client
from imagegate import ImageRequest, ImageService
from imagegate.backends.hf_space.jobs import report_status
from imagegate.events import PreviewEvent, ProgressEvent, QueuedEvent, Reporter
from imagegate.testing.gradio_space import RunningSpace, launch_space

from tests.conftest import make_settings
from tests.routing.support import eventually

INPUTS = {"prompt": "text", "steps": "steps", "width": "w", "height": "h"}


@pytest.fixture(scope="module")
def space() -> Iterator[RunningSpace]:
    running = launch_space()
    try:
        yield running
    finally:
        running.close()


def settings(space: RunningSpace, tmp_path: Path, api_name: str, step_s: float) -> Any:
    table = {"name": "space", "kind": "hf_space", "src": space.progress_url, "api_name": api_name,
             "inputs": INPUTS, "fixed": {"step_s": step_s}, "max_concurrency": 4,
             "read_timeout_s": 30}
    return make_settings([table], service={"probe_interval_s": 3600}, tmp_path=tmp_path)


def called(space: RunningSpace, text: str) -> bool:
    return any(a.get("text") == text for _, a in list(space.calls.calls))


def request(prompt: str, steps: int = 6) -> ImageRequest:
    return ImageRequest(prompt=prompt, width=64, height=64, steps=steps)


async def test_a_waiting_job_is_queued_with_its_rank_then_shows_its_steps(
    space: RunningSpace, tmp_path: Path
) -> None:
    async with ImageService(settings(space, tmp_path, "/steps", 0.05)) as service:
        first = asyncio.create_task(service.generate(request("first")))
        await eventually(lambda: called(space, "first"), timeout=10)
        events = [e async for e in service.stream(request("second"))]
        await first
    queued = [e for e in events if isinstance(e, QueuedEvent)]
    assert queued and (queued[0].position, queued[0].queue_size) == (1, 1)
    steps = [e for e in events if isinstance(e, ProgressEvent) and e.steps]
    assert steps and {e.steps for e in steps} == {6}
    assert [e.step for e in steps] == sorted(e.step for e in steps)  # type: ignore[type-var]
    kinds = [e.type for e in events]
    assert kinds.index("queued") < kinds.index("progress") and kinds[-1] == "completed"


async def test_a_generators_intermediate_outputs_become_previews(
    space: RunningSpace, tmp_path: Path
) -> None:
    async with ImageService(settings(space, tmp_path, "/steps_preview", 0.1)) as service:
        events = [e async for e in service.stream(request("fox", steps=8), previews=True)]
    previews = [e for e in events if isinstance(e, PreviewEvent)]
    assert previews and all(p.image.startswith(b"\x89PNG") for p in previews)
    assert previews[0].width == 16  # the stand-in's previews are a quarter of the size
    assert events[-1].type == "completed"


async def test_cancelling_a_job_queued_behind_another_user_takes_it_out_of_the_queue(
    space: RunningSpace, tmp_path: Path
) -> None:
    other_user = Client(space.progress_url, verbose=False, download_files=False)
    try:
        blocker = other_user.submit("blocker", 10, 0.1, 64, 64, api_name="/steps")
        async with ImageService(settings(space, tmp_path, "/steps", 0.1)) as service:
            await eventually(lambda: called(space, "blocker"), timeout=10)
            seen: list[Any] = []
            ours = asyncio.create_task(service.generate(request("never runs"), on_event=seen.append))
            await eventually(lambda: any(isinstance(e, QueuedEvent) for e in seen), timeout=10)
            ours.cancel()
            with pytest.raises(asyncio.CancelledError):
                await ours
            await asyncio.to_thread(blocker.result, 10)  # the other user's job is untouched
    finally:
        other_user.close()
    texts = [a["text"] for name, a in space.calls.calls if name == "/steps"]
    assert "never runs" not in texts
    assert seen[-1].type == "cancelled"


async def test_cancelling_one_of_our_jobs_spares_the_other_one_running(
    space: RunningSpace, tmp_path: Path
) -> None:
    """gradio cancels every running job of a session and endpoint: ours share one."""
    async with ImageService(settings(space, tmp_path, "/steps", 0.05)) as service:
        running = asyncio.create_task(service.generate(request("keeps running", steps=10)))
        await eventually(lambda: called(space, "keeps running"), timeout=10)
        queued = asyncio.create_task(service.generate(request("given up")))
        await asyncio.sleep(0.2)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        result = await running
    assert result.backend == "space"


class _Status:
    def __init__(self, code: str, **fields: Any) -> None:
        self.code = type("Code", (), {"name": code})()
        self.rank, self.queue_size, self.eta, self.progress_data = None, None, None, None
        self.__dict__.update(fields)


class _Unit:
    def __init__(self, index: int | None, length: int | None, progress: float | None) -> None:
        self.index, self.length, self.progress = index, length, progress


def test_status_updates_map_to_events() -> None:
    seen: list[Any] = []
    reporter = Reporter(seen.append, backend="s")
    had = report_status(_Status("IN_QUEUE", rank=2, queue_size=5, eta=12.0), reporter, had_units=False)
    had = report_status(_Status("PROCESSING", eta=4.0), reporter, had_units=had)
    had = report_status(_Status("PROGRESS", progress_data=[_Unit(3, 10, None)]), reporter, had_units=had)
    had = report_status(_Status("PROGRESS", progress_data=[_Unit(None, None, 0.5)]), reporter, had_units=had)
    report_status(_Status("ITERATING"), reporter, had_units=had)  # units seen: no "unknown" step back
    assert [(e.type, getattr(e, "position", None), getattr(e, "fraction", None)) for e in seen] == [
        ("queued", 3, None), ("progress", None, None), ("progress", None, 0.3), ("progress", None, 0.5)]
    assert (seen[0].queue_size, seen[0].eta_s, seen[1].eta_s) == (5, 12.0, 4.0)
