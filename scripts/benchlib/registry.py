"""Every benchmark scenario, in one table: ``python scripts/bench.py <name>``.

A scenario is ``run(args) -> report``, ``print(report)`` and ``add_arguments(parser)``; each
starts its own emulators on 127.0.0.1, warms up, measures against a baseline taken in the
same run, and its report lands in ``outputs/bench/<name>.json``. Add one: a module here with
those three functions and a row below.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchlib.cancel_latency import cancel_arguments, print_cancel, run_cancel
from benchlib.clients import clients_arguments, print_clients, run_clients
from benchlib.common import OUT_DIR
from benchlib.compare import compare_arguments, print_compare, run_compare
from benchlib.failover import failover_arguments, print_failover, run_failover
from benchlib.first_event import first_event_arguments, print_first_event, run_first_event
from benchlib.fleet import fleet_arguments, print_fleet, run_fleet
from benchlib.hedge import hedge_arguments, print_hedge, run_hedge
from benchlib.http_api import http_arguments, print_http, run_http
from benchlib.memory import memory_arguments, print_memory, run_memory
from benchlib.overhead import overhead_arguments, print_overhead, run_overhead
from benchlib.race import print_race, race_arguments, run_race
from benchlib.run_all import all_arguments, print_all, run_all
from benchlib.soak import print_soak, run_soak, soak_arguments
from benchlib.soak_fleet import print_soak_fleet, run_soak_fleet, soak_fleet_arguments
from benchlib.sse_fanout import print_sse_fanout, run_sse_fanout, sse_fanout_arguments

__all__ = ["SCENARIOS", "Scenario"]


@dataclass(frozen=True)
class Scenario:
    help: str
    run: Callable[[argparse.Namespace], dict[str, Any]]
    print: Callable[[dict[str, Any]], None]
    add_arguments: Callable[[argparse.ArgumentParser], None]


SCENARIOS: dict[str, Scenario] = {
    "failover": Scenario("time to first image with the primary black-holed", run_failover,
                         print_failover, failover_arguments),
    "race": Scenario("cold failover with a black-holed primary (connect_timeout_s = 10) and the "
                     "connections racing costs on a healthy fleet, racing on vs off (LiteLLM beside)",
                     run_race, print_race, race_arguments),
    "hedge": Scenario("p50/p99 with a heavy-tailed primary, hedging off vs on", run_hedge,
                      print_hedge, hedge_arguments),
    "http": Scenario("HTTP API throughput and latency (server, emulator, client: 3 processes)",
                     run_http, print_http, http_arguments),
    "overhead": Scenario("what ImageService.generate adds to a raw aiohttp POST (1,000 calls)",
                         run_overhead, print_overhead, overhead_arguments),
    "memory": Scenario("RSS with 200 concurrent 1024x1024 generations, 5 rounds", run_memory,
                       print_memory, memory_arguments),
    "compare": Scenario("overhead and failover, imagegate vs LiteLLM's Router (needs litellm)",
                        run_compare, print_compare, compare_arguments),
    "fleet": Scenario("several instances through Redis: breaker propagation, added latency, 1 vs 3",
                      run_fleet, print_fleet, fleet_arguments),
    "clients": Scenario("LiteLLM as a client of `imagegate serve` (needs litellm)", run_clients,
                        print_clients, clients_arguments),
    "soak_fleet": Scenario("3 instances sharing Redis, backends flapping, one killed, Redis restarted",
                           run_soak_fleet, print_soak_fleet, soak_fleet_arguments),
    "soak": Scenario("60 s against three flapping backends, with leak and breaker checks",
                     run_soak, print_soak, soak_arguments),
    "first_event": Scenario("how soon a listener hears: submit -> started, provider report -> "
                            "progress event (library, SSE), and what listening costs",
                            run_first_event, print_first_event, first_event_arguments),
    "sse_fanout": Scenario("events/s one server sustains to 100 SSE listeners of a job (2 processes)",
                           run_sse_fanout, print_sse_fanout, sse_fanout_arguments),
    "cancel": Scenario("how soon a cancel (job cancel, client gone, task.cancel) reaches the "
                       "provider as an interrupt", run_cancel, print_cancel, cancel_arguments),
}
SCENARIOS["all"] = Scenario(
    "every scenario in turn, with its defaults",
    lambda args: run_all(SCENARIOS, OUT_DIR, args.skip),
    print_all,
    all_arguments,
)
