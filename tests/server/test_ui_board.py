"""The board behind the operator page's live stream, with a real ImageService on the A1111
emulator and an injected clock: nothing is watched while no page is open; a breaker change
is pushed; progress is thinned, previews checked and thinned; an ended request lingers and
goes; a page that does not read is cut off; jobs are known by their id."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from imagegate import ImageService
from imagegate.capabilities import Capabilities, Span
from imagegate.events import (
    CompletedEvent,
    FailoverEvent,
    PreviewEvent,
    ProgressEvent,
    QueuedEvent,
    StartedEvent,
)
from imagegate.models import BackendHealth, ImageResult
from imagegate.server.board import Board, BoardFull, Listener, backend_row, capability_lines
from imagegate.server.live import JOB_ID
from imagegate.testing import make_image

from tests.routing.support import REQUEST, a1111, settings_for


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def service(a1111_url: str, tmp_path: Path) -> AsyncIterator[ImageService]:
    async with ImageService(settings_for(tmp_path, a1111("local", a1111_url))) as svc:
        yield svc


@pytest.fixture
async def board(service: ImageService) -> AsyncIterator[tuple[Board, Clock]]:
    clock = Clock()
    board = Board(service, clock=clock, tick_s=0.02, linger_s=30.0)
    board.start()
    yield board, clock
    await board.aclose()


def parse(frames: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in frames:
        lines = frame.decode().strip().split("\n")
        out.append((lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))))
    return out


async def until(listener: Listener, name: str, test: Any = lambda d: True) -> dict[str, Any]:
    """The first frame called ``name`` that passes ``test`` (bounded: 5 s); the frames after
    it stay for the next call."""
    waiting: list[tuple[str, dict[str, Any]]] = getattr(listener, "waiting", [])
    listener.waiting = waiting  # type: ignore[attr-defined]
    async with asyncio.timeout(5):
        while True:
            while waiting:
                got, data = waiting.pop(0)
                if got == name and test(data):
                    return data
            frames = await listener.take(0.5)
            assert frames is not None, "the listener was cut off"
            waiting += parse(frames)


async def test_no_request_is_watched_while_no_page_is_open(
    board: tuple[Board, Clock], service: ImageService
) -> None:
    b, _ = board
    assert b.request_started(REQUEST, None) is None
    await service.generate(REQUEST)
    assert b.snapshot()["requests"] == []


async def test_the_first_frame_is_the_snapshot_and_a_breaker_change_follows_at_once(
    board: tuple[Board, Clock], service: ImageService
) -> None:
    b, _ = board
    listener, first = b.listen()
    ((name, snap),) = parse([first])
    assert name == "board" and [r["name"] for r in snap["backends"]] == ["local"]
    service.breaker("local").on_failure("normal", "trip", kind="handshake_timeout")
    row = await until(listener, "backend")
    assert row["state"] == "open" and row["breaker_reason"] == "handshake_timeout"
    assert row["open_until"] == round(row["open_until"], 1)


async def test_a_request_is_followed_from_start_to_end_then_lingers_and_goes(
    board: tuple[Board, Clock], service: ImageService
) -> None:
    b, clock = board
    listener, _ = b.listen()
    await service.generate(REQUEST)
    first = await until(listener, "request")
    assert first["status"] == "queued" and first["prompt"] == REQUEST.prompt and first["job_id"] is None
    done = await until(listener, "request", lambda d: d["status"] == "succeeded")
    assert done["id"] == first["id"] and done["backend"] == "local"
    assert b.snapshot()["requests"][0]["id"] == first["id"]
    clock.now += 30.0
    gone = await until(listener, "gone")
    assert gone == {"now": clock.now, "id": first["id"]} and b.snapshot()["requests"] == []


async def test_a_jobs_generation_is_known_by_the_job_id(
    board: tuple[Board, Clock], service: ImageService
) -> None:
    b, _ = board
    listener, _ = b.listen()

    async def as_job() -> None:
        JOB_ID.set("job_abc")
        await service.generate(REQUEST)

    await asyncio.create_task(as_job())
    seen = await until(listener, "request")
    assert seen["id"] == "job_abc" and seen["job_id"] == "job_abc"


async def test_progress_is_thinned_but_changes_of_state_and_the_end_always_go(
    board: tuple[Board, Clock],
) -> None:
    b, clock = board
    listener, _ = b.listen()
    sink = b.request_started(REQUEST, "local")
    assert sink is not None
    sink(QueuedEvent(backend="local", position=2, queue_size=3))
    sink(StartedEvent(backend="local", attempt=1))
    sink(ProgressEvent(fraction=0.1))  # 0 s after the last frame: held back
    clock.now += 0.3
    sink(ProgressEvent(fraction=0.4, step=4, steps=10, eta_s=3.0))
    sink(FailoverEvent(from_="local", to="other", reason="server_error"))  # a change: at once
    sink(ProgressEvent(fraction=0.5))
    result = ImageResult(images=[], backend="other", attempts=[], elapsed_s=1.0)
    sink(CompletedEvent(result=result))
    frames = [d for n, d in parse(await listener.take(1.0) or []) if n == "request"]
    shown = [(d["status"], d["progress"]["fraction"], len(d["failovers"])) for d in frames]
    assert shown == [
        ("queued", None, 0), ("queued", None, 0), ("running", None, 0), ("running", 0.4, 0),
        ("running", 0.4, 1), ("succeeded", 1.0, 1),
    ]
    assert frames[0]["queue"] == {"position": None, "size": None}  # the begin frame
    assert frames[1]["queue"] == {"position": 2, "size": 3}


async def test_previews_are_thinned_and_only_images_of_known_types_pass(
    board: tuple[Board, Clock],
) -> None:
    b, clock = board
    listener, _ = b.listen()
    sink = b.request_started(REQUEST, None)
    assert sink is not None
    png = make_image(16, 16, "x", 1, "png")
    sink(PreviewEvent(image=png, format="gif"))  # not an image type the page shows
    sink(PreviewEvent(image=png, format="png"))
    sink(PreviewEvent(image=make_image(16, 16, "y", 2, "png"), format="png"))  # too soon
    clock.now += 0.6
    sink(PreviewEvent(image=b"x" * (600 * 1024), format="png"))  # too big for the page
    sink(PreviewEvent(image=make_image(16, 16, "z", 3, "jpeg"), format="jpeg"))
    previews = [d["src"] for n, d in parse(await listener.take(1.0) or []) if n == "preview"]
    assert [p.split(";")[0] for p in previews] == ["data:image/png", "data:image/jpeg"]


async def test_a_page_that_does_not_read_is_cut_off_and_pages_are_bounded(
    service: ImageService,
) -> None:
    b = Board(service, max_listeners=1)
    b.start()
    try:
        listener, _ = b.listen()
        with pytest.raises(BoardFull):
            b.listen()
        listener.limit = 2
        for _ in range(3):  # a frame each: one too many for a page that does not read
            b.request_started(REQUEST, None)
        assert listener.ended and await listener.take(0.1) is None
        assert b.listeners == 0
        b.listen()  # its slot is free again
    finally:
        await b.aclose()


def test_a_backend_row_is_the_health_row_with_capabilities_in_words() -> None:
    caps = Capabilities(source="built-in: test", width=Span(min=64, max=2048, step=8),
                        height=Span(min=64, max=2048, step=8), steps=Span(min=1, max=50),
                        formats=("png", "webp"), models=("a", "b", "c", "d"), max_n=4)
    row = backend_row(BackendHealth(name="x", kind="a1111", open_until=1800000000.04321,
                                    state="open", capabilities=caps))
    assert row["open_until"] == 1800000000.0 and row["name"] == "x"
    assert row["capabilities"] == capability_lines(caps) == [
        "sizes: width 64..2048 in steps of 8", "steps: 1..50", "images per call: up to 4",
        "formats: png, webp", "models: a, b, c (+1)", "source: built-in: test",
    ]
    assert capability_lines(None) == []


async def test_a_request_that_never_ends_leaves_the_page_after_its_deadline(
    board: tuple[Board, Clock], service: ImageService
) -> None:
    b, clock = board
    listener, _ = b.listen()
    sink = b.request_started(REQUEST, None)
    assert sink is not None
    sink(StartedEvent(backend="local", attempt=1))  # and then nothing, ever (a bug elsewhere)
    rid = b.snapshot()["requests"][0]["id"]
    clock.now += service.settings.service.deadline_s + 30.0
    assert (await until(listener, "gone"))["id"] == rid


def test_a_listener_is_cut_off_by_bytes_as_well_as_frames() -> None:
    listener = Listener(limit=100, max_bytes=1000)
    listener.push(b"x" * 600)
    assert not listener.ended
    listener.push(b"y" * 600)  # 1200 bytes unsent: too many
    assert listener.ended
