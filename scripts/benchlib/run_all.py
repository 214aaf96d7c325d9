"""``all``: every scenario of bench.py in turn, with its default arguments; each writes its own
``outputs/bench/<scenario>.json``, and ``all.json`` sums up the targets."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchlib.common import machine


def run_all(
    scenarios: Mapping[str, Any], out_dir: Path, skip: list[str] | None = None
) -> dict[str, Any]:
    """Run each scenario (objects with ``run``, ``print``, ``add_arguments``) but ``all`` itself."""
    summary: dict[str, Any] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, scenario in scenarios.items():
        if name == "all" or name in (skip or []):
            continue
        parser = argparse.ArgumentParser()
        scenario.add_arguments(parser)
        args = parser.parse_args([])
        args.scenario = name
        print(f"\n== {name} ==", flush=True)
        started = time.monotonic()
        try:
            report = scenario.run(args)
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
            summary[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name}: FAILED to run: {type(exc).__name__}: {exc}", flush=True)
            continue
        scenario.print(report)
        (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        summary[name] = _verdict(report, time.monotonic() - started)
    return {"scenario": "all", "machine": machine(), "scenarios": summary}


def _verdict(report: dict[str, Any], seconds: float) -> dict[str, Any]:
    if "skipped" in report:
        return {"verdict": "skipped", "why": report["skipped"], "seconds": round(seconds, 1)}
    ok = report.get("passed", report.get("target_met"))
    verdict = "measured" if ok is None else ("met" if ok else "MISSED")
    return {"verdict": verdict, "seconds": round(seconds, 1)}


def print_all(report: dict[str, Any]) -> None:
    print(f"\nall: {report['machine']}")
    for name, row in report["scenarios"].items():
        text = row.get("verdict") or f"error: {row.get('error')}"
        print(f"  {name:<10}{text:<10}{row.get('seconds', '')!s:>8} s")


def all_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip", action="append", default=[], help="a scenario to leave out (repeatable)"
    )
