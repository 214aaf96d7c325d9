"""``overhead``: what ImageService.generate adds to one provider call.

1,000 sequential generations of a 512x512 PNG from the OpenAI-compatible emulator (its own
process, drawing and encoding every image anew: ``--render``), each paired with a raw aiohttp
POST of the same JSON body to the same emulator from the same process, interleaved so that
both see the same machine. The added cost is p50(service) - p50(raw) (and the same for p99),
plus the median of the paired differences, which shrugs off slow moments that hit one pair.
``--kinds`` (default: comfyui, fal, replicate, together) measures the same for those kinds,
each against its own minimal raw exchange (``overhead_kinds.py``), ``--kind-runs`` pairs each;
the target applies to the OpenAI row.

imagegate runs as a library with its defaults and no logging configuration of this
benchmark's own: structlog unconfigured, nothing set on the ``imagegate`` logger. The report
records that state, and the run refuses to measure anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog
from imagegate import ImageRequest, ImageService
from imagegate.backends.openai_images import build_request
from imagegate.routing.policy import percentile

from benchlib.common import (
    API_KEY,
    machine,
    ms,
    openai_backend,
    openai_emulator,
    print_table,
    service_settings,
    stats_ms,
)
from benchlib.overhead_kinds import KINDS, measure_kinds

TARGET_ADDED_P50_MS = 0.5
Client = Callable[[], Awaitable[Any]]


def bench_request(size: int) -> ImageRequest:
    """A fixed seed, so that both clients ask for the same image (the emulator draws each)."""
    return ImageRequest(prompt="a lighthouse at dusk", width=size, height=size, seed=1)


def raw_client(session: aiohttp.ClientSession, base_url: str, request: ImageRequest,
               model: str = "emulator-image") -> Client:
    """A bare aiohttp POST of the body imagegate's backend sends; reads the whole answer."""
    url = base_url + "/v1/images/generations"
    body = json.dumps(build_request(request, model=model)).encode()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

    async def call() -> bytes:
        async with session.post(url, data=body, headers=headers) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"raw POST: HTTP {resp.status}: {data[:200]!r}")
            return data

    return call


def service_client(service: ImageService, request: ImageRequest, backend: str | None = None) -> Client:
    async def call() -> Any:
        return await service.generate(request, backend=backend)

    return call


async def interleaved(
    clients: dict[str, Client], runs: int, warmup: int, seed: int = 1
) -> dict[str, list[float]]:
    """Call every client once per round, in a shuffled order (so that no client always follows
    the same one); seconds per call, after ``warmup`` rounds."""
    rng = random.Random(seed)
    names = list(clients)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + runs):
        rng.shuffle(names)
        for name in names:
            start = time.perf_counter()
            await clients[name]()
            if i >= warmup:
                out[name].append(time.perf_counter() - start)
    return out


def added(samples: dict[str, list[float]], name: str, base: str) -> dict[str, float]:
    """``name`` minus ``base``: at p50, at p99, and the median of the paired differences."""
    a, b = samples[name], samples[base]
    paired = [x - y for x, y in zip(a, b, strict=True)]
    return {
        "p50": ms(percentile(a, 0.5) - percentile(b, 0.5)),
        "p99": ms(percentile(a, 0.99) - percentile(b, 0.99)),
        "paired_median": ms(percentile(paired, 0.5)),
        "ratio_p50": round(percentile(a, 0.5) / percentile(b, 0.5), 3),
    }


def logging_state() -> dict[str, Any]:
    """How logging is set up in this process, as far as imagegate is concerned."""
    logger = logging.getLogger("imagegate")
    return {
        "structlog_configured": structlog.is_configured(),
        "imagegate_logger_level": logging.getLevelName(logger.level),
        "imagegate_handlers": len(logger.handlers),
        "effective_level": logging.getLevelName(logger.getEffectiveLevel()),
    }


# what nobody configured: imagegate's own part of it (a host's root handlers are the host's)
LIBRARY_DEFAULT = {"structlog_configured": False, "imagegate_logger_level": "NOTSET", "imagegate_handlers": 0}


def run_overhead(args: argparse.Namespace) -> dict[str, Any]:
    state = logging_state()
    if {k: state[k] for k in LIBRARY_DEFAULT} != LIBRARY_DEFAULT:
        raise SystemExit(f"overhead: logging is configured ({state}); the target is for a library's defaults")
    with openai_emulator(render=True) as url:
        samples, identical, adjustments = asyncio.run(_measure(url, args))
    kinds = measure_kinds(args, interleaved, added)
    report = overhead_report(args, samples, identical)
    report["added_ms"]["imagegate_adapting"] = added(samples, "imagegate_adapting", "raw_aiohttp_fitted")
    report["adapted"] = {"model": ADAPTED_MODEL, "adjustments": adjustments,
                         "baseline": "a raw POST of the fitted request"}
    return {**report, "logging": state, "kinds": kinds}


