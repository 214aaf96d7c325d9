"""A 10 s soak in the default suite (the 60 s one is opt-in: ``pytest -m soak tests/soak``),
and the soak's pure parts: the fault schedule and the "was a backend up" bookkeeping."""

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


async def test_ten_seconds_of_flapping_backends_leave_every_check_green() -> None:
    # RSS: the last 2 s against 4-6 s (the first seconds are warm-up: pools, caches, arenas).
    # Success is strict (up_grace_s=0): a request made just after a backend came back, while
    # its breaker is still open, waits for that breaker's trial instead of failing.
    cfg = SoakConfig(
        duration_s=10.0,
        concurrency=32,
        slot_s=2.0,
        rss_window_s=2.0,
        rss_warmup_s=4.0,
        up_grace_s=0.0,
    )
    report = await soak(cfg)
    failed = {name: check for name, check in report["checks"].items() if not check["ok"]}
    assert not failed, failed
    assert report["ok"] > 100
    assert report["attempt_outcomes"].get("skipped", 0) > 0  # breakers did open and were honoured
