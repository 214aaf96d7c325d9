"""Routing: the ImageService facade and what it is made of.

``service.py`` (ImageService: lifetimes, the public API), ``run.py`` (one request's attempts,
retries and hedges), ``adapt.py`` (fitting a request to each backend's capabilities, and the
adjustments it reports), ``policy.py`` (per-backend state, order, admission, hedge budget, jitter;
no I/O), ``breaker.py`` (the circuit breaker), ``prober.py`` (background probes) and
``waiting.py`` (waiting for a skipped backend's breaker to reopen).
"""

from imagegate.routing.service import ImageService

__all__ = ["ImageService"]
