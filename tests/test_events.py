"""The event model: its JSON form, parsing it back, and the reporter backends talk to."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from imagegate.events import (
    SILENT,
    FailoverEvent,
    PreviewEvent,
    ProgressEvent,
    QueuedEvent,
    Reporter,
    current_reporter,
    event_json,
    parse_event,
    use_reporter,
)
from imagegate.testing import make_image


def collecting(previews: bool = False) -> tuple[Reporter, list[Any]]:
    seen: list[Any] = []
    return Reporter(seen.append, backend="b", previews=previews), seen


def test_failover_is_spelt_from_in_json_and_parses_back() -> None:
    event = FailoverEvent(from_="a", to="b", reason="connect_failed: refused", error_kind="connect_failed")
    data = event_json(event)
    assert data["from"] == "a" and "from_" not in data
    assert data["type"] == "failover"
    back = parse_event(data)
    assert isinstance(back, FailoverEvent) and back.from_ == "a" and back.to == "b"


def test_a_preview_carries_its_image_as_base64_in_json() -> None:
    png = make_image(16, 8, "x", 1)
    data = event_json(PreviewEvent(image=png, format="png", width=16, height=8))
    back = parse_event(data)
    assert isinstance(back, PreviewEvent) and back.image == png
    assert isinstance(data["image"], str)


def test_fraction_outside_0_1_is_refused_by_the_model() -> None:
    with pytest.raises(ValueError):
        ProgressEvent(fraction=1.5)


def test_the_reporter_derives_the_fraction_clamps_and_drops_repeats() -> None:
    reporter, seen = collecting()
    reporter.progress(step=5, steps=20, eta_s=10.0)
    reporter.progress(step=5, steps=20, eta_s=9.6)  # nothing new: same step, ETA within 1 s
    reporter.progress(step=5, steps=20, eta_s=8.0)  # the ETA moved: worth telling
    reporter.progress(fraction=1.02)  # a provider's rounding: clamped
    assert [(e.fraction, e.step, e.eta_s) for e in seen] == [(0.25, 5, 10.0), (0.25, 5, 8.0), (1.0, None, None)]
    assert all(e.backend == "b" for e in seen)


def test_queue_reports_and_identical_previews_are_sent_once() -> None:
    reporter, seen = collecting(previews=True)
    reporter.queued(position=3, queue_size=5, eta_s=20)
    reporter.queued(position=3, queue_size=5, eta_s=19.5)
    reporter.queued(position=2, queue_size=4, eta_s=15)
    png = make_image(32, 16, "p", 1)
    reporter.preview(png)
    reporter.preview(png)
    assert [type(e) for e in seen] == [QueuedEvent, QueuedEvent, PreviewEvent]
    assert (seen[2].format, seen[2].width, seen[2].height) == ("png", 32, 16)


def test_previews_are_dropped_unless_asked_for() -> None:
    reporter, seen = collecting(previews=False)
    reporter.preview(make_image(8, 8))
    assert seen == []


def test_silent_reporter_does_nothing_and_is_the_default() -> None:
    assert current_reporter() is SILENT
    assert not SILENT.listening and not SILENT.previews
    SILENT.progress(fraction=0.5)
    SILENT.queued(position=1)
    SILENT.preview(make_image(8, 8))


async def test_a_reporter_bound_in_a_task_stays_in_that_task() -> None:
    reporter, _ = collecting()

    async def lane() -> Reporter:
        use_reporter(reporter)
        await asyncio.sleep(0)
        return current_reporter()

    assert await asyncio.create_task(lane()) is reporter
    assert current_reporter() is SILENT
