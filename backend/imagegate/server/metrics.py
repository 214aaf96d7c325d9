"""Prometheus metrics of one HTTP app, in a registry of its own (never the global one).

    imagegate_http_requests_total{route, method, status}
    imagegate_http_request_duration_seconds{route}            histogram
    imagegate_http_in_flight_requests                         gauge
    imagegate_generations_total{backend, outcome}             backend "none" when none served
    imagegate_generation_duration_seconds{backend}            histogram
    imagegate_backend_attempts_total{backend, outcome}        every try in the attempt trail
                                                              (outcome "raced": it lost a
                                                              handshake race, nothing sent)
    imagegate_backend_handshake_seconds{backend}              histogram: connecting before
                                                              sending (races; 0 when pooled)
    imagegate_backend_state{backend, imagegate_backend_state} breaker state (a state set)
    imagegate_backend_up{backend}                             last probe: 1 ok, 0 failed
    imagegate_backend_in_flight{backend}                      calls running now
    imagegate_event_loop_tasks / imagegate_threads            asyncio tasks, threads now
    process_open_fds, process_resident_memory_bytes, ...      prometheus_client's own (Linux)

The backend gauges are read from ``ImageService.health()`` at scrape time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric, StateSetMetricFamily
from prometheus_client.registry import Collector

from imagegate.models import Attempt, BackendHealth, BreakerState

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_STATES: tuple[str, ...] = get_args(BreakerState)

HealthSource = Callable[[], Sequence[BackendHealth]]


class _BackendCollector(Collector):
    def __init__(self, health: HealthSource) -> None:
        self._health = health

    def collect(self) -> Iterable[Metric]:
        try:
            table = list(self._health())
        except (KeyError, RuntimeError):  # no service yet (or no longer): nothing to say
            return []
        state = StateSetMetricFamily(
            "imagegate_backend_state", "Circuit breaker state per backend", labels=["backend"]
        )
        up = GaugeMetricFamily(
            "imagegate_backend_up",
            "Last probe of the backend succeeded (1) or failed (0)",
            labels=["backend"],
        )
        in_flight = GaugeMetricFamily(
            "imagegate_backend_in_flight", "Calls to the backend running now", labels=["backend"]
        )
        for h in table:
            state.add_metric([h.name], {s: h.state == s for s in _STATES})
            if h.ok is not None:
                up.add_metric([h.name], 1.0 if h.ok else 0.0)
            in_flight.add_metric([h.name], float(h.in_flight))
        return [state, up, in_flight]


class _RuntimeCollector(Collector):
    """Tasks and threads at scrape time: what a soak compares before and after its load."""

    def collect(self) -> Iterable[Metric]:
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # scraped off the loop: nothing to count
            return []
        return [
            GaugeMetricFamily("imagegate_event_loop_tasks", "asyncio tasks alive now", value=tasks),
            GaugeMetricFamily("imagegate_threads", "Threads alive now", value=threading.active_count()),
        ]


class ServerMetrics:
    """The counters, histograms and gauges of one app."""

    def __init__(self, health: HealthSource) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "imagegate_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "imagegate_http_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "imagegate_http_in_flight_requests", "HTTP requests being served", registry=r
        )
        self.generations = Counter(
            "imagegate_generations",
            "Image generation requests by serving backend and outcome",
            ["backend", "outcome"],
            registry=r,
        )
        self.generation_duration = Histogram(
            "imagegate_generation_duration_seconds",
            "Generation latency by serving backend",
            ["backend"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "imagegate_backend_attempts",
            "Backend attempts by outcome",
            ["backend", "outcome"],
            registry=r,
        )
        self.handshakes = Histogram(
            "imagegate_backend_handshake_seconds",
            "Time a backend took to be ready to take a request, where it connected first",
            ["backend"],
            buckets=_BUCKETS,
            registry=r,
        )
        r.register(_BackendCollector(health))
        r.register(_RuntimeCollector())
        ProcessCollector(registry=r)  # fds, RSS, CPU seconds (from /proc; nothing elsewhere)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_duration.labels(route).observe(seconds)

    def observe_generation(
        self, backend: str | None, outcome: str, seconds: float, attempts: Sequence[Attempt]
    ) -> None:
        name = backend or "none"
        self.generations.labels(name, outcome).inc()
        if backend is not None:
            self.generation_duration.labels(name).observe(seconds)
        for a in attempts:
            self.attempts.labels(a.backend, a.outcome).inc()
            if "handshake_s" in a.timings and a.outcome != "raced":  # a raced one never finished here
                self.handshakes.labels(a.backend).observe(a.timings["handshake_s"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
