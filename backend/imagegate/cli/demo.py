"""``imagegate demo``: watch failover, circuit breakers and hedging work, with no key and no network.

The demo starts the bundled stand-in providers in-process on free loopback ports -- a Space
whose TLS handshake never completes (a listener that accepts and stays silent), the Novita
emulator over real TLS (a throwaway CA) and the AUTOMATIC1111 emulator -- writes a TOML
config pointing at them, loads it with the real loader and runs real generations through the
real :class:`~imagegate.routing.ImageService`. Only the providers are stand-ins. The narration is
the router's own structlog events (:mod:`imagegate.cli.narrate`); the images go through the
real :class:`~imagegate.store.ImageStore`; the trail is what ``imagegate generate --json`` prints.

Scenarios: ``failover`` (the hung Space costs the first request one handshake timeout, opens
its breaker, and the second request skips it at once), ``hedge`` (a slow primary, a fast
secondary, ``hedge_after_s``) and ``all-down`` (every stand-in broken: the trail, exit 3);
``kinds`` (``tour.py``) sends one request through every kind of backend imagegate knows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from imagegate.backends.registry import load_settings
from imagegate.cli.narrate import Narrator
from imagegate.cli.output import EXIT_FAILED, EXIT_OK, failure_json, result_json
from imagegate.cli.tour import run_tour
from imagegate.errors import AllBackendsFailed
from imagegate.models import ImageRequest, ImageResult
from imagegate.routing import ImageService
from imagegate.store import ImageStore, write_atomic
from imagegate.testing import Knobs, LocalCA, black_hole, serve_app
from imagegate.testing import a1111 as a1111_emulator
from imagegate.testing import novita as novita_emulator

__all__ = ["SCENARIOS", "StandIns", "config_toml", "run_cli", "run_demo", "stand_ins"]

KEY_ENV = "IMAGEGATE_DEMO_NOVITA_KEY"
KEY = "demo-key"  # the Novita stand-in's fixed key: not a secret
SPACE_CONNECT_TIMEOUT_S = 1.5
SLOW_PRIMARY_S = 2.0
HEDGE_AFTER_S = 0.4
SIZE = 512


@dataclass
class StandIns:
    """The running stand-in providers."""

    space_url: str
    novita_url: str
    a1111_url: str
    ca_file: Path
    novita: Knobs
    a1111: Knobs

    def urls(self) -> list[str]:
        return [self.space_url, self.novita_url, self.a1111_url]


@contextlib.asynccontextmanager
async def stand_ins(workdir: Path) -> AsyncIterator[StandIns]:
    """Start the black-hole Space, the Novita emulator (HTTPS) and the A1111 emulator."""
    ca = LocalCA(workdir)
    novita, a1111 = Knobs(), Knobs()
    async with (
        black_hole() as (host, port),
        serve_app(novita_emulator.create_app(knobs=novita, api_key=KEY), tls=ca) as novita_url,
        serve_app(a1111_emulator.create_app(knobs=a1111)) as a1111_url,
    ):
        yield StandIns(f"https://{host}:{port}", novita_url, a1111_url, ca.ca_file, novita, a1111)


@dataclass(frozen=True)
class Scenario:
    """Which stand-ins a scenario uses (in priority order), how they misbehave, what to show."""

    name: str
    title: str
    backends: tuple[str, ...]
    requests: int
    service: dict[str, Any]
    arm: Callable[[StandIns], None]
    moral: str


def _arm_nothing(s: StandIns) -> None:
    return None


def _arm_slow_primary(s: StandIns) -> None:
    s.a1111.latency_s = SLOW_PRIMARY_S


def _arm_all_down(s: StandIns) -> None:
    s.novita.arm("status", status=500, count=1000)
    s.a1111.arm("reset", count=1000)


SCENARIOS: dict[str, Scenario] = {
    "failover": Scenario(
        name="failover",
        title="a hung Space, a handshake race, and a circuit breaker",
        backends=("space", "novita", "a1111"),
        requests=2,
        service={},
        arm=_arm_nothing,
        moral="The hung Space cost the first request half a second (race_after_s), not its"
        f" {SPACE_CONNECT_TIMEOUT_S:g} s connect timeout: novita's handshake raced it and won, and"
        " the request was sent once. The Space's own handshake went on in the background, timed"
        " out and opened its breaker, which kept the next request away from it; a background"
        " probe closes the breaker when the Space answers again.",
    ),
    "hedge": Scenario(
        name="hedge",
        title="a slow primary, and a hedged request",
        backends=("a1111", "novita"),
        requests=1,
        service={"hedge_after_s": HEDGE_AFTER_S, "hedge_budget": 1.0},
        arm=_arm_slow_primary,
        moral=f"The slow primary would have taken {SLOW_PRIMARY_S:g} s. After hedge_after_s ="
        f" {HEDGE_AFTER_S:g} s the same request also went to the next backend; the first"
        " answer won and the other attempt was cancelled.",
    ),
    "all-down": Scenario(
        name="all-down",
        title="every provider broken",
        backends=("space", "novita", "a1111"),
        requests=1,
        service={},
        arm=_arm_all_down,
        moral="Every backend failed, each in its own way; the trail says who, how and how long."
        " imagegate generate exits 3 in this case, and so does this demo.",
    ),
}


def _backend_tables(s: StandIns) -> dict[str, dict[str, Any]]:
    return {
        "space": {
            "kind": "hf_space",
            "src": s.space_url,
            "connect_timeout_s": SPACE_CONNECT_TIMEOUT_S,
            "read_timeout_s": 30,
        },
        "novita": {
            "kind": "novita",
            "base_url": s.novita_url,
            "ca_bundle": str(s.ca_file),
            "api_key_env": KEY_ENV,
            "poll_interval_s": 0.1,
            "connect_timeout_s": 3,
            "read_timeout_s": 20,
        },
        "a1111": {"kind": "a1111", "base_url": s.a1111_url, "connect_timeout_s": 3, "read_timeout_s": 20},
    }


def config_toml(scenario: Scenario, s: StandIns) -> str:
    """The imagegate.toml this scenario runs with (the file ``--keep-running`` leaves)."""
    service = {"deadline_s": 20, "probe_interval_s": 60, "breaker_cooldown_s": 30, **scenario.service}
    lines = ["# written by `imagegate demo`: local stand-ins, not real providers", "[service]"]
    lines += [f"{k} = {_toml(v)}" for k, v in service.items()]
    tables = _backend_tables(s)
    for priority, name in enumerate(scenario.backends):
        lines += ["", "[[backend]]", f"name = {_toml(name)}"]
        lines += [f"{k} = {_toml(v)}" for k, v in tables[name].items()]
        lines.append(f"priority = {priority * 10}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    return json.dumps(value)  # numbers and plain strings: JSON's syntax is TOML's


def _describe(s: StandIns) -> dict[str, str]:
    return {
        "space": f"hf_space at {s.space_url}, connect_timeout_s = {SPACE_CONNECT_TIMEOUT_S:g}",
        "novita": f"novita at {s.novita_url}",
        "a1111": f"a1111 at {s.a1111_url}",
    }


_ROLES = {
    "space": "a Space stand-in whose TLS handshake never completes",
    "novita": "the Novita emulator, over real TLS (a throwaway CA)",
    "a1111": "the AUTOMATIC1111 emulator",
}


def _intro(scenario: Scenario, s: StandIns, out: TextIO) -> None:
    urls = {"space": s.space_url, "novita": s.novita_url, "a1111": s.a1111_url}
    out.write(
        f"imagegate demo: {scenario.title}\n\n"
        "The providers are local stand-ins (emulators on 127.0.0.1), not real services: nothing\n"
        "leaves this machine, no key is needed, and the images are flat shapes, not art.\n"
        "Everything else is the code you would run: the config loader, the router with its\n"
        "circuit breakers, the backends and the image store.\n\n"
    )
    for priority, name in enumerate(scenario.backends, 1):
        role = _ROLES[name]
        if scenario.name == "hedge" and name == "a1111":
            role += f", made slow ({SLOW_PRIMARY_S:g} s per image)"
        elif scenario.name == "all-down" and name != "space":
            role += ", made to fail" + (" with HTTP 500" if name == "novita" else " (connection reset)")
        out.write(f"  {priority}. {name:<7} {urls[name]:<26} {role}\n")
    out.flush()


async def _run_requests(
    scenario: Scenario, settings: Any, prompt: str, out_dir: Path, narrator: Narrator
) -> tuple[int, list[dict[str, Any]]]:
    docs: list[dict[str, Any]] = []
    store = ImageStore(out_dir)
    async with ImageService(settings) as service:
        for number in range(1, scenario.requests + 1):
            request = ImageRequest(prompt=prompt, width=SIZE, height=SIZE, seed=number)
            narrator.new_request(f"Request {number}: {prompt!r} ({SIZE}x{SIZE}, seed {number})")
            try:
                result = await service.generate(request)
            except AllBackendsFailed as exc:
                docs.append(failure_json(exc))
                return EXIT_FAILED, docs
            paths = [store.save(img, request, backend=result.backend) for img in result.images]
            for path, img in zip(paths, result.images, strict=True):
                narrator.say(f"image saved to {path} ({img.width}x{img.height} {img.format.value})", "=>")
            narrator.say(_summary(number, result), "ok")
            docs.append(result_json(result, paths))
            if number < scenario.requests and not await service.settled(timeout=0):
                narrator.say("a handshake that lost the race is still going on in the background:"
                             " waiting for it to end, so that its backend's breaker hears how it went", "..")
                await service.settled(timeout=SPACE_CONNECT_TIMEOUT_S + 1)
    return EXIT_OK, docs


def _summary(number: int, result: ImageResult) -> str:
    """One sentence on how a request was served, from its attempt trail."""
    text = f"request {number} served by {result.backend} in {result.elapsed_s * 1000:.0f} ms"
    failed = [a for a in result.attempts if a.outcome not in ("ok", "skipped", "cancelled", "waited", "raced")]
    waited = [a for a in result.attempts if a.outcome == "waited"]
    skipped = [a.backend for a in result.attempts if a.outcome == "skipped"]
    if failed:
        spent = ", ".join(
            f"{a.elapsed_s * 1000:.0f} ms on {a.backend}'s {a.outcome.replace('_', ' ')}" for a in failed
        )
        text += f", {spent}"
    for a in result.attempts:
        if a.outcome == "raced":
            text += f", {a.backend} lost the handshake race after {a.elapsed_s * 1000:.0f} ms (nothing was sent to it)"
    if waited:
        text += ", " + ", ".join(f"{a.elapsed_s * 1000:.0f} ms waiting for {a.backend} to reopen" for a in waited)
    elif skipped:
        text += f", with no wait for {', '.join(skipped)}: its breaker is open"
    if any(a.hedge and a.outcome == "ok" for a in result.attempts):
        text += ": the hedge answered first"
    return text


def _print_trails(docs: list[dict[str, Any]], scenario: Scenario, out: TextIO) -> None:
    out.write(
        "\nThe attempt trail, exactly as `imagegate generate --json` prints it\n"
        "(one line per request; `imagegate demo --json` prints only these lines):\n"
    )
    out.writelines(json.dumps(doc) + "\n" for doc in docs)
    out.write("\n" + textwrap.fill(scenario.moral, width=90) + "\n")
    out.flush()


def _print_keep_running(config: Path, out: TextIO) -> None:
    out.write(
        f"\nThe stand-ins keep running until Ctrl-C. Their config: {config}\n"
        "Point imagegate at them from another terminal:\n\n"
        f"  export {KEY_ENV}={KEY}   # the Novita stand-in's key (not a secret)\n"
        f'  imagegate generate "a red fox in the snow" --config {config}\n'
        f"  imagegate backends --config {config}\n"
        f"  imagegate diagnose --config {config}\n"
        f"  imagegate serve --config {config} --port 8000\n"
    )
    out.flush()


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run_demo(
    scenario: Scenario,
    prompt: str,
    *,
    out_dir: Path,
    narration: TextIO,
    trail: TextIO | None = None,
    keep_running: bool = False,
    config_out: Path | None = None,
) -> int:
    """Run ``scenario``; narrate on ``narration``; JSON lines only on ``trail`` when given.
    The config it runs with is written to ``config_out`` when given (else a temp file)."""
    workdir = Path(tempfile.mkdtemp(prefix="imagegate-demo-"))
    try:
        async with stand_ins(workdir) as s:
            scenario.arm(s)
            config = config_out or workdir / "imagegate.toml"
            write_atomic(config, config_toml(scenario, s).encode())  # whole, or not there yet
            settings = load_settings(config, environ={KEY_ENV: KEY}, dotenv=False)
            _intro(scenario, s, narration)
            narrator = Narrator(narration, describe=_describe(s))
            with narrator.installed():
                code, docs = await _run_requests(scenario, settings, prompt, out_dir, narrator)
            if trail is not None:
                trail.write("".join(json.dumps(doc) + "\n" for doc in docs))
                trail.flush()
            else:
                _print_trails(docs, scenario, narration)
            if keep_running:
                _print_keep_running(config, narration)
                await _until_interrupted()
                narration.write("stand-ins stopped\n")
            return code
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_cli(args: argparse.Namespace) -> int:
    """``imagegate demo [PROMPT] [--scenario S] [--keep-running] [--out DIR] [--json]``."""
    ImageRequest.parse({"prompt": args.prompt, "width": SIZE, "height": SIZE})  # exit 2 if bad
    narration = sys.stderr if args.json else sys.stdout
    if args.scenario == "kinds":
        return asyncio.run(_tour(args, narration))
    scenario = SCENARIOS[args.scenario]
    return asyncio.run(
        run_demo(
            scenario,
            args.prompt,
            out_dir=args.out,
            narration=narration,
            trail=sys.stdout if args.json else None,
            keep_running=args.keep_running,
            config_out=args.config_out,
        )
    )


async def _tour(args: argparse.Namespace, narration: TextIO) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="imagegate-demo-"))
    try:
        return await run_tour(args.prompt, out_dir=args.out, narration=narration,
                              trail=sys.stdout if args.json else None, workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
