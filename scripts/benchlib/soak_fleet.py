"""``soak_fleet``: three ``imagegate serve`` processes sharing one Redis, for minutes, while
everything that can go wrong does: the backends flap through their fault proxies (the
single-instance soak's schedule), one instance is killed with SIGKILL and started again,
and Redis is killed and started again.

A client spreads synchronous generations and async jobs over the instances as a load
balancer would (an instance that refuses the connection is skipped). Then the checks:

- every synchronous request answered (200, or 502/504 with the trail) within its deadline
  plus a margin; none hung;
- every async job ended (none left ``queued`` or ``running``), each with exactly one
  terminal event in its stream (no duplicate result, whichever instance ran it);
- the instances that were never killed: open fds, threads, RSS (from /proc) and asyncio tasks
  (from /metrics) back near their baseline (after warm-up, and after the load);
- no partial (``.tmp-*``) file in the shared output folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from imagegate.testing import FaultProxy, Knobs, serve_app
from imagegate.testing import a1111 as a1111_emulator
from imagegate.testing import openai_images as openai_emulator
from imagegate.testing.redis import redis_available, redis_server

from benchlib.common import API_KEY, KEY_ENV, free_port, machine
from benchlib.faults import FaultDriver, fault_schedule

__all__ = ["print_soak_fleet", "run_soak_fleet", "soak_fleet_arguments"]

DEADLINE_S = 10.0
MARGIN_S = 5.0  # a request must be answered within its deadline plus this
BODY = {"prompt": "fleet soak", "size": "64x64", "steps": 4}


@dataclass
class Server:
    """One ``imagegate serve`` process (restartable on its port)."""

    port: int
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    killed: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*self.argv, "--port", str(self.port)], stdout=out,
                                         stderr=subprocess.STDOUT, env=self.env)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.killed = True

    def gauges(self, redis_port: int) -> dict[str, float]:
        """fds (and of them: pooled connections to Redis, to anything else over TCP), threads,
        RSS, from /proc."""
        assert self.proc is not None
        pid = self.proc.pid
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        values = {k: v.split()[0] for k, _, v in (line.partition(":") for line in status) if v.split()}
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        sockets = {link[8:-1] for link in links if link.startswith("socket:[")}
        remote = _remote_ports(pid, sockets)
        to_redis = sum(1 for port in remote if port == redis_port)
        return {"fds": len(links), "redis_sockets": to_redis,
                "other_tcp_sockets": sum(1 for port in remote if port not in (0, redis_port)),
                "threads": int(values["Threads"]), "rss_mb": round(int(values["VmRSS"]) / 1024, 1)}


def _remote_ports(pid: int, inodes: set[str]) -> list[int]:
    """The remote port of each of the process's TCP sockets (0: a listening socket)."""
    ports = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                cols = row.split()
                if cols[9] in inodes:
                    ports.append(int(cols[2].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class Tally:
    sync: list[tuple[int, float]] = field(default_factory=list)  # (status, seconds)
    hung: int = 0
    refused: int = 0
    jobs: list[tuple[str, str]] = field(default_factory=list)  # (instance url, job get url)
    odd: dict[int, str] = field(default_factory=dict)  # the first body of each unexpected status


async def _tasks(http: aiohttp.ClientSession, server: Server) -> float:
    """The instance's asyncio tasks, from its /metrics (imagegate_event_loop_tasks)."""
    async with http.get(server.url + "/metrics") as r:
        text = await r.text()
    line = next(ln for ln in text.splitlines() if ln.startswith("imagegate_event_loop_tasks "))
    return float(line.split()[1])


async def _healthy(http: aiohttp.ClientSession, server: Server, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(server.url + "/healthz") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"instance on {server.port} did not come up: {server.log.read_text()[-2000:]}")


async def _client(http: aiohttp.ClientSession, servers: list[Server], tally: Tally, stop: float,
                  rng: random.Random, jobs_share: float) -> None:
    turn = rng.randrange(len(servers))
    while time.monotonic() < stop:
        turn += 1
        server = servers[turn % len(servers)]
        as_job = rng.random() < jobs_share
        headers = {"Prefer": "respond-async"} if as_job else {}
        started = time.monotonic()
        try:
            async with asyncio.timeout(DEADLINE_S + MARGIN_S), http.post(
                server.url + "/v1/images/generations", json=BODY, headers=headers
            ) as r:
                body = await r.read()
                if as_job and r.status == 202:
                    tally.jobs.append((server.url, json.loads(body)["urls"]["get"]))
                elif not as_job:
                    tally.sync.append((r.status, time.monotonic() - started))
                if r.status not in (200, 202, 502, 504):
                    tally.odd.setdefault(r.status, f"{server.port}: {body[:400].decode(errors='replace')}")
        except TimeoutError:
            tally.hung += 1
        except aiohttp.ClientConnectionError:  # an instance that is down: a balancer skips it
            tally.refused += 1
            await asyncio.sleep(0.05)


async def _job_ends(http: aiohttp.ClientSession, servers: list[Server], get: str,
                    wait_s: float) -> dict[str, Any]:
    path = get.split("/v1/", 1)[1]
    end = time.monotonic() + wait_s
    doc: dict[str, Any] = {}
    while time.monotonic() < end:
        for server in servers:
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                async with http.get(f"{server.url}/v1/{path}") as r:
                    if r.status == 200:
                        doc = await r.json()
                        break
        if doc.get("status") in ("succeeded", "failed", "cancelled"):
            break
        await asyncio.sleep(0.5)
    terminal = -1  # not read
    for server in servers:  # the whole stream, from any instance that answers it
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with asyncio.timeout(10), http.get(f"{server.url}/v1/{path}/events") as r:
                if r.status != 200:
                    continue
                terminal = 0
                async for raw in r.content:
                    line = raw.decode().strip()
                    terminal += line in ("event: completed", "event: failed", "event: cancelled")
                break
    return {"status": doc.get("status"), "runs": doc.get("runs"), "terminal_events": terminal}


def _config(tmp: Path, urls: list[str], args: argparse.Namespace) -> Path:
    common = ('connect_timeout_s = 1.0\nread_timeout_s = 5.0\nmax_concurrency = 64\n'
              'queue = false\n')
    text = (
        f'[service]\noutput_dir = "{tmp / "out"}"\ndeadline_s = {DEADLINE_S}\nmax_attempts = 5\n'
        f'order = "round_robin"\nbreaker_cooldown_s = 0.5\nbreaker_max_cooldown_s = 2.0\n'
        f'probe_interval_s = 1.0\nprobe_timeout_s = 0.5\njobs_lease_s = {args.lease}\n'
        f'max_retry_after_s = 0.5\n\n'
        f'[[backend]]\nname = "a1111"\nkind = "a1111"\nbase_url = "{urls[0]}"\n{common}\n'
        f'[[backend]]\nname = "openai"\nkind = "openai"\nbase_url = "{urls[1]}"\n'
        f'model = "emulator-image"\napi_key_env = "{KEY_ENV}"\n{common}'
    )
    path = tmp / "imagegate.toml"
    path.write_text(text)
    return path


def run_soak_fleet(args: argparse.Namespace) -> dict[str, Any]:
    if not redis_available():
        return {"scenario": "soak_fleet", "skipped": "redis-server is not installed"}
    return asyncio.run(_soak(args))


async def _soak(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    knobs = [Knobs(), Knobs()]
    # jobs outlive a Redis restart only if Redis persists them: an append-only file here, as
    # an operator keeping jobs would configure it (without it, a restart forgets every job)
    with redis_server(persist=True) as redis, tempfile.TemporaryDirectory(prefix="imagegate-fleet-") as tmp_dir:
        tmp = Path(tmp_dir)
        async with contextlib.AsyncExitStack() as stack:
            apps = [a1111_emulator.create_app(knobs=knobs[0]),
                    openai_emulator.create_app(knobs=knobs[1], api_key=API_KEY)]
            urls = [await stack.enter_async_context(serve_app(app)) for app in apps]
            proxies = [await stack.enter_async_context(FaultProxy(u)) for u in urls]
            config = _config(tmp, [p.url for p in proxies], args)
            env = {**os.environ, "IMAGEGATE_STATE_URL": redis.url, KEY_ENV: API_KEY,
                   "IMAGEGATE_URL_SECRET": "fleet-soak-secret-0123456789abcdef"}
            argv = [sys.executable, "-m", "imagegate", "serve", "--config", str(config)]
            servers = [Server(free_port(), argv, env, tmp / f"serve-{i}.log") for i in range(args.instances)]
            for server in servers:
                server.start()
            try:
                report = await _load(servers, redis, proxies, knobs, args, rng, tmp)
                if not report["ok"]:  # the instances' logs, for whoever reads the failure
                    kept = Path("outputs/bench/soak_fleet-logs")
                    kept.mkdir(parents=True, exist_ok=True)
                    for server in servers:
                        shutil.copy(server.log, kept / server.log.name)
                    report["logs"] = str(kept)
            finally:
                for server in servers:
                    if server.proc is not None and server.proc.poll() is None:
                        server.proc.terminate()
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            server.proc.wait(timeout=15)
    return report


async def _load(servers: list[Server], redis: Any, proxies: list[FaultProxy], knobs: list[Knobs],
                args: argparse.Namespace, rng: random.Random, tmp: Path) -> dict[str, Any]:
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=None))
    try:
        await asyncio.gather(*(_healthy(http, s) for s in servers))
        await asyncio.sleep(2.0)  # warm-up before the baseline
        return await _phases(http, servers, redis, proxies, knobs, args, rng, tmp)
    finally:
        await http.close()


async def _phases(http: aiohttp.ClientSession, servers: list[Server], redis: Any,
                  proxies: list[FaultProxy], knobs: list[Knobs], args: argparse.Namespace,
                  rng: random.Random, tmp: Path) -> dict[str, Any]:
    victim, steady = servers[-1], servers[:-1]
    baseline = {s.port: {**s.gauges(redis.port), "tasks": await _tasks(http, s)} for s in steady}
    driver = FaultDriver(proxies=proxies, knobs=knobs)
    slots = max(3, int(args.duration / args.slot))
    schedule = fault_schedule(args.seed, len(proxies), slots)
    t0 = time.monotonic()
    stop = t0 + args.duration
    tally = Tally()

    async def drive() -> None:
        for k, row in enumerate(schedule):
            await asyncio.sleep(max(0.0, t0 + k * args.slot - time.monotonic()))
            driver.apply(row)

    async def chaos() -> list[str]:
        said = []
        await asyncio.sleep(args.duration * 0.3)
        victim.kill()
        said.append(f"{time.monotonic() - t0:.1f} s: instance {victim.port} killed (SIGKILL)")
        await asyncio.sleep(args.duration * 0.15)
        victim.start()
        await _healthy(http, victim)
        said.append(f"{time.monotonic() - t0:.1f} s: instance {victim.port} started again")
        await asyncio.sleep(args.duration * 0.1)
        redis.stop()
        said.append(f"{time.monotonic() - t0:.1f} s: redis-server killed")
        await asyncio.sleep(args.duration * 0.05)
        redis.start()
        said.append(f"{time.monotonic() - t0:.1f} s: redis-server started again")
        return said

    driving, chaotic = asyncio.create_task(drive()), asyncio.create_task(chaos())
    await asyncio.gather(*(_client(http, servers, tally, stop, rng, args.jobs_share)
                           for _ in range(args.concurrency)))
    driving.cancel()
    timeline = await chaotic
    driver.apply(tuple("pass" for _ in proxies))  # the backends come back: every job can end
    wait_s = DEADLINE_S + 3 * args.lease + 30
    checking = asyncio.Semaphore(16)  # a client that reads 16 jobs at once, not all of them

    async def ends(get: str) -> dict[str, Any]:
        async with checking:
            return await _job_ends(http, servers, get, wait_s)

    jobs = await asyncio.gather(*(ends(get) for _, get in tally.jobs))
    for job, (_, get) in zip(jobs, tally.jobs, strict=True):
        job["id"] = get.rsplit("/", 1)[1]
    stuck = [j["id"] for j in jobs if j["status"] not in ("succeeded", "failed", "cancelled")]
    queue_state = await _queue_state(redis.url, stuck) if stuck else {}
    await http.close()  # the client's keep-alive connections are server fds too
    await asyncio.sleep(3.0)  # settle: closed connections reaped, pools drained
    async with aiohttp.ClientSession() as scrape:
        after = {s.port: {**s.gauges(redis.port), "tasks": await _tasks(scrape, s)} for s in steady}
    partial = sorted(str(p.relative_to(tmp)) for p in (tmp / "out").rglob(".tmp-*"))
    report = _report(args, tally, jobs, baseline, after, partial, timeline)
    report["queue_state"] = queue_state
    return report


async def _queue_state(url: str, stuck: list[str]) -> dict[str, Any]:
    """Where the stuck jobs are in the fleet's queue (for the report's reader)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        entries = await client.xrange("imagegate:jobs:queue")
        pending = await client.xpending_range("imagegate:jobs:queue", "runners", "-", "+", 1000)
        groups = await client.xinfo_groups("imagegate:jobs:queue")
        by_entry = {e["message_id"]: e for e in pending}
        where = {}
        for entry_id, fields in entries:
            if fields.get("id") in stuck:
                where[fields["id"]] = {"entry": entry_id, "pending": by_entry.get(entry_id)}
        missing = [j for j in stuck if j not in where]
        return {"stuck_in_queue": where, "not_in_queue": missing, "groups": groups}
    finally:
        await client.aclose()


def _report(args: argparse.Namespace, tally: Tally, jobs: list[dict[str, Any]],
            baseline: dict[int, dict[str, float]], after: dict[int, dict[str, float]],
            partial: list[str], timeline: list[str]) -> dict[str, Any]:
    slow = [s for _, s in tally.sync if s > DEADLINE_S + MARGIN_S]
    statuses: dict[str, int] = {}
    for status, _ in tally.sync:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    unended = [j for j in jobs if j["status"] not in ("succeeded", "failed", "cancelled")]
    duplicates = [j for j in jobs if j["terminal_events"] != 1]
    growth = {port: {k: round(after[port][k] - baseline[port][k], 1) for k in baseline[port]}
              for port in baseline}
    # bounded, not leaking: the Redis pools may keep up to 16 + 16 + 8 idle connections
    # Back to baseline except what pools keep by design: idle Redis connections (at most
    # 16 + 16 + 8, state/redis.py and server/jobstore_redis.py) and keep-alive connections to
    # the backends (aiohttp's pool). Any other fd, a thread, or more than a few tasks (the
    # second scrape may meet a lease renewal) is a leak.
    leaks = {p: g for p, g in growth.items()
             if g["fds"] - g["redis_sockets"] - g["other_tcp_sockets"] > 2 or g["redis_sockets"] > 40
             or g["threads"] > 2 or g["rss_mb"] > 40 or g["tasks"] > 4}
    checks = {
        "every_request_answered": {"ok": tally.hung == 0 and not slow and
                                   set(statuses) <= {"200", "502", "504"},
                                   "hung": tally.hung, "past_deadline": len(slow), "statuses": statuses},
        "every_job_ended": {"ok": not unended, "jobs": len(jobs), "unended": unended[:5],
                            "rerun": sum(1 for j in jobs if (j["runs"] or 0) > 1)},
        "one_result_per_job": {"ok": not duplicates, "bad": duplicates[:5]},
        "resources_back": {"ok": not leaks, "growth": growth, "baseline": baseline},
        "no_partial_files": {"ok": not partial, "found": partial[:5]},
    }
    return {
        "scenario": "soak_fleet", "machine": machine(), "duration_s": args.duration,
        "instances": args.instances, "concurrency": args.concurrency, "seed": args.seed,
        "requests": len(tally.sync), "jobs": len(jobs), "refused_while_down": tally.refused,
        "timeline": timeline, "checks": checks, "unexpected_answers": tally.odd,
        "ok": all(c["ok"] for c in checks.values()),
    }


def print_soak_fleet(report: dict[str, Any]) -> None:
    if "skipped" in report:
        print(f"soak_fleet: skipped: {report['skipped']}")
        return
    print(f"soak_fleet: {report['duration_s']:g} s, {report['instances']} instances, "
          f"{report['requests']} requests, {report['jobs']} jobs, "
          f"{report['refused_while_down']} connections refused while an instance was down")
    for line in report["timeline"]:
        print(f"  {line}")
    for status, body in report.get("unexpected_answers", {}).items():
        print(f"  unexpected {status}, first one: {body[:200]}")
    for name, check in report["checks"].items():
        detail = {k: v for k, v in check.items() if k != "ok"}
        print(f"  {'ok  ' if check['ok'] else 'FAIL'} {name}: {json.dumps(detail)[:300]}")
    print(f"verdict: {'all checks green' if report['ok'] else 'FAILED'}")


def soak_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--jobs-share", type=float, default=0.2, dest="jobs_share",
                        help="share of requests sent as async jobs")
    parser.add_argument("--slot", type=float, default=4.0, help="seconds per fault-schedule row")
    parser.add_argument("--lease", type=float, default=2.0, help="[service] jobs_lease_s")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
