"""Scenarios of ``scripts/bench.py`` beyond failover/hedge/http: overhead, memory, compare, soak,
and ``all``. Each is ``(help, run(args) -> report, print(report), add_arguments(parser))``;
bench.py registers them with ``scenarios()``. Modules are imported when a scenario is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Spec = tuple[
    str, Callable[[Any], dict[str, Any]], Callable[[dict[str, Any]], None], Callable[[Any], None]
]


def scenarios() -> dict[str, Spec]:
    from benchlib.compare import compare_arguments, print_compare, run_compare
    from benchlib.memory import memory_arguments, print_memory, run_memory
    from benchlib.overhead import overhead_arguments, print_overhead, run_overhead
    from benchlib.soak import print_soak, run_soak, soak_arguments

    return {
        "overhead": (
            "what ImageService.generate adds to a raw aiohttp POST (1,000 calls)",
            run_overhead,
            print_overhead,
            overhead_arguments,
        ),
        "memory": (
            "RSS with 200 concurrent 1024x1024 generations, 5 rounds",
            run_memory,
            print_memory,
            memory_arguments,
        ),
        "compare": (
            "overhead and failover, imagegate vs LiteLLM's Router (needs litellm)",
            run_compare,
            print_compare,
            compare_arguments,
        ),
        "soak": (
            "60 s against three flapping backends, with leak and breaker checks",
            run_soak,
            print_soak,
            soak_arguments,
        ),
    }