ADAPTED_MODEL = "dall-e-2"  # takes 256, 512 and 1024 squares only (the emulator's per-model rules)


def adapted_requests(size: int) -> tuple[ImageRequest, ImageRequest]:
    """A request adaptation has to fit (a side dall-e-2 does not take: 16 px under the
    allowed square nearest ``size``), and the request it becomes: what the paired raw POST
    sends."""
    side = min((256, 512, 1024), key=lambda allowed: abs(allowed - size))
    asked = ImageRequest(prompt="a lighthouse at dusk", width=side - 16, height=side - 16, seed=1)
    fitted = asked.model_copy(update={"width": side, "height": side})
    return asked, fitted


async def _measure(url: str, args: argparse.Namespace) -> tuple[dict[str, list[float]], bool, list[str]]:
    request = bench_request(args.size)
    asked, fitted = adapted_requests(args.size)
    settings = service_settings(openai_backend("emulator", url),
                                openai_backend("dalle2", url, priority=1, model=ADAPTED_MODEL))
    async with aiohttp.ClientSession() as session, ImageService(settings) as service:
        clients = {
            "raw_aiohttp": raw_client(session, url, request),
            "imagegate": service_client(service, request, "emulator"),
            "raw_aiohttp_fitted": raw_client(session, url, fitted, model=ADAPTED_MODEL),
            "imagegate_adapting": service_client(service, asked, "dalle2"),
        }
        adjustments = [str(a) for a in (await service.generate(asked, backend="dalle2")).adjustments]
        if not adjustments:
            raise SystemExit(f"overhead: {ADAPTED_MODEL} took {asked.width}x{asked.height} as asked: nothing adapted")
        samples = await interleaved(clients, args.runs, args.warmup)
        identical = await same_bytes(clients["raw_aiohttp"], service, request)
    return samples, identical, adjustments


async def same_bytes(raw: Client, service: ImageService, request: ImageRequest) -> bool:
    """Are the image bytes imagegate returns exactly the provider's (no decode and re-encode)?"""
    body = json.loads(await raw())
    result = await service.generate(request)
    return bool(result.images[0].data == base64.b64decode(body["data"][0]["b64_json"]))


def overhead_report(
    args: argparse.Namespace, samples: dict[str, list[float]], identical: bool
) -> dict[str, Any]:
    add = added(samples, "imagegate", "raw_aiohttp")
    return {
        "scenario": "overhead",
        "machine": machine(),
        "config": {
            "runs": args.runs,
            "warmup": args.warmup,
            "image": f"{args.size}x{args.size} png",
            "emulator": "draws and encodes every image anew (--render)",
        },
        "latency_ms": {name: stats_ms(values) for name, values in samples.items()},
        "added_ms": {"imagegate": add},
        "bytes_identical_to_provider": identical,
        "target": f"added p50 < {TARGET_ADDED_P50_MS} ms",
        "target_met": add["p50"] < TARGET_ADDED_P50_MS and identical,
    }


def print_overhead(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(
        f"overhead: {cfg['runs']} sequential {cfg['image']} generations, each drawn anew by the "
        f"OpenAI-compatible emulator in its own process; load {report['machine']['loadavg_1m']}"
    )
    print_table(report["latency_ms"])
    print_added({"imagegate": report["added_ms"]["imagegate"]})
    if "imagegate_adapting" in report["added_ms"]:
        adapted = report["adapted"]
        print(f"  adaptation on ({adapted['model']}: {'; '.join(adapted['adjustments'])}):")
        print_added({"imagegate_adapting": report["added_ms"]["imagegate_adapting"]},
                    base="raw aiohttp POST of the fitted request")
    print(
        f"  image bytes identical to the provider's (not re-encoded): {report['bytes_identical_to_provider']}"
    )
    if "logging" in report:
        print(f"  logging: library defaults, none configured ({report['logging']})")
    for kind, row in (report.get("kinds") or {}).items():
        print(f"  {kind}: each kind's own minimal exchange with its emulator (its own process)")
        print_added({kind: row["added_ms"]}, base=f"raw aiohttp {kind} exchange")
    print(f"target ({report['target']}): {'met' if report['target_met'] else 'MISSED'}")


def print_added(rows: dict[str, dict[str, float]], base: str = "raw aiohttp POST") -> None:
    print(f"  added over a {base}:")
    print(f"  {'':<26}{'p50':>10}{'p99':>10}{'paired p50':>12}{'ratio p50':>11}")
    for name, row in rows.items():
        print(
            f"  {name:<26}{row['p50']:>10.3f}{row['p99']:>10.3f}{row['paired_median']:>12.3f}"
            f"{row['ratio_p50']:>10.2f}x"
        )


def overhead_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="comma-separated provider kinds also measured ('' for none)")
    parser.add_argument("--kind-runs", type=int, default=300, dest="kind_runs",
                        help="pairs per provider kind")
