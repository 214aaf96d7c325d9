"""Several real ``imagegate serve`` processes sharing one real redis-server: a breaker opened by
one instance is respected by the others at once, ``max_concurrency`` holds across the fleet,
and Redis dying and coming back under load never hangs a request.

Time bounds here are generous (a factor of 2 or more over what is asserted): they tell "paid
a connect timeout" from "did not", not how fast anything is; speed is measured in
``scripts/bench.py fleet``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
from imagegate.testing import Knobs, black_hole, serve_app
from imagegate.testing import a1111 as a1111_emulator
from imagegate.testing.redis import RedisServer, redis_server

from tests.conftest import need_redis, write_config
from tests.instances import Instance, serve_instances
from tests.routing.support import eventually

BODY = {"prompt": "a lighthouse at dusk", "size": "64x64", "response_format": "b64_json"}
CONNECT_S = 3.0
RACE_S = 1.0


def config(tmp_path: Path, *backends: dict[str, Any], **service: Any) -> Path:
    service = {"output_dir": str(tmp_path / "out"), "probe_interval_s": 3600, "deadline_s": 30, **service}
    lines = ["[service]", *(f"{k} = {_toml(v)}" for k, v in service.items())]
    for b in backends:
        lines += ["", "[[backend]]", *(f"{k} = {_toml(v)}" for k, v in b.items())]
    return write_config(tmp_path, "\n".join(lines) + "\n")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, int | float) else f'"{value}"'


async def generate(url: str) -> tuple[int, str | None, float]:
    """(status, the backend that answered, seconds)."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as http, http.post(url + "/v1/images/generations", json=BODY) as r:
        await r.read()
        return r.status, r.headers.get("x-imagegate-backend"), time.monotonic() - started


