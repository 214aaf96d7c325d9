"""Async jobs over HTTP: ``Prefer: respond-async``, the record, its event stream (ids,
resume, end), cancel (the emulator sees the interrupt), webhooks (signed, retried, allowed
hosts only), and a synchronous client that goes away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from imagegate.server.webhooks import verify
from imagegate.testing import Knobs, serve_app
from imagegate.testing.a1111_webui import Webui
from structlog.testing import capture_logs

from tests.routing.support import eventually
from tests.server.kit import a1111_settings, gateway

ASYNC = {"Prefer": "respond-async"}
SECRET = "whsec-test-0123456789"




@pytest.fixture
async def server(slow_a1111_url: str, tmp_path: Path) -> AsyncIterator[str]:
    settings = a1111_settings(slow_a1111_url, tmp_path, backend={"progress_interval_s": 0.03})
    async with gateway(settings) as (url, _):
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def submit(http: aiohttp.ClientSession, url: str, **body: Any) -> dict[str, Any]:
    payload = {"prompt": "a lighthouse", "size": "128x128", "steps": 20, **body}
    async with http.post(url + "/v1/images/generations", json=payload, headers=ASYNC) as resp:
        answer = await resp.json()
        assert resp.status == 202, answer
        assert resp.headers["Location"] == answer["urls"]["get"]
        assert resp.headers["Preference-Applied"] == "respond-async"
        return dict(answer)


async def read_events(http: aiohttp.ClientSession, url: str, **headers: str) -> list[dict[str, Any]]:
    """The SSE stream parsed: one dict per event with its id, event and data."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = json.loads(value) if field == "data" else value
    return events


async def test_a_job_streams_progress_ends_with_completed_and_succeeds(
    server: str, http: aiohttp.ClientSession
) -> None:
    job = await submit(http, server)
    assert job["status"] == "queued" and job["id"].startswith("job_")
    assert set(job["urls"]) == {"get", "events", "cancel"}
    events = await read_events(http, job["urls"]["events"])
    names = [e["event"] for e in events]
    assert names[0] == "started" and names[-1] == "completed" and "progress" in names
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    assert all(e["data"]["type"] == e["event"] for e in events)
    async with http.get(job["urls"]["get"]) as resp:
        record = await resp.json()
    assert record["status"] == "succeeded" and record["backend"] == "local"
    assert record["progress"]["fraction"] == 1.0
    assert set(record["result"]) == {"created", "data", "size", "output_format", "adjustments"}  # sync shape
    assert record["result"]["data"][0]["b64_json"] and record["result"]["size"] == "128x128"
    assert events[-1]["data"]["result"] == record["result"]
    async with http.get(server + "/metrics") as resp:  # counted like a synchronous generation
        assert 'imagegate_generations_total{backend="local",outcome="ok"} 1.0' in await resp.text()


async def test_events_resume_after_last_event_id_and_a_finished_stream_is_204(
    server: str, http: aiohttp.ClientSession
) -> None:
    job = await submit(http, server, steps=10)
    everything = await read_events(http, job["urls"]["events"])
    resumed = await read_events(http, job["urls"]["events"], **{"Last-Event-ID": "2"})
    assert resumed == everything[2:]
    last = everything[-1]["id"]
    async with http.get(job["urls"]["events"], headers={"Last-Event-ID": last}) as resp:
        assert resp.status == 204  # an EventSource stops reconnecting
    async with http.get(job["urls"]["events"] + "?after=x") as resp:
        assert resp.status == 400


async def test_a_cancelled_job_is_cancelled_and_the_emulator_saw_the_interrupt(
    server: str, http: aiohttp.ClientSession, webui: Webui
) -> None:
    job = await submit(http, server, steps=150)
    await eventually(lambda: webui.sampling_step > 2)
    running = webui.current_task
    async with http.post(job["urls"]["cancel"]) as resp:
        record = await resp.json()
    assert resp.status == 200 and record["status"] == "cancelled"
    assert "cancel" in record["error"]["message"]
    assert [i.task for i in webui.interrupts] == [running]
    events = await read_events(http, job["urls"]["events"])
    assert events[-1]["event"] == "cancelled"
    async with http.post(job["urls"]["cancel"]) as resp:  # again: still cancelled
        assert resp.status == 200 and (await resp.json())["status"] == "cancelled"


async def test_cancelling_a_finished_job_is_409_and_an_unknown_job_404(
    server: str, http: aiohttp.ClientSession
) -> None:
    job = await submit(http, server, steps=5)
    await read_events(http, job["urls"]["events"])
    async with http.post(job["urls"]["cancel"]) as resp:
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "job_finished"
    for path in ("", "/events"):
        async with http.get(f"{server}/v1/jobs/job_nope{path}") as resp:
            assert resp.status == 404
    async with http.post(f"{server}/v1/jobs/job_nope/cancel") as resp:
        assert resp.status == 404


