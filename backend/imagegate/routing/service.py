"""ImageService: the one async entry point; orders backends, fails over, hedges, keeps the trail.

The pieces: ``breaker.py`` (the circuit breaker), ``prober.py`` (the background probe loop),
``policy.py`` (per-backend state, ordering policy, admission, hedge budget; no I/O),
``run.py`` (one request's attempts, retries and hedges as tasks), ``race.py`` (racing
handshakes before sending), ``adapt.py`` (fitting the
request to each backend, ``[service] adapt``) and ``waiting.py`` (waiting for a breaker to
reopen). This module owns their lifetimes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

from imagegate.backends.base import ImageBackend
from imagegate.backends.registry import create_backend, load_settings
from imagegate.backends.transport import timing_trace_config
from imagegate.config import SERVICE_SECRETS, BackendSettings, Settings
from imagegate.config.redact import Redactor
from imagegate.errors import ConfigError, HealthEffect, error_class_for_kind
from imagegate.events import TERMINAL, Event, EventSink, FailedEvent
from imagegate.logging import get_logger
from imagegate.models import BackendHealth, Deadline, ImageRequest, ImageResult
from imagegate.routing.announce import QUIET, Announcer
from imagegate.routing.breaker import BreakerPolicy, CircuitBreaker, Transition
from imagegate.routing.fleet import TRIAL_MARGIN_S, Fleet
from imagegate.routing.policy import BackendState, HedgeBudget, order
from imagegate.routing.prober import HealthProber
from imagegate.routing.race import Handshakes
from imagegate.routing.run import RequestRun, Runtime
from imagegate.routing.watch import Watcher, fan_out
from imagegate.state import open_state

__all__ = ["ImageService"]

log = get_logger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class ImageService:
    """Generate images through the configured backends, failing over between them.

    Use as an async context manager: ``async with ImageService.from_config() as svc:``.
    One service per process: it owns the shared HTTP session, every backend, their circuit
    breakers and the background probe task. ``clock`` (monotonic seconds, for the breakers),
    ``rng`` (jitter) and ``sleep`` (retry backoff) are injectable so tests never wait.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._backends: dict[str, ImageBackend[Any]] = {}
        self._states: dict[str, BackendState] = {}
        self._prober: HealthProber | None = None
        self._runtime: Runtime | None = None
        self._fleet: Fleet | None = None
        self._watcher: Watcher | None = None
        self._turn = 0
        # every configured secret, in every form: masked in what leaves a backend
        self.redactor = Redactor.for_settings(settings.secrets)

    @classmethod
    def from_config(cls, path: str | Path | None = None) -> ImageService:
        """Load settings from ``path`` (or ``$IMAGEGATE_CONFIG``, or the environment alone)."""
        return cls(load_settings(path))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the shared HTTP session, build every backend, start the probe loop."""
        if self._session is not None:
            return
        if not self.settings.backends:
            raise ConfigError(f"{self.settings.source}: no backend is configured")
        svc = self.settings.service
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=svc.deadline_s, sock_connect=30),
            trace_configs=[timing_trace_config()],
        )
        policy = BreakerPolicy(svc.breaker_threshold, svc.breaker_cooldown_s, svc.breaker_max_cooldown_s)
        password = self.settings.secrets.get(SERVICE_SECRETS, {}).get("state_password")
        self._fleet = Fleet(open_state(svc, password=password), self._states)
        for cfg in self.settings.backends:
            secrets = self.settings.secrets.get(cfg.name, {})
            self._backends[cfg.name] = create_backend(cfg, secrets=secrets, session=self._session)
            self._states[cfg.name] = self._new_state(cfg, policy)
            self._fleet.trial_ttl[cfg.name] = cfg.connect_timeout_s + cfg.read_timeout_s + TRIAL_MARGIN_S
        await self._fleet.start()
        self._runtime = Runtime(
            settings=svc,
            backends=self._backends,
            budget=HedgeBudget(svc.hedge_budget),
            rng=self._rng,
            fleet=self._fleet,
            sleep=self._sleep,
            redact=self.redactor,
            handshakes=Handshakes(self.redactor),
        )
        self._prober = HealthProber(
            list(self._states),
            self._probe_round,
            interval_s=svc.probe_interval_s,
            urgent=lambda name: self._states[name].breaker.state != "closed",
            rng=self._rng,
        )
        self._prober.start()

    def _new_state(self, cfg: BackendSettings, policy: BreakerPolicy) -> BackendState:
        name = cfg.name

        def on_transition(t: Transition) -> None:
            log.info(
                "breaker_transition",
                backend=name,
                kind=f"{t.old}_to_{t.new}",
                reason=t.reason,
                open_for_s=None if t.open_for_s is None else round(t.open_for_s, 3),
            )
            if self._fleet is not None:
                self._fleet.transition(name, t)
            if t.new != "closed" and self._prober is not None:
                self._prober.nudge(name)
            if name in self._states:  # requests waiting for this backend re-check it
                self._states[name].breaker_changed()
            if self._watcher is not None:
                self._watcher.backend_changed(name)

        return BackendState(
            name=name,
            kind=cfg.kind,
            breaker=CircuitBreaker(policy, clock=self._clock, on_transition=on_transition),
            priority=cfg.priority,
            max_concurrency=cfg.max_concurrency,
            queue=cfg.queue,
            cost=cfg.cost,
        )

    async def aclose(self) -> None:
        """Stop the probe loop, close every backend and the shared session."""
        if self._prober is not None:
            await self._prober.stop()
            self._prober = None
        if self._runtime is not None:  # losers of handshake races still connecting
            await self._runtime.handshakes.aclose()
        backends, self._backends = self._backends, {}
        for backend in backends.values():
            try:
                await backend.aclose()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the others
                log.warning("backend_close_failed", backend=backend.name, error=str(exc))
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._fleet is not None:
            await self._fleet.aclose()
            self._fleet = None
        self._runtime = None

    # -- what is configured -------------------------------------------------------------

    @property
    def backends(self) -> list[ImageBackend[Any]]:
        return list(self._backends.values())

    def backend(self, name: str) -> ImageBackend[Any]:
        try:
            return self._backends[name]
        except KeyError:
            raise ConfigError(f"no backend named {name!r} (configured: {self.settings.names()})") from None

    @property
    def instance(self) -> str:
        """This service's id in its fleet (shared state); fixed while it runs."""
        if self._fleet is None:
            raise RuntimeError("ImageService is not started: use 'async with ImageService...'")
        return self._fleet.state.instance

    def watch(self, watcher: Watcher | None) -> None:
        """Tell ``watcher`` of every breaker change, probe and request (None: stop)."""
        self._watcher = watcher

    def breaker(self, name: str) -> CircuitBreaker:
        """The circuit breaker of backend ``name``."""
        self.backend(name)
        return self._states[name].breaker

    # -- generating ---------------------------------------------------------------------

    async def generate(
        self,
        request: ImageRequest,
        *,
        backend: str | None = None,
        deadline_s: float | None = None,
        on_event: EventSink | None = None,
        previews: bool = False,
    ) -> ImageResult:
        """Generate ``request``: candidates in policy order, failing over on the taxonomy,
        retrying and hedging as configured, all inside one deadline.

        ``on_event`` (called on the event loop, must not block) hears the request's events
        (``imagegate.events``), the last one terminal; ``previews=True`` asks the backends
        that can for preview images. Raises AllBackendsFailed (with the whole attempt trail)
        when no backend answered.
        """
        if self._runtime is None:
            raise RuntimeError("ImageService is not started: use 'async with ImageService...'")
        deadline = Deadline.after(deadline_s or self.settings.service.deadline_s)
        if backend is not None:
            self.backend(backend)
            candidates = [self._states[backend]]
        else:
            self._turn += 1
            candidates = order(list(self._states.values()), self.settings.service.order, self._turn)
        self._runtime.fleet.on_request(self._runtime.budget)
        watched = None if self._watcher is None else self._watcher.request_started(request, backend)
        if watched is not None:
            assert self._watcher is not None
            on_event = fan_out(on_event, previews, watched)
            previews = previews or self._watcher.previews
        if on_event is None:
            return await RequestRun(self._runtime, request, deadline, candidates, QUIET).run()
        tell = Announcer(on_event, previews=previews)
        try:
            run = RequestRun(self._runtime, request, deadline, candidates, tell)
        except Exception as exc:  # refused before routing: the caller hears it raised, and
            if watched is not None:  # the watcher, which has no other way, as a failed event
                watched(FailedEvent(error_kind=getattr(exc, "kind", "server_error"), message=str(exc)))
            raise
        return await tell.around(run.run())

    async def stream(
        self,
        request: ImageRequest,
        *,
        backend: str | None = None,
        deadline_s: float | None = None,
        previews: bool = False,
    ) -> AsyncIterator[Event]:
        """Generate ``request`` and yield its events as they happen, ending with the terminal
        one (``completed`` carries the result; a failure is a ``failed`` event, not an
        exception). Leaving the loop early cancels the generation.

            async for event in service.stream(ImageRequest(prompt="a fox"), previews=True):
                print(event.type)
        """
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        task = asyncio.create_task(self.generate(
            request, backend=backend, deadline_s=deadline_s, on_event=queue.put_nowait,
            previews=previews,
        ))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield event
                if event.type in TERMINAL:
                    return
            await task  # ended without a terminal event: raise what ended it (not started, ...)
        finally:
            if not task.done():
                task.cancel("the stream's consumer stopped reading")
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: it was told as a ``failed`` event

    async def settled(self, timeout: float | None = None) -> bool:
        """Wait until the handshakes that lost a race, left to finish in the background (where
        they still feed their backends' breakers), are done: at most ``timeout`` seconds;
        whether they are."""
        return self._runtime is None or await self._runtime.handshakes.settled(timeout)

    # -- health -------------------------------------------------------------------------

    def health(self) -> list[BackendHealth]:
        """What is known of every backend now, without any network call."""
        now = time.time()
        caps = {name: backend.capabilities for name, backend in self._backends.items()}
        return [
            state.health(now=now).model_copy(update={"capabilities": caps.get(name)})
            for name, state in self._states.items()
        ]

    async def probe_all(self, *, timeout: float | None = None) -> list[BackendHealth]:
        """Probe every backend once, concurrently; feed the breakers; return the health table."""
        if not self._states:
            raise RuntimeError("ImageService is not started: use 'async with ImageService...'")
        await asyncio.gather(*(self._probe_one(name, timeout=timeout) for name in self._states))
        return self.health()

    async def _probe_round(self, name: str) -> BackendHealth | None:
        """The background probe of ``name``: by one instance of the fleet per interval, whose
        result every instance shows (its breaker verdicts arrive as news)."""
        assert self._fleet is not None
        if not await self._fleet.lead_probe(name, self.settings.service.probe_interval_s):
            return None
        result = await self._probe_one(name)
        await self._fleet.probed(result)
        return result

    async def _probe_one(self, name: str, *, timeout: float | None = None) -> BackendHealth:
        state, backend = self._states[name], self._backends[name]
        limit = timeout or self.settings.service.probe_timeout_s
        epoch = state.breaker.epoch
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit + 1.0):
                result = await backend.probe(timeout=limit)
        except Exception as exc:  # noqa: BLE001 - a hung or broken probe is a failed probe
            kind = "generation_timeout" if isinstance(exc, TimeoutError) else "server_error"
            result = BackendHealth(
                name=name, kind=state.kind, ok=False, last_probe_at=time.time(),
                last_error_kind=kind, last_error=f"probe failed: {type(exc).__name__}: {exc}",
                timings={"total_s": time.monotonic() - started},
            )
        masked = {"last_error": self.redactor(result.last_error), "detail": self.redactor(result.detail)}
        result = result.model_copy(update=masked)
        state.last_probe = result
        error_kind = result.last_error_kind or "failure"
        if not result.ok:
            state.note_error(error_kind, result.last_error or error_kind, request=False)
        state.breaker.on_probe(bool(result.ok), _effect(error_kind), kind=error_kind, epoch=epoch)
        if self._watcher is not None:
            self._watcher.backend_changed(name)
        log.info(
            "backend_probed",
            backend=name,
            kind="ok" if result.ok else error_kind,
            elapsed_s=round(time.monotonic() - started, 4),
            state=state.breaker.state,
        )
        return result


def _effect(kind: str) -> HealthEffect:
    try:
        return error_class_for_kind(kind).health
    except KeyError:
        return "count"