async def backend_state(instance: Instance, name: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(instance.url + "/v1/backends") as r:
        table = (await r.json())["data"]
    return next(b["state"] for b in table if b["name"] == name)


async def test_one_instance_pays_the_black_hole_once_and_the_others_skip_it_at_once(
    redis_url: str, tmp_path: Path
) -> None:
    async with black_hole() as (host, port), serve_app(a1111_emulator.create_app()) as spare:
        cfg = config(
            tmp_path,
            {"name": "space", "kind": "a1111", "base_url": f"https://{host}:{port}", "priority": 0,
             "connect_timeout_s": CONNECT_S},
            {"name": "spare", "kind": "a1111", "base_url": spare, "priority": 1},
            race_after_s=RACE_S,
        )
        async with serve_instances(cfg, 2, tmp_path, {"IMAGEGATE_STATE_URL": redis_url}) as (a, b):
            status, served, elapsed = await generate(a.url)
            assert (status, served) == (200, "spare")
            assert RACE_S * 0.9 <= elapsed < CONNECT_S  # A raced the handshake (routing/race.py)
            # ... which times out in A's background once, opening the breaker fleet-wide
            await eventually(lambda: _is(backend_state(b, "space"), "open"), timeout=CONNECT_S + 5)
            status, served, elapsed = await generate(b.url)
            assert (status, served) == (200, "spare")
            assert elapsed < RACE_S / 2  # B skipped it without a connection attempt, or a race


async def _is(state: Any, wanted: str) -> bool:
    return await state == wanted


async def test_max_concurrency_holds_across_the_fleet(redis_url: str, tmp_path: Path) -> None:
    gpu_knobs = Knobs(latency_s=1.5)
    async with (
        serve_app(a1111_emulator.create_app(knobs=gpu_knobs)) as gpu,
        serve_app(a1111_emulator.create_app()) as spare,
    ):
        cfg = config(
            tmp_path,
            {"name": "gpu", "kind": "a1111", "base_url": gpu, "priority": 0, "max_concurrency": 1,
             "queue": False},
            {"name": "spare", "kind": "a1111", "base_url": spare, "priority": 1},
        )
        async with serve_instances(cfg, 2, tmp_path, {"IMAGEGATE_STATE_URL": redis_url}) as (a, b):
            first = asyncio.create_task(generate(a.url))
            await eventually(lambda: _requests_seen(gpu_knobs, 1), timeout=5.0)
            status, served, _ = await generate(b.url)  # the one slot is A's
            assert (status, served) == (200, "spare")
            assert (await first)[:2] == (200, "gpu")
            status, served, _ = await generate(b.url)  # free again
            assert (status, served) == (200, "gpu")


async def _requests_seen(knobs: Knobs, count: int) -> bool:
    return sum(1 for r in knobs.requests if r.path.endswith("txt2img")) >= count


async def test_redis_dying_and_coming_back_under_load_hangs_no_request(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    knobs = Knobs(latency_s=0.05)
    async with serve_app(a1111_emulator.create_app(knobs=knobs)) as gpu:
        cfg = config(tmp_path, {"name": "gpu", "kind": "a1111", "base_url": gpu, "max_concurrency": 8},
                     deadline_s=10)
        async with serve_instances(cfg, 2, tmp_path, {"IMAGEGATE_STATE_URL": own_redis.url}) as instances:
            results: list[tuple[int, str | None, float]] = []

            async def client(instance: Instance, stop: float) -> None:
                while time.monotonic() < stop:
                    results.append(await generate(instance.url))

            stop = time.monotonic() + 3.0
            load = asyncio.gather(*(client(i, stop) for i in instances for _ in range(2)))
            await asyncio.sleep(0.5)
            own_redis.stop()
            await asyncio.sleep(1.0)
            own_redis.start()
            await load

            async def recovered() -> bool:  # the instances' next ping finds it back
                return all("state_store_recovered" in i.stderr() for i in instances)

            await eventually(recovered, timeout=15)
        logs = [i.stderr() for i in instances]
    assert results and all(status == 200 for status, _, _ in results)
    assert max(seconds for _, _, seconds in results) < 5.0  # deadline 10 s: nothing waited on Redis
    for log in logs:
        assert log.count("state_store_unavailable") == 1, log  # once per outage, not per request
        assert "state_store_recovered" in log


# -- jobs and files across instances -----------------------------------------------------------

JOB = {"prompt": "a lighthouse at dusk", "size": "64x64", "steps": 40}


async def submit(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.post(
        url + "/v1/images/generations", json=body or JOB, headers={"Prefer": "respond-async"}
    ) as r:
        assert r.status == 202, await r.text()
        return dict(await r.json())


async def record(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return dict(await r.json())


async def sse_events(url: str) -> list[str]:
    names = []
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("event: "):
                names.append(line[7:])
    return names


def on(instance: Instance, url: str) -> str:
    """``url`` (an instance's link) asked of another instance."""
    path = url.split("/v1/", 1)[1]
    return f"{instance.url}/v1/{path}"


async def test_a_job_submitted_on_one_instance_is_read_on_another(redis_url: str, tmp_path: Path) -> None:
    # 40 steps of 0.05 s: longer than the backend's progress poll (0.5 s), so progress is told
    async with serve_app(a1111_emulator.create_app(step_s=0.05)) as gpu:
        cfg = config(tmp_path, {"name": "gpu", "kind": "a1111", "base_url": gpu})
        async with serve_instances(cfg, 2, tmp_path, {"IMAGEGATE_STATE_URL": redis_url}) as (a, b):
            job = await submit(a.url)
            names = await asyncio.wait_for(sse_events(on(b, job["urls"]["events"])), 30)
            assert names[0] in ("queued", "started") and names[-1] == "completed"
            assert "progress" in names
            done = await record(on(b, job["urls"]["get"]))
            assert done["status"] == "succeeded" and done["runs"] == 1
            assert done["result"]["data"][0]["b64_json"]


async def test_a_job_whose_instance_is_killed_still_ends(redis_url: str, tmp_path: Path) -> None:
    async with serve_app(a1111_emulator.create_app(step_s=0.05)) as gpu:  # 40 steps: 2 s
        cfg = config(tmp_path, {"name": "gpu", "kind": "a1111", "base_url": gpu}, jobs_lease_s=1.0)
        async with serve_instances(cfg, 2, tmp_path, {"IMAGEGATE_STATE_URL": redis_url}) as instances:
            ids = {(await record(i.url + "/healthz"))["instance"]: i for i in instances}
            job = await submit(instances[0].url)
            get = job["urls"]["get"]
            await eventually(lambda: _running(on(instances[0], get)), timeout=15)
            runner = ids[(await record(on(instances[0], get)))["runner"]]
            survivor = next(i for i in instances if i is not runner)
            runner.kill()  # SIGKILL mid-run: no drain, no goodbye
            await eventually(lambda: _ended(on(survivor, get)), timeout=30)
            done = await record(on(survivor, get))
            assert done["status"] == "succeeded", done
            assert done["runs"] == 2  # taken again after the killed one's lease lapsed
            assert ids[done["runner"]] is survivor
            names = await asyncio.wait_for(sse_events(on(survivor, job["urls"]["events"])), 10)
            assert names.count("completed") == 1 and names[-1] == "completed"  # one result


async def test_a_job_running_through_a_long_redis_outage_still_ends_once(tmp_path: Path) -> None:
    """Redis goes away longer than the runner waits to write the final event: the run gives
    its queue entry back instead of acknowledging it, and the job runs again once Redis is
    back (found by the fleet soak: such jobs used to stay ``running`` for good)."""
    need_redis()
    with redis_server(persist=True) as store:  # a restart keeps the jobs, as in production
        async with serve_app(a1111_emulator.create_app(step_s=0.02)) as gpu:  # 40 steps: 0.8 s
            cfg = config(tmp_path, {"name": "gpu", "kind": "a1111", "base_url": gpu}, jobs_lease_s=0.3)
            async with serve_instances(cfg, 1, tmp_path, {"IMAGEGATE_STATE_URL": store.url}) as (a,):
                job = await submit(a.url)
                await eventually(lambda: _running(job["urls"]["get"]), timeout=15)
                store.stop()  # the final event's budget is 3 leases (0.9 s): outlived here
                await asyncio.sleep(3.0)
                store.start()
                await eventually(lambda: _ended(job["urls"]["get"]), timeout=30)
                done = await record(job["urls"]["get"])
                names = await asyncio.wait_for(sse_events(job["urls"]["events"]), 10)
    assert done["status"] == "succeeded" and done["runs"] == 2, done
    assert names.count("completed") == 1 and names[-1] == "completed"


async def _running(url: str) -> bool:
    doc = await record(url)
    return doc.get("status") == "running" and doc.get("runner") is not None


async def _ended(url: str) -> bool:
    return (await record(url)).get("status") in ("succeeded", "failed", "cancelled")


async def test_an_image_link_from_one_instance_opens_on_another(redis_url: str, tmp_path: Path) -> None:
    async with serve_app(a1111_emulator.create_app()) as gpu:
        cfg = config(tmp_path, {"name": "gpu", "kind": "a1111", "base_url": gpu})
        env = {"IMAGEGATE_STATE_URL": redis_url, "IMAGEGATE_URL_SECRET": "a-shared-secret-of-32-chars-xx"}
        async with serve_instances(cfg, 2, tmp_path, env) as (a, b), aiohttp.ClientSession() as http:
            body = {"prompt": "a fox", "size": "64x64", "response_format": "url"}
            async with http.post(a.url + "/v1/images/generations", json=body) as r:
                link = (await r.json())["data"][0]["url"]
            async with http.get(on(b, link)) as r:  # the shared output folder and secret
                assert r.status == 200 and (await r.read()).startswith(b"\x89PNG")


async def test_an_async_job_without_its_store_is_a_quick_503_not_a_hang(tmp_path: Path) -> None:
    from tests.server.kit import a1111_settings, gateway

    async with serve_app(a1111_emulator.create_app()) as gpu:
        settings = a1111_settings(gpu, tmp_path, state_url="redis://127.0.0.1:9/0", state_timeout_s=0.2)
        async with gateway(settings) as (url, _), aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.post(url + "/v1/images/generations", json=JOB,
                                 headers={"Prefer": "respond-async"}) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"
                assert (await r.json())["error"]["code"] == "job_store_unavailable"
            assert time.monotonic() - started < 3.0  # bounded by state_timeout_s, not hung
            async with http.post(url + "/v1/images/generations", json={"prompt": "x", "size": "64x64"}) as r:
                assert r.status == 200  # a synchronous generation never waits on the store
