"""scripts/bench.py's overhead, memory, compare and all scenarios, run small so that
``python scripts/bench.py all`` cannot rot (the soak has its own tests)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from benchlib import litellm_side
from benchlib.clients import SKIP as CLIENTS_SKIP
from benchlib.clients import gateway as clients_gateway
from benchlib.clients import print_clients, run_clients
from benchlib.common import API_KEY
from benchlib.compare import SKIP, print_compare, run_compare
from benchlib.http_api import http_arguments, print_http, run_http
from benchlib.memory import memory_arguments, run_memory
from benchlib.overhead import overhead_arguments, print_overhead, run_overhead
from benchlib.registry import SCENARIOS
from benchlib.run_all import print_all, run_all

ROOT = Path(__file__).resolve().parents[2]


def args_for(add_arguments: Any, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bench_py_offers_every_scenario_and_all() -> None:
    assert set(SCENARIOS) >= {"failover", "hedge", "http", "overhead", "memory", "compare", "clients", "soak", "all"}
    listed = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert all(name in listed for name in SCENARIOS)


def test_overhead_reports_added_latency_and_untouched_image_bytes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = run_overhead(
        args_for(overhead_arguments, "--runs", "30", "--warmup", "5", "--size", "64", "--kind-runs", "10")
    )
    assert report["bytes_identical_to_provider"] is True
    assert set(report["latency_ms"]) == {"raw_aiohttp", "imagegate", "raw_aiohttp_fitted", "imagegate_adapting"}
    assert report["added_ms"]["imagegate"]["p50"] < 50  # a sanity bound, not the benchmark's target
    assert report["added_ms"]["imagegate_adapting"]["p50"] < 50
    assert report["adapted"]["adjustments"] == [  # 64 px: the nearest square dall-e-2 takes is 256
        "field='size' asked='240x240' used='256x256' why='allowed: 256x256, 512x512, 1024x1024'"]
    assert report["logging"]["structlog_configured"] is False  # the library's defaults
    assert "anew" in report["config"]["emulator"]
    assert set(report["kinds"]) == {"comfyui", "fal", "replicate", "together"}  # issue 19's kinds, each measured
    for row in report["kinds"].values():
        assert set(row["latency_ms"]) == {"raw_aiohttp", "imagegate"} and row["added_ms"]["p50"] < 50
    print_overhead(report)
    out = capsys.readouterr().out
    assert "added over a raw aiohttp POST of the fitted request" in out
    assert "added over a raw aiohttp POST" in out and "added over a raw aiohttp comfyui exchange" in out


def test_http_measures_every_mode_against_the_emulator_alone(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_http(args_for(http_arguments, "--duration", "0.3", "--concurrency", "2", "--size", "64"))
    rows = {r["mode"]: r for r in report["levels"]}
    assert set(rows) == {"direct", "sync", "stream", "jobs"}  # each answer was checked: a PNG
    assert all(r["requests"] > 0 for r in rows.values())
    assert "added_p50_ms" not in rows["direct"] and all("added_p50_ms" in rows[m] for m in ("sync", "stream", "jobs"))
    print_http(report)
    assert "+p50" in capsys.readouterr().out


def test_memory_reports_rounds_peak_and_growth() -> None:
    argv = ("--concurrency", "8", "--rounds", "2", "--size", "128", "--latency", "0.05")
    report = run_memory(args_for(memory_arguments, *argv))
    assert len(report["rounds"]) == 2
    assert all(r["peak_mb"] >= r["start_mb"] for r in report["rounds"])
    assert report["config"]["image"].startswith("128x128 png")


@pytest.mark.parametrize(
    ("name", "run", "show", "skip"),
    [("compare", run_compare, print_compare, SKIP), ("clients", run_clients, print_clients, CLIENTS_SKIP)],
)
def test_litellm_scenarios_without_litellm_say_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    name: str, run: Any, show: Any, skip: str,
) -> None:
    monkeypatch.setattr(litellm_side, "load_litellm", lambda: None)
    report = run(argparse.Namespace())
    assert report == {"scenario": name, "skipped": skip}
    show(report)
    assert capsys.readouterr().out.strip() == skip


class _Fake:
    def __init__(self, report: dict[str, Any] | None) -> None:
        self.report = report

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--n", type=int, default=1)

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        if self.report is None:
            raise RuntimeError("emulator did not start")
        return self.report

    def print(self, report: dict[str, Any]) -> None:
        print(report)


def test_all_runs_each_scenario_writes_its_json_and_survives_a_broken_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes = {
        "good": _Fake({"target_met": True}),
        "bad": _Fake({"target_met": False}),
        "soakish": _Fake({"passed": True}),
        "skipped": _Fake({"skipped": "no litellm"}),
        "broken": _Fake(None),
        "left_out": _Fake({"target_met": True}),
    }
    summary = run_all(fakes, tmp_path, skip=["left_out"])["scenarios"]
    assert {k: v.get("verdict") for k, v in summary.items()} == {
        "good": "met",
        "bad": "MISSED",
        "soakish": "met",
        "skipped": "skipped",
        "broken": None,
    }
    assert "emulator did not start" in summary["broken"]["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.json",
        "good.json",
        "skipped.json",
        "soakish.json",
    ]
    print_all({"machine": {}, "scenarios": summary})
    assert "MISSED" in capsys.readouterr().out


def test_the_clients_gateway_is_an_env_only_serve_that_answers_any_model_name() -> None:
    """What LiteLLM talks to in ``clients``: real processes, A1111_URL alone."""
    import json
    import urllib.request

    with clients_gateway() as base:
        body = json.dumps({"model": "flux-dev", "prompt": "a fox", "size": "64x64", "cfg_scale": 3}).encode()
        request = urllib.request.Request(
            f"{base}/v1/images/generations", data=body,
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=20) as resp:
            assert resp.status == 200 and resp.headers["x-imagegate-backend"] == "a1111"
            assert json.loads(resp.read())["data"][0]["b64_json"]


def test_litellm_gets_an_image_from_imagegate_in_every_documented_call() -> None:
    """Runs only where litellm is installed (the bench environment)."""
    if litellm_side.load_litellm() is None:
        pytest.skip("litellm is not installed here: it runs in the bench environment")
    report = run_clients(argparse.Namespace())
    assert report["target_met"], report["cases"]
