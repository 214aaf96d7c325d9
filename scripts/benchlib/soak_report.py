"""The soak's bookkeeping and verdict: its configuration, the counters the workers keep, the
checks and the printed table (the run itself is soak.py)."""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from imagegate.routing.policy import percentile

from benchlib.common import machine
from benchlib.faults import FaultDriver
from benchlib.soak_watch import BreakerWatch, EventLog, Gauges, WarningTrap, rss_growth

SUCCESS_WHEN_UP = 0.99
RSS_GROWTH_LIMIT_MB = 20.0
DEADLINE_SLACK_S = 0.5


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 60.0
    concurrency: int = 32
    slot_s: float = 2.0
    seed: int = 8
    rss_window_s: float = 10.0
    rss_warmup_s: float = 2.0  # left out of the first RSS window
    deadline_s: float = 3.0
    connect_timeout_s: float = 0.3
    read_timeout_s: float = 1.0
    probe_interval_s: float = 0.25  # 4x as often while a breaker is not closed
    # a request counts towards the success rate if some backend was up throughout the request
    # and this long before it (0: strictly "while a backend was up"; a backend that has just
    # come back is known to be up only after a probe or a trial request reaches it)
    up_grace_s: float = 0.0
    save_every: int = 25


@dataclass
class Tally:
    """Counters only (no per-request records), so that the soak's own memory stays flat."""

    total: int = 0
    ok: int = 0
    with_up: int = 0  # some backend up from ``up_grace_s`` before the request to its answer
    ok_with_up: int = 0
    with_up_strict: int = 0  # some backend up from the request to its answer
    ok_with_up_strict: int = 0
    hung: int = 0
    unexpected: list[str] = field(default_factory=list)
    no_trail: int = 0
    max_elapsed_s: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    served: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    failed_with_up: Counter[str] = field(default_factory=Counter)  # by slot and trail
    saved: int = 0


@dataclass
class Observed:
    """Everything the soak saw, for the checks."""

    tally: Tally
    events: EventLog
    watch: BreakerWatch
    trap: WarningTrap
    rss: list[tuple[float, float, float]]
    driver: FaultDriver
    start: Gauges
    end: Gauges
    partial: list[str]


def soak_checks(cfg: SoakConfig, obs: Observed) -> dict[str, dict[str, Any]]:
    """Each check: ``ok`` and the facts it was decided on."""
    tally, events, watch, trap, rss = obs.tally, obs.events, obs.watch, obs.trap, obs.rss
    start, end, partial = obs.start, obs.end, obs.partial
    success_up = tally.ok_with_up / tally.with_up if tally.with_up else 1.0
    strict = tally.ok_with_up_strict / tally.with_up_strict if tally.with_up_strict else 1.0
    crashes = [
        e
        for e in events.kept
        if e["event"] in ("backend_crashed", "attempt_crashed", "probe_crashed")
    ]
    growth = rss_growth(rss, cfg.rss_window_s, skip_s=cfg.rss_warmup_s)
    raw_growth = rss_growth(rss, cfg.rss_window_s, skip_s=cfg.rss_warmup_s, column=1)
    limit = cfg.deadline_s + DEADLINE_SLACK_S
    checks: dict[str, dict[str, Any]] = {
        "every_request_answered": {
            "ok": not (tally.hung or tally.unexpected or tally.no_trail),
            "hung": tally.hung,
            "unexpected": tally.unexpected[:5],
            "failures_without_trail": tally.no_trail,
        },
        "none_past_deadline": {
            "ok": tally.max_elapsed_s <= limit,
            "max_elapsed_s": round(tally.max_elapsed_s, 3),
            "limit_s": limit,
        },
        "success_while_a_backend_was_up": {
            "ok": success_up >= SUCCESS_WHEN_UP,
            "rate": round(success_up, 4),
            "requests": tally.with_up,
            "grace_s": cfg.up_grace_s,
            "strict_rate": round(strict, 4),
            "limit": SUCCESS_WHEN_UP,
        },
        "no_call_through_an_open_breaker": {
            "ok": not watch.violations,
            "violations": watch.violations[:5],
            "served_by_permit": dict(watch.served),
        },
        "no_crash_events": {"ok": not crashes, "events": [str(e) for e in crashes[:5]]},
        "fds_tasks_threads_back": {
            "ok": not end.leaked_from(start),
            "start": asdict(start),
            "end": asdict(end),
        },
        "rss_growth": {
            "ok": growth < RSS_GROWTH_LIMIT_MB,
            "mb": round(growth, 1),
            "raw_mb": round(raw_growth, 1),
            "window_s": cfg.rss_window_s,
            "warmup_s": cfg.rss_warmup_s,
            "limit_mb": RSS_GROWTH_LIMIT_MB,
        },
        "no_unclosed_warnings": {"ok": not trap.unclosed(), "messages": trap.unclosed()[:5]},
        "no_partial_files": {"ok": not partial, "files": partial[:5], "saved": tally.saved},
    }
    return checks


def soak_report(cfg: SoakConfig, obs: Observed) -> dict[str, Any]:
    """The soak's JSON report: what ran, what it measured, and the checks."""
    tally, events, trap, rss, driver = obs.tally, obs.events, obs.trap, obs.rss, obs.driver
    checks = soak_checks(cfg, obs)
    lat = sorted(tally.latencies) or [0.0]
    return {
        "scenario": "soak",
        "machine": machine(),
        "config": asdict(cfg),
        "schedule": [" ".join(row) for row in driver.rows],
        "requests": tally.total,
        "ok": tally.ok,
        "requests_per_s": round(tally.total / cfg.duration_s, 1),
        "latency_ms": {
            "p50": round(percentile(lat, 0.5) * 1000, 1),
            "p99": round(percentile(lat, 0.99) * 1000, 1),
        },
        "served_by": dict(tally.served),
        "attempt_outcomes": dict(tally.outcomes),
        "breaker_transitions": sum(1 for e in events.kept if e["event"] == "breaker_transition"),
        "breaker_bypasses": events.counts["breaker_bypassed"],
        "probes": events.counts["backend_probed"],
        "failed_while_up": dict(tally.failed_with_up.most_common(12)),
        "rss_mb": {
            "raw": [round(s[1], 1) for s in rss[::4]],
            "trimmed": [round(s[2], 1) for s in rss[::4]],
        },
        "asyncio_log": dict(trap.asyncio_log),
        "checks": checks,
        "passed": all(c["ok"] for c in checks.values()),
    }


def print_soak(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(
        f"soak: {cfg['duration_s']:g} s, concurrency {cfg['concurrency']}, 3 backends whose faults change "
        f"every {cfg['slot_s']:g} s (seed {cfg['seed']}); load {report['machine']['loadavg_1m']}"
    )
    print(
        f"  {report['requests']} requests ({report['requests_per_s']}/s), {report['ok']} images; "
        f"p50 {report['latency_ms']['p50']} ms, p99 {report['latency_ms']['p99']} ms"
    )
    print(
        f"  served by {report['served_by']}; {report['breaker_transitions']} breaker transitions, "
        f"{report['breaker_bypasses']} forced calls, {report['probes']} probes"
    )
    print(f"  attempt outcomes: {report['attempt_outcomes']}")
    for name, check in report["checks"].items():
        facts = {k: v for k, v in check.items() if k != "ok"}
        print(f"  {'ok  ' if check['ok'] else 'FAIL'} {name}: {facts}")
    print(f"soak: {'passed' if report['passed'] else 'FAILED'}")
