"""``soak``: a bounded request loop against three flapping backends, and what must hold after.

Three HTTPS emulators (A1111, OpenAI-compatible, Stability), each behind a FaultProxy; every
``slot_s`` seconds each backend's mode changes on a fixed random schedule (see faults.py).
``concurrency`` workers call ``ImageService.generate`` back to back until ``duration_s`` is
over. Then the checks: every request answered (an image, or AllBackendsFailed with its trail,
none past its deadline); at least 99 % success among requests during which some backend was
up from start to answer; no provider call without a breaker permit (closed, the half-open
trial, or forced because every breaker was open); fds, tasks and threads back to where they
started; RSS growth under 20 MB from the first to the last window; no "Unclosed" warning;
no partial file in the output directory.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from imagegate import ImageRequest, ImageService
from imagegate.backends.a1111 import A1111Settings
from imagegate.backends.openai_images import OpenAISettings
from imagegate.backends.stability import StabilitySettings
from imagegate.config import ServiceSettings, Settings
from imagegate.errors import AllBackendsFailed
from imagegate.store import ImageStore
from imagegate.testing import FaultProxy, Knobs, LocalCA, a1111, openai_images, serve_app, stability

from benchlib.common import API_KEY, KEY_ENV
from benchlib.faults import FaultDriver, fault_schedule
from benchlib.soak_report import Observed, SoakConfig, Tally, print_soak, soak_report
from benchlib.soak_watch import (
    BreakerWatch,
    EventLog,
    Gauges,
    WarningTrap,
    sample_rss,
    settle,
)

__all__ = ["SoakConfig", "print_soak", "run_soak", "soak", "soak_arguments"]


def _backends(urls: list[str], ca: LocalCA, cfg: SoakConfig) -> tuple[Any, ...]:
    common: dict[str, Any] = {
        "ca_bundle": ca.ca_file,
        "connect_timeout_s": cfg.connect_timeout_s,
        "read_timeout_s": cfg.read_timeout_s,
        "max_concurrency": 256,
        "queue": False,
    }
    return (
        A1111Settings(name="a1111", base_url=urls[0], **common),
        OpenAISettings(
            name="openai", base_url=urls[1], model="emulator-image", api_key_env=KEY_ENV, **common
        ),
        StabilitySettings(name="stability", base_url=urls[2], api_key_env=KEY_ENV, **common),
    )


def _settings(backends: tuple[Any, ...], cfg: SoakConfig, output_dir: Path) -> Settings:
    service = ServiceSettings(
        deadline_s=cfg.deadline_s,
        output_dir=output_dir,
        max_attempts=5,
        order="round_robin",
        breaker_cooldown_s=0.25,
        breaker_max_cooldown_s=1.0,
        probe_interval_s=cfg.probe_interval_s,
        probe_timeout_s=0.3,
        retry_backoff_s=0.02,
        max_retry_after_s=0.5,
    )
    secrets = {"a1111": {}, "openai": {"api_key": API_KEY}, "stability": {"api_key": API_KEY}}
    return Settings(service=service, backends=backends, secrets=secrets, source="soak")


async def _drive(
    driver: FaultDriver, schedule: list[tuple[str, ...]], slot_s: float, t0: float
) -> None:
    for k, row in enumerate(schedule):
        await asyncio.sleep(max(0.0, t0 + k * slot_s - time.monotonic()))
        driver.apply(row)


async def _worker(
    n: int,
    service: ImageService,
    driver: FaultDriver,
    store: ImageStore,
    tally: Tally,
    cfg: SoakConfig,
    stop_at: float,
) -> None:
    request = ImageRequest(prompt=f"soak {n % 4}", width=64, height=64, seed=n % 4)
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        result, failure = None, None
        try:
            async with asyncio.timeout(cfg.deadline_s + 5.0):
                result = await service.generate(request)
        except AllBackendsFailed as exc:
            failure = exc
        except TimeoutError:
            tally.hung += 1
        except Exception as exc:  # noqa: BLE001 - anything else is a finding
            tally.unexpected.append(f"{type(exc).__name__}: {exc}")
        t1 = time.monotonic()
        _count(tally, driver, request, store, result, failure, t0, t1, cfg)


def _count(
    tally: Tally,
    driver: FaultDriver,
    request: ImageRequest,
    store: ImageStore,
    result: Any,
    failure: AllBackendsFailed | None,
    t0: float,
    t1: float,
    cfg: SoakConfig,
) -> None:
    tally.total += 1
    tally.latencies.append(t1 - t0)
    tally.max_elapsed_s = max(tally.max_elapsed_s, t1 - t0)
    up = driver.up_throughout(t0 - cfg.up_grace_s, t1)
    strict = driver.up_throughout(t0, t1)
    tally.with_up += up
    tally.with_up_strict += strict
    attempts = result.attempts if result is not None else (failure.attempts if failure else [])
    tally.outcomes.update(a.outcome for a in attempts)
    if result is not None:
        tally.ok += 1
        tally.ok_with_up += up
        tally.ok_with_up_strict += strict
        tally.served[result.backend] += 1
        if tally.ok % cfg.save_every == 1:
            store.save(result.images[0], request, backend=result.backend)
            tally.saved += 1
    elif failure is not None:
        tally.no_trail += not failure.attempts
        if strict:
            slot, since = driver.slot_of(t0)
            trail = " ".join(f"{a.backend}:{a.outcome}" for a in failure.attempts)
            tally.failed_with_up[f"slot {slot} +{since:.1f}s: {trail}"] += 1


def _partial_files(folder: Path) -> list[str]:
    """Temporary files left behind, or files that are not a complete image."""
    from PIL import Image

    bad = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        if path.name.startswith(".tmp-"):
            bad.append(path.name)
            continue
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception:  # noqa: BLE001 - any failure to read means a broken file
            bad.append(path.name)
    return bad


async def soak(cfg: SoakConfig) -> dict[str, Any]:
    """Run the soak and return its report (``report["passed"]`` and ``report["checks"]``)."""
    events, trap, watch, tally = EventLog(), WarningTrap(), BreakerWatch(), Tally()
    rss: list[tuple[float, float, float]] = []
    with (
        trap.trapping(),
        events.capturing(),
        tempfile.TemporaryDirectory(prefix="imagegate-soak-") as tmp,
    ):
        start = Gauges.now()
        driver = await _run(cfg, Path(tmp), events, watch, tally, rss)
        end = await settle(start)
        partial = _partial_files(Path(tmp) / "out")
    observed = Observed(tally, events, watch, trap, rss, driver, start, end, partial)
    return soak_report(cfg, observed)


async def _run(
    cfg: SoakConfig,
    tmp: Path,
    events: EventLog,
    watch: BreakerWatch,
    tally: Tally,
    rss: list[tuple[float, float, float]],
) -> FaultDriver:
    ca = LocalCA(tmp)
    knobs = [Knobs(), Knobs(), Knobs()]
    apps = [
        a1111.create_app(knobs=knobs[0]),
        openai_images.create_app(knobs=knobs[1], api_key=API_KEY),
        stability.create_app(knobs=knobs[2], api_key=API_KEY),
    ]
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serve_app(app, tls=ca)) for app in apps]
        proxies = [await stack.enter_async_context(FaultProxy(url)) for url in urls]
        settings = _settings(_backends([p.url for p in proxies], ca, cfg), cfg, tmp / "out")
        service = await stack.enter_async_context(ImageService(settings))
        watch.install(service)
        driver = FaultDriver(proxies, knobs, base_latency_s=0.01)
        schedule = fault_schedule(cfg.seed, 3, math.ceil(cfg.duration_s / cfg.slot_s))
        t0 = time.monotonic()
        background = [
            asyncio.create_task(_drive(driver, schedule, cfg.slot_s, t0)),
            asyncio.create_task(sample_rss(rss)),
        ]
        await asyncio.sleep(0)  # the first row is applied before any request
        store, stop_at = ImageStore(settings.service.output_dir), t0 + cfg.duration_s
        try:
            await asyncio.gather(
                *(
                    _worker(n, service, driver, store, tally, cfg, stop_at)
                    for n in range(cfg.concurrency)
                )
            )
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
    return driver


def run_soak(args: Any) -> dict[str, Any]:
    cfg = SoakConfig(
        duration_s=args.duration,
        concurrency=args.concurrency,
        slot_s=args.slot,
        seed=args.seed,
        rss_window_s=min(10.0, args.duration / 5),
        rss_warmup_s=2.0 if args.duration >= 30 else 0.4 * args.duration,
        up_grace_s=args.grace,
    )
    return asyncio.run(soak(cfg))


def soak_arguments(parser: Any) -> None:
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--slot", type=float, default=2.0, help="seconds between fault changes")
    parser.add_argument("--seed", type=int, default=8, help="the fault schedule's seed")
    parser.add_argument(
        "--grace",
        type=float,
        default=0.0,
        help="count a request as 'a backend was up' only if one was up this long before it too",
    )