async def test_a_failed_job_has_the_error_and_the_trail(
    server: str, http: aiohttp.ClientSession, knobs: Knobs
) -> None:
    knobs.arm("status", status=500, count=10)
    job = await submit(http, server)
    events = await read_events(http, job["urls"]["events"])
    assert events[-1]["event"] == "failed"
    async with http.get(job["urls"]["get"]) as resp:
        record = await resp.json()
    assert record["status"] == "failed" and record["error"]["kind"] == "all_backends_failed"
    assert record["attempts"] and record["attempts"][0]["outcome"] == "server_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [({"stream": True}, "stream"), ({"webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url")],
)
async def test_async_refuses_stream_and_webhooks_when_off(
    server: str, http: aiohttp.ClientSession, body: dict[str, Any], param: str
) -> None:
    async with http.post(server + "/v1/images/generations", json={"prompt": "x", **body},
                         headers=ASYNC) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["param"] == param


async def test_too_many_running_jobs_is_503_jobs_full(
    slow_a1111_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = a1111_settings(slow_a1111_url, tmp_path, jobs_max=1)
    async with gateway(settings) as (url, _):
        first = await submit(http, url, steps=100)
        async with http.post(url + "/v1/images/generations", json={"prompt": "x"}, headers=ASYNC) as resp:
            assert resp.status == 503 and (await resp.json())["error"]["code"] == "jobs_full"
        async with http.post(first["urls"]["cancel"]) as resp:
            assert resp.status == 200
        await submit(http, url, steps=5)  # an ended job makes room


# -- webhooks -----------------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]], Knobs]]:
    """A webhook receiver on loopback: records every delivery; ``knobs`` make it fail."""
    got: list[tuple[dict[str, str], bytes]] = []
    knobs = Knobs()

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        armed = knobs.take("status")
        return web.Response(status=int(armed["status"]) if armed else 204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serve_app(app) as url:
        yield url, got, knobs


async def test_a_webhook_is_signed_and_retried_until_delivered(
    slow_a1111_url: str, tmp_path: Path, http: aiohttp.ClientSession,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]], Knobs],
) -> None:
    hook_url, got, hook_knobs = receiver
    hook_knobs.arm("status", status=503)  # the first delivery fails: retried
    settings = a1111_settings(
        slow_a1111_url, tmp_path, webhook_hosts=["127.0.0.1"], webhook_secret_env="HOOK_SECRET",
        webhook_backoff_s=0.05, environ={"HOOK_SECRET": SECRET},
    )
    async with gateway(settings) as (url, _):
        job = await submit(http, url, steps=5, webhook_url=hook_url + "/hook")
        await eventually(lambda: len(got) == 2, timeout=10)
    (h1, b1), (h2, b2) = got
    assert b1 == b2 and h1["Imagegate-Delivery"] == h2["Imagegate-Delivery"]
    assert verify(SECRET, h2["Imagegate-Signature"], b2)
    assert not verify("another-secret", h2["Imagegate-Signature"], b2)
    assert not verify(SECRET, h2["Imagegate-Signature"], b2 + b" ")
    record = json.loads(b2)
    assert record["id"] == job["id"] == h2["Imagegate-Job"] and record["status"] == "succeeded"


async def test_a_webhook_to_a_host_not_allowed_is_refused(
    slow_a1111_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = a1111_settings(slow_a1111_url, tmp_path, webhook_hosts=["hooks.example.com"],
                              webhook_secret_env="HOOK_SECRET", environ={"HOOK_SECRET": SECRET})
    body = {"prompt": "x", "webhook_url": "http://169.254.169.254/latest/meta-data"}
    async with gateway(settings) as (url, _), http.post(
        url + "/v1/images/generations", headers=ASYNC, json=body
    ) as resp:
        error = (await resp.json())["error"]
    assert resp.status == 400 and error["param"] == "webhook_url" and "webhook_hosts" in error["message"]


# -- a synchronous client that goes away -------------------------------------------------------


async def test_a_client_that_disconnects_cancels_the_provider_call(
    server: str, webui: Webui, knobs: Knobs
) -> None:
    body = {"prompt": "x", "size": "128x128", "steps": 150}
    async with aiohttp.ClientSession() as http:
        call = asyncio.create_task(http.post(server + "/v1/images/generations", json=body))
        await eventually(lambda: webui.sampling_step > 2)
        running = webui.current_task
        call.cancel()  # the client gives up: its connection closes
        with pytest.raises(asyncio.CancelledError):
            await call
    await eventually(lambda: [i.task for i in webui.interrupts] == [running], timeout=5)
    await eventually(lambda: webui.current_task is None)
    assert webui.sampling_step < 150  # the paid call did not run on


async def test_a_listener_that_leaves_mid_stream_is_let_go_cleanly(
    server: str, http: aiohttp.ClientSession
) -> None:
    job = await submit(http, server, steps=100)
    with capture_logs() as logs:
        async with http.get(job["urls"]["events"]) as resp:
            await resp.content.readline()  # connected, then gone while the job runs
        await asyncio.sleep(0.3)
        async with http.post(job["urls"]["cancel"]) as resp:
            assert resp.status == 200
    assert not [e for e in logs if e["log_level"] == "error"], logs
