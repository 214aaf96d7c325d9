"""``imagegate demo`` as a newcomer runs it: a subprocess, no key, no network, a few seconds.

The demo runs (all started at once, to keep the file fast) with the clean environment of
tests/isolated.py, so no provider key of the developer's reaches it; the ``--json`` failover
run also goes inside a fresh network namespace with only loopback when ``unshare -n`` works,
which proves it needs no network. The runs whose ports are checked afterwards stay on the
host's loopback (a closed namespace tells nothing about its ports).
"""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from imagegate.backends.registry import load_settings
from imagegate.cli.demo import (
    KEY,
    KEY_ENV,
    SCENARIOS,
    SLOW_PRIMARY_S,
    SPACE_CONNECT_TIMEOUT_S,
    config_toml,
)
from imagegate.cli.demo import StandIns as DemoStandIns
from imagegate.cli.main import main
from imagegate.cli.narrate import Narrator
from imagegate.testing import Knobs, LocalCA
from PIL import Image

from tests.isolated import clean_env, isolation_prefix

DEMO = [sys.executable, "-m", "imagegate", "demo"]
RESULT_KEYS = {"backend", "elapsed_s", "images", "attempts", "adjustments"}
ATTEMPT_KEYS = {"backend", "outcome", "elapsed_s", "error"}
URL = re.compile(r"^\s+\d\. \w+\s+(https?://127\.0\.0\.1:(\d+))", re.MULTILINE)


@dataclass
class DemoRun:
    proc: subprocess.Popen[str]
    out: Path
    isolated: bool = False

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        stdout, stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, stdout, stderr


def _start(args: list[str], work: Path, *, isolate: bool = False) -> DemoRun:
    out = work / "outputs"
    prefix = list(isolation_prefix() or []) if isolate else []
    proc = subprocess.Popen(
        [*prefix, *DEMO, *args, "--out", str(out)],
        cwd=work, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return DemoRun(proc, out, bool(prefix))


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, DemoRun]]:
    def work(name: str) -> Path:
        return tmp_path_factory.mktemp(name)

    keep = work("keep")
    runs = {
        "failover": _start([], work("failover")),
        "json": _start(["--json"], work("json"), isolate=True),
        "hedge": _start(["a red fox", "--scenario", "hedge", "--json"], work("hedge"), isolate=True),
        "all_down": _start(["--scenario", "all-down", "--json"], work("all_down"), isolate=True),
        "keep": _start(["--keep-running", "--config-out", str(keep / "demo.toml")], keep),
    }
    try:
        yield runs
    finally:
        for run in runs.values():
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.communicate()


