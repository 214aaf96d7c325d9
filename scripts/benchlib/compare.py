"""``compare``: ``overhead`` and ``failover`` through imagegate and through LiteLLM's Router,
in the same run, against the same OpenAI-compatible emulator and the same TLS black hole.

Overhead: raw aiohttp POST, ImageService.generate, the bare OpenAI SDK and LiteLLM's
``Router.aimage_generation``, interleaved call by call. Failover: the primary is a listener that
accepts and never completes the TLS handshake, the secondary is healthy; imagegate with
``connect_timeout_s`` = ``--timeout``, LiteLLM with ``timeout`` = the same, configured as its
docs describe (fallbacks + timeout; then with allowed_fails/cooldown_time as well).
Skipped, with one line saying so, when litellm is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp
from imagegate import ImageRequest, ImageService
from imagegate.routing.policy import percentile
from imagegate.testing import black_hole

from benchlib import litellm_side
from benchlib.common import (
    machine,
    ms,
    openai_backend,
    openai_emulator,
    print_table,
    service_settings,
    stats_ms,
)
from benchlib.overhead import (
    Client,
    added,
    bench_request,
    interleaved,
    print_added,
    raw_client,
    service_client,
)

SKIP = "compare: skipped, litellm is not installed (pip install -e '.[bench]', see BENCHMARKS.md)"


def run_compare(args: argparse.Namespace) -> dict[str, Any]:
    litellm = litellm_side.load_litellm()
    if litellm is None:
        return {"scenario": "compare", "skipped": SKIP}
    with openai_emulator() as url:
        report = asyncio.run(_compare(url, args, litellm))
    return {"scenario": "compare", "machine": machine(), "litellm_version": _version(), **report}


def _version() -> str:
    from importlib.metadata import version

    return version("litellm")


async def _compare(url: str, args: argparse.Namespace, litellm: Any) -> dict[str, Any]:
    request = bench_request(args.size)
    return {
        "overhead": await _overhead(url, request, args, litellm),
        "failover": await _failover(url, bench_request(256), args, litellm),  # dall-e-2 takes 256² at least
    }


async def _overhead(
    url: str, request: ImageRequest, args: argparse.Namespace, litellm: Any
) -> dict[str, Any]:
    import openai

    router = litellm.Router(model_list=[litellm_side.deployment("image", url)])
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key=litellm_side.API_KEY, max_retries=0)
    settings = service_settings(openai_backend("emulator", url))
    async with aiohttp.ClientSession() as session, ImageService(settings) as service:
        clients: dict[str, Client] = {
            "raw_aiohttp": raw_client(session, url, request),
            "imagegate": service_client(service, request),
            "openai_sdk": litellm_side.sdk_client(sdk, request),
            "litellm_router": litellm_side.router_client(router, "image", request),
        }
        samples = await interleaved(clients, args.runs, args.warmup)
    await sdk.close()
    rows = {
        name: added(samples, name, "raw_aiohttp")
        for name in ("imagegate", "openai_sdk", "litellm_router")
    }
    ours, theirs = rows["imagegate"]["paired_median"], rows["litellm_router"]["paired_median"]
    ratio = theirs / ours if ours > 0 else None
    return {
        "config": {
            "runs": args.runs,
            "warmup": args.warmup,
            "image": f"{args.size}x{args.size} png",
        },
        "litellm_config": litellm_side.shown(
            {"model_list": [litellm_side.deployment("image", url)]}
        ),
        "latency_ms": {name: stats_ms(values) for name, values in samples.items()},
        "added_ms": rows,
        "litellm_over_imagegate_added": None if ratio is None else round(ratio, 1),
    }


async def _timed(client: Client, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await client()
        out.append(time.perf_counter() - start)
    return out


async def _failover(
    url: str, request: ImageRequest, args: argparse.Namespace, litellm: Any
) -> dict[str, Any]:
    async with black_hole() as (host, port), aiohttp.ClientSession() as session:
        hole = f"https://{host}:{port}"
        direct = await _timed(raw_client(session, url, request), args.requests)
        settings = service_settings(
            openai_backend("primary", hole, 0, connect_timeout_s=args.timeout),
            openai_backend("secondary", url, 1),
        )
        async with ImageService(settings) as service:
            rows = {"imagegate": await _timed(service_client(service, request), args.requests)}
        configs = litellm_side.failover_configs(hole, url, args.timeout)
        counts = {
            "litellm_fallbacks_timeout": args.slow_requests,
            "litellm_with_cooldown": args.requests,
        }
        settings_used = {}
        for name, config in configs.items():
            router = litellm.Router(**config)
            settings_used[name] = litellm_side.effective(router)
            rows[name] = await _timed(
                litellm_side.router_client(router, "primary", request), counts[name]
            )
    return {**_failover_table(rows, direct, configs, args), "litellm_effective": settings_used}


def _failover_table(
    rows: dict[str, list[float]],
    direct: list[float],
    configs: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    table = {}
    for name, values in rows.items():
        warm = values[1:] or values
        table[name] = {
            "requests": len(values),
            "first_s": round(values[0], 3),
            "rest_p50_ms": ms(percentile(warm, 0.5)),
            "rest_max_ms": ms(max(warm)),
        }
    direct_p50 = percentile(direct, 0.5)
    ours = table["imagegate"]
    return {
        "config": {
            "timeout_s": args.timeout,
            "requests": args.requests,
            "slow_requests": args.slow_requests,
        },
        "litellm_configs": {name: litellm_side.shown(cfg) for name, cfg in configs.items()},
        "direct_secondary_p50_ms": ms(direct_p50),
        "rows": table,
        "ratios_vs_imagegate": {
            name: {
                "first": round(row["first_s"] / ours["first_s"], 1),
                "rest_p50": round(row["rest_p50_ms"] / ours["rest_p50_ms"], 1),
            }
            for name, row in table.items()
            if name != "imagegate"
        },
    }


def print_compare(report: dict[str, Any]) -> None:
    if "skipped" in report:
        print(report["skipped"])
        return
    over, fail = report["overhead"], report["failover"]
    print(
        f"compare: imagegate vs LiteLLM {report['litellm_version']} Router, same emulator, same run; "
        f"load {report['machine']['loadavg_1m']}"
    )
    print(f"overhead ({over['config']['runs']} interleaved rounds, {over['config']['image']}):")
    print_table(over["latency_ms"])
    print_added(over["added_ms"])
    print(
        f"  LiteLLM's Router adds {over['litellm_over_imagegate_added']}x what imagegate adds "
        "(paired medians)"
    )
    print(f"  LiteLLM config:\n{_indent(over['litellm_config'])}")
    print(
        f"failover (primary: TLS black hole; timeout {fail['config']['timeout_s']:g} s; "
        f"direct call to the secondary p50 {fail['direct_secondary_p50_ms']} ms):"
    )
    print(
        f"  {'':<28}{'requests':>9}{'first (s)':>11}{'rest p50 ms':>13}{'rest max ms':>13}{'x first':>9}"
        f"{'x rest':>9}"
    )
    for name, row in fail["rows"].items():
        ratio = fail["ratios_vs_imagegate"].get(name, {"first": 1.0, "rest_p50": 1.0})
        print(
            f"  {name:<28}{row['requests']:>9}{row['first_s']:>11.3f}{row['rest_p50_ms']:>13.3f}"
            f"{row['rest_max_ms']:>13.3f}{ratio['first']:>9}{ratio['rest_p50']:>9}"
        )
    for name, text in fail["litellm_configs"].items():
        print(f"  {name}:\n{_indent(text)}")
        print(f"    as the Router holds it: {fail['litellm_effective'][name]}")


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=1000, help="overhead: interleaved rounds")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--size", type=int, default=512, help="overhead: image side in pixels")
    parser.add_argument(
        "--timeout", type=float, default=2.0, help="failover: connect timeout / LiteLLM timeout, s"
    )
    parser.add_argument("--requests", type=int, default=20, help="failover: requests per set-up")
    parser.add_argument(
        "--slow-requests",
        type=int,
        default=2,
        help="failover: requests for LiteLLM without cooldowns (each takes the full retry chain)",
    )
