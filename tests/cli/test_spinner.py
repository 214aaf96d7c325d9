"""The status line's wording of the router's events (pure), and its drawing."""

from __future__ import annotations

import io

from imagegate.cli.spinner import Spinner, describe


def test_router_events_are_worded_as_the_backend_tried_and_the_failover() -> None:
    failed: list[str] = []
    said = [
        describe("attempt_started", {"backend": "space", "kind": "attempt"}, failed),
        describe("backend_attempt", {"backend": "space", "kind": "handshake_timeout"}, failed),
        describe("attempt_started", {"backend": "novita", "kind": "attempt"}, failed),
        describe("attempt_started", {"backend": "a1111", "kind": "hedge"}, failed),
        describe("backend_skipped", {"backend": "x", "kind": "breaker_open", "reason": "circuit open"}, failed),
        describe("waiting_for_backend", {"backend": "x"}, failed),
        describe("backend_attempt", {"backend": "novita", "kind": "ok"}, failed),
        describe("image_generated", {"backend": "novita"}, failed),
    ]
    assert said == [
        "trying space",
        "space failed (handshake_timeout)",
        "failing over to novita (space: handshake_timeout)",
        "also trying a1111 (hedging)",
        "skipping x (circuit open)",
        "waiting for x to reopen",
        None,
        None,
    ]


def test_a_status_change_is_drawn_at_once_and_cleared_at_the_end() -> None:
    stream = io.StringIO()
    spinner = Spinner(stream, clock=lambda: 12.0)
    spinner.status = "trying a1111"
    spinner.status = "failing over to novita (a1111: connect_failed)"
    spinner.clear()
    frames = stream.getvalue().split("\r\x1b[K")
    assert frames == ["", "| trying a1111  0.0 s", "/ failing over to novita (a1111: connect_failed)  0.0 s", ""]