def _trails(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _ports(text: str) -> list[int]:
    return [int(port) for _, port in URL.findall(text)]


def _closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_failover_demo_narrates_race_timeout_breaker_and_writes_images(demos: dict[str, DemoRun]) -> None:
    rc, out, err = demos["failover"].finish()
    assert rc == 0, out + err
    assert "local stand-ins" in out and "not real services" in out
    flat = " ".join(out.split())  # the narration wraps its lines
    assert "space is not connected after 500 ms: racing its handshake, novita connects too" in flat
    assert "nothing was sent to space, whose handshake goes on in the background" in flat
    timeout_ms = int(re.search(r"space: handshake timeout after (\d+) ms, in the background", flat)[1])
    assert SPACE_CONNECT_TIMEOUT_S * 1000 - 50 <= timeout_ms < SPACE_CONNECT_TIMEOUT_S * 1000 + 1500
    assert "circuit breaker of space opened for 30 s" in out
    assert "space skipped at once, no connection attempted" in out
    assert out.count("image saved to") == 2
    saved = [image["path"] for doc in _trails(out) for image in doc["images"]]
    assert len(saved) == 2
    for path in saved:
        image = Image.open(path)
        assert image.size == (512, 512)
        assert "Backend: novita" in image.info["parameters"]


def test_second_request_is_served_at_once_because_the_breaker_is_open(demos: dict[str, DemoRun]) -> None:
    _, out, _ = demos["failover"].finish()
    first, second = _trails(out)
    assert [a["outcome"] for a in first["attempts"]] == ["raced", "ok"]
    assert first["elapsed_s"] < SPACE_CONNECT_TIMEOUT_S  # raced after 0.5 s, not timed out
    assert [(a["backend"], a["outcome"]) for a in second["attempts"]] == [("space", "skipped"), ("novita", "ok")]
    assert second["elapsed_s"] < SPACE_CONNECT_TIMEOUT_S  # no handshake wait at all
    assert "with no wait for space: its breaker is open" in out


def test_demo_leaves_no_stand_in_listening(demos: dict[str, DemoRun]) -> None:
    _, out, _ = demos["failover"].finish()
    ports = _ports(out)
    assert len(ports) == 3
    assert all(_closed(port) for port in ports)


def test_json_prints_only_the_trail_that_generate_json_prints(demos: dict[str, DemoRun]) -> None:
    rc, out, err = demos["json"].finish()
    assert rc == 0, err
    docs = [json.loads(line) for line in out.splitlines()]  # every stdout line is JSON
    assert len(docs) == 2
    for doc in docs:
        assert set(doc) == RESULT_KEYS
        assert all(set(a) == ATTEMPT_KEYS for a in doc["attempts"])
        assert (demos["json"].out.parent / doc["images"][0]["path"]).is_file()
    assert "handshake timeout after" in err  # the narration went to stderr


def test_demo_needs_no_network(demos: dict[str, DemoRun]) -> None:
    if not demos["json"].isolated:
        pytest.skip("unshare -n is not allowed here: cannot cut the network off")
    rc, _, err = demos["json"].finish()
    assert rc == 0, err


def test_hedge_scenario_answers_from_the_fast_backend_and_cancels_the_slow_one(
    demos: dict[str, DemoRun],
) -> None:
    rc, out, err = demos["hedge"].finish()
    assert rc == 0, err
    (doc,) = _trails(out)
    assert doc["backend"] == "novita"
    assert {a["backend"]: a["outcome"] for a in doc["attempts"]} == {"novita": "ok", "a1111": "cancelled"}
    assert doc["elapsed_s"] < SLOW_PRIMARY_S
    assert "hedging, the same request goes to novita as well" in err


def test_all_down_exits_3_with_every_backend_in_the_trail(demos: dict[str, DemoRun]) -> None:
    rc, out, err = demos["all_down"].finish()
    assert rc == 3, err
    (doc,) = _trails(out)
    assert doc["error"]["kind"] == "all_backends_failed"
    outcomes = [(a["backend"], a["outcome"]) for a in doc["attempts"]]
    assert outcomes == [  # space lost the race, then was the last left: its handshake was awaited
        ("space", "raced"), ("novita", "server_error"), ("a1111", "connect_failed"), ("space", "handshake_timeout"),
    ]
    assert not list(demos["all_down"].out.rglob("*.png"))


def test_keep_running_serves_generate_until_ctrl_c_then_closes_every_port(
    demos: dict[str, DemoRun],
) -> None:
    run = demos["keep"]
    config = run.out.parent / "demo.toml"
    deadline = time.monotonic() + 30
    while not config.exists() and time.monotonic() < deadline and run.proc.poll() is None:
        time.sleep(0.05)
    generate = subprocess.run(
        [sys.executable, "-m", "imagegate", "generate", "a red fox in the snow", "--config", str(config),
         "--width", "512", "--height", "512", "--out", str(run.out)],
        check=False, cwd=run.out.parent, env=clean_env(**{KEY_ENV: KEY}), capture_output=True, text=True,
        timeout=60,
    )
    assert generate.returncode == 0, generate.stdout + generate.stderr
    assert "backend: novita" in generate.stdout
    ca_bundle = Path(re.search(r'ca_bundle = "([^"]+)"', config.read_text())[1])
    run.proc.send_signal(signal.SIGINT)
    rc, out, err = run.finish()
    assert rc == 0, err
    assert "imagegate generate" in out and "stand-ins stopped" in out
    assert all(_closed(port) for port in _ports(out))
    assert not ca_bundle.exists()  # the demo's temporary directory is gone


def test_a_blank_prompt_exits_2_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    logging_config = structlog.get_config()  # main() points structlog at capsys's stderr
    try:
        assert main(["demo", "   "]) == 2
    finally:
        structlog.configure(**logging_config)
    assert "prompt" in capsys.readouterr().err


def test_every_scenario_config_loads_through_the_real_loader(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path)  # the loader checks that ca_bundle is a PEM file
    fake = DemoStandIns("https://127.0.0.1:1", "https://127.0.0.1:2", "http://127.0.0.1:3",
                        ca.ca_file, Knobs(), Knobs())
    for scenario in SCENARIOS.values():
        path = tmp_path / f"{scenario.name}.toml"
        path.write_text(config_toml(scenario, fake))
        settings = load_settings(path, environ={KEY_ENV: KEY}, dotenv=False)
        assert [b.name for b in settings.backends] == list(scenario.backends)
    assert settings.backend("space").connect_timeout_s == SPACE_CONNECT_TIMEOUT_S


def test_narrator_words_the_router_events_and_restores_logging() -> None:
    before = structlog.get_config()["processors"]
    stream = io.StringIO()
    with Narrator(stream).installed():
        log = structlog.get_logger()
        log.warning("backend_attempt", backend="space", kind="handshake_timeout", elapsed_s=1.5, hedge=False,
                    error="x")
        log.info("breaker_transition", backend="space", kind="closed_to_open", reason="handshake_timeout",
                 open_for_s=30.0)
        log.debug("attempt_started", backend="novita", kind="attempt", permit="normal", number=2)
        log.info("backend_attempt", backend="novita", kind="ok", elapsed_s=0.02, hedge=False, error=None)
        log.info("unrelated_event", backend="novita")
    text = stream.getvalue()
    assert "space: handshake timeout after 1500 ms" in text
    assert "circuit breaker of space opened for 30 s" in text
    assert "failover: the same request goes to novita" in text
    assert "novita answered in 20 ms, after failing over from space" in text
    assert "unrelated_event" not in text
    assert structlog.get_config()["processors"] == before


def test_narrator_words_a_handshake_race() -> None:
    stream = io.StringIO()
    with Narrator(stream).installed():
        log = structlog.get_logger()
        log.debug("attempt_started", backend="space", kind="attempt", permit="normal", number=1)
        log.info("race_started", backend="novita", kind="race", chosen="space", after_s=0.5)
        log.debug("attempt_started", backend="novita", kind="race", permit="normal", number=2)
        log.info("backend_raced", backend="space", kind="raced", winner="novita", handshake_s=0.5,
                 connected=False, winner_handshake_s=0.003)
        log.warning("race_loser_failed", backend="space", kind="handshake_timeout", elapsed_s=1.5, error="x")
        log.info("race_loser_connected", backend="slow", kind="connected", handshake_s=1.2)
    text = stream.getvalue()
    assert "trying space" in text and "trying novita" not in text  # race_started says it instead
    assert "space is not connected after 500 ms: racing its handshake, novita connects too" in text
    assert "novita connected first (3 ms): the request goes to it; nothing was sent to space" in text
    assert "space: handshake timeout after 1500 ms, in the background" in text
    assert "slow: its handshake completed in the background (1200 ms)" in text
