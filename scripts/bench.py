"""Benchmarks of imagegate against local emulators (and a fault proxy) on loopback.

    python scripts/bench.py failover [--connect-timeout 0.3] [--runs 200]
    python scripts/bench.py hedge [--requests 500] [--concurrency 10]
    python scripts/bench.py http|overhead|memory|compare|soak [...]
    python scripts/bench.py all [--skip NAME]                every scenario, defaults

Every scenario starts its own emulators on 127.0.0.1, warms up, measures, prints a table,
writes ``outputs/bench/<scenario>.json`` and compares with a baseline measured in the same run.
imagegate is used as a library with no logging configuration at all (its defaults: stdlib
``logging``, warnings and errors on stderr), as the overhead target asks.
The scenarios are listed in ``scripts/benchlib/registry.py``.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchlib.common import OUT_DIR
from benchlib.registry import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="scenario", required=True)
    for name, scenario in SCENARIOS.items():
        scenario.add_arguments(sub.add_parser(name, help=scenario.help))
    args = parser.parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    report = scenario.run(args)
    if getattr(args, "json", False):
        print(json.dumps(report))
    else:
        scenario.print(report)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{args.scenario}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
