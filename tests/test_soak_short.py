"""A short soak in the default suite, and the soak's pure parts: the fault schedule and the
"was a backend up" bookkeeping.

The short soak asserts behaviour only: every request answered with an image or a failure
carrying its trail, nothing hung or far past its deadline, no call through an open breaker, no
crash event, no unclosed resource, no partial file, fds/tasks/threads back. What depends on
the machine's speed (the success rate while a backend was up, RSS growth, the deadline to
the half second) is judged by the 120 s soak in ``scripts/bench.py soak`` (and
``soak_fleet``): a 10 s version of those checks failed once in three runs on 2 busy CPUs."""

from __future__ import annotations

from benchlib.faults import MODES, UP_MODES, FaultDriver, fault_schedule
from benchlib.soak import SoakConfig, soak
from benchlib.soak_watch import rss_growth


def test_the_fault_schedule_is_a_pure_function_of_its_seed() -> None:
    assert fault_schedule(8, 3, 30) == fault_schedule(8, 3, 30)
    assert fault_schedule(8, 3, 30) != fault_schedule(9, 3, 30)


def test_every_mode_appears_and_one_slot_has_every_backend_down() -> None:
    for seed in range(20):
        rows = fault_schedule(seed, 3, 5)
        assert {mode for row in rows for mode in row} == set(MODES)
        assert any(not set(row) & UP_MODES for row in rows[1:])


def test_up_throughout_needs_one_backend_up_for_the_whole_span() -> None:
    driver = FaultDriver(proxies=[], knobs=[])
    driver.starts, driver.rows = (
        [0.0, 2.0, 4.0],
        [("pass", "503"), ("503", "latency"), ("refuse", "reset")],
    )
    assert driver.up_throughout(0.5, 1.5)
    assert not driver.up_throughout(1.5, 2.5)  # each backend was down for part of it
    assert driver.up_throughout(2.1, 3.9)
    assert not driver.up_at(4.5)


def test_rss_growth_compares_medians_of_the_first_and_last_windows_after_warm_up() -> None:
    samples = [(float(t), 100.0 + t, 50.0 + (t > 5) * 30) for t in range(11)]
    assert rss_growth(samples, window_s=2.0, skip_s=1.0, column=1) == 109.0 - 102.0
    assert rss_growth(samples, window_s=2.0, skip_s=1.0) == 30.0


BEHAVIOUR = ("every_request_answered", "no_call_through_an_open_breaker", "no_crash_events",
             "no_unclosed_warnings", "no_partial_files", "fds_tasks_threads_back")


async def test_a_short_soak_of_flapping_backends_answers_everything_and_leaks_nothing() -> None:
    cfg = SoakConfig(duration_s=5.0, concurrency=32, slot_s=1.0, rss_window_s=1.0, rss_warmup_s=1.0)
    report = await soak(cfg)
    failed = {name: report["checks"][name] for name in BEHAVIOUR if not report["checks"][name]["ok"]}
    assert not failed, failed
    # the deadline is 3 s; twice that tells "honoured, on a slow machine" from "hung"
    assert report["checks"]["none_past_deadline"]["max_elapsed_s"] < 2 * cfg.deadline_s
    assert report["ok"] > 50  # images did flow between the faults
    assert report["attempt_outcomes"].get("skipped", 0) > 0  # breakers did open and were honoured
