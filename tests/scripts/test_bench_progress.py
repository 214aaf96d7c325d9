"""The progress benchmarks (first_event, sse_fanout, cancel), run small so that they cannot
rot; their numbers are the benchmarks' business, only sanity bounds here."""

from __future__ import annotations

import pytest
from benchlib.cancel_latency import cancel_arguments, print_cancel, run_cancel
from benchlib.first_event import first_event_arguments, print_first_event, run_first_event
from benchlib.registry import SCENARIOS
from benchlib.sse_fanout import print_sse_fanout, run_sse_fanout, sse_fanout_arguments

from tests.scripts.test_bench_scenarios import args_for


def test_the_progress_scenarios_are_registered() -> None:
    assert {"first_event", "sse_fanout", "cancel"} <= set(SCENARIOS)


def test_first_event_measures_started_report_and_listening(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--requests", "2", "--steps", "30", "--step-s", "0.02", "--cost-runs", "20")
    report = run_first_event(args_for(first_event_arguments, *argv))
    assert set(report["report_to_event"]) == {"library", "http_sse"}
    assert set(report["first_step_to_event"]) == {"interval 0.05 s", "interval 0.5 s"}
    assert set(report["listening_added_ms"]) == {"nobody_listening", "listening"}
    assert report["submit_to_started_ms"]["max"] < 1000
    print_first_event(report)
    assert "what imagegate adds" in capsys.readouterr().out


def test_sse_fanout_delivers_every_event_to_every_listener(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--listeners", "5", "--events", "50", "--steady-events", "10", "--steady-rate", "50")
    report = run_sse_fanout(args_for(sse_fanout_arguments, *argv))
    assert report["flat_out"]["every_listener_got_every_event"] is True
    assert report["steady"]["every_listener_got_every_event"] is True
    print_sse_fanout(report)
    assert "deliveries/s" in capsys.readouterr().out


def test_cancel_reaches_the_emulator_for_each_way_of_giving_up(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_cancel(args_for(cancel_arguments, "--runs", "1"))
    assert set(report["to_interrupt_ms"]) == {"job_cancel", "client_gone", "library"}
    assert all(row["max"] < 5000 for row in report["to_interrupt_ms"].values())
    print_cancel(report)
    assert "job_cancel" in capsys.readouterr().out
