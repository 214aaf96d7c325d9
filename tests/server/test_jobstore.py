"""The in-memory job store behind the store interface: ids monotonic per job, replay then
follow, resume, the final event ends listeners, bounded count, TTL (an injected clock)."""

from __future__ import annotations

import asyncio

import pytest
from imagegate.errors import InvalidRequest
from imagegate.server.jobstore import JobsFull, MemoryJobStore, StoredEvent
from imagegate.server.webhooks import check_webhook_url, sign, verify

from tests.routing.support import FakeClock


def store(max_jobs: int = 10, ttl_s: float = 60.0, clock: FakeClock | None = None) -> MemoryJobStore:
    return MemoryJobStore(max_jobs=max_jobs, ttl_s=ttl_s, clock=clock or FakeClock())


async def collect(s: MemoryJobStore, job_id: str, after: int = 0) -> list[StoredEvent]:
    return [e async for e in s.events(job_id, after)]


async def test_event_ids_count_from_1_per_job_and_the_record_follows() -> None:
    s = store()
    await s.create("a", {"status": "queued"})
    await s.create("b", {"status": "queued"})
    assert await s.append("a", "started", "{}", {"status": "running"}) == 1
    assert await s.append("b", "started", "{}", {"status": "running"}) == 1
    assert await s.append("a", "progress", '{"fraction": 0.5}', {"status": "running", "f": 0.5}) == 2
    assert await s.get("a") == {"status": "running", "f": 0.5}
    assert await s.get("nope") is None


async def test_a_listener_replays_then_follows_and_ends_after_the_final_event() -> None:
    s = store()
    await s.create("a", {})
    await s.append("a", "started", "1", {})
    listener = asyncio.create_task(collect(s, "a"))
    await asyncio.sleep(0)
    await s.append("a", "progress", "2", {})
    await s.append("a", "completed", "3", {}, final=True)
    events = await listener
    assert [(e.id, e.type, e.final) for e in events] == [
        (1, "started", False), (2, "progress", False), (3, "completed", True)]
    assert [e.id for e in await collect(s, "a", after=1)] == [2, 3]
    assert await collect(s, "a", after=3) == []
    with pytest.raises(KeyError):  # nothing after the final event
        await s.append("a", "progress", "4", {})


async def test_a_hundred_listeners_each_get_every_event() -> None:
    s = store()
    await s.create("a", {})
    listeners = [asyncio.create_task(collect(s, "a")) for _ in range(100)]
    await asyncio.sleep(0)
    for i in range(20):
        await s.append("a", "progress", str(i), {})
    await s.append("a", "completed", "", {}, final=True)
    for got in await asyncio.gather(*listeners):
        assert [e.id for e in got] == list(range(1, 22))


async def test_cancel_is_heard_by_the_runner_and_refused_once_ended() -> None:
    s = store()
    await s.create("a", {})
    heard = asyncio.create_task(s.cancel_requested("a"))
    await asyncio.sleep(0)
    assert not heard.done()
    assert await s.request_cancel("a") is True
    await asyncio.wait_for(heard, 1)
    await s.append("a", "cancelled", "", {}, final=True)
    assert await s.request_cancel("a") is False
    assert await s.request_cancel("nope") is False


async def test_full_store_evicts_ended_jobs_oldest_first_and_refuses_when_all_run() -> None:
    s = store(max_jobs=2)
    await s.create("old", {})
    await s.append("old", "completed", "", {}, final=True)
    await s.create("running", {})
    await s.create("new", {})  # "old" ended: it makes room
    assert await s.get("old") is None and await s.get("running") == {}
    with pytest.raises(JobsFull):
        await s.create("one-more", {})


async def test_an_ended_job_expires_ttl_after_it_ended() -> None:
    clock = FakeClock()
    s = store(ttl_s=60, clock=clock)
    await s.create("a", {})
    clock.advance(1000)  # a running job never expires
    assert await s.get("a") == {}
    await s.append("a", "completed", "", {}, final=True)
    clock.advance(59)
    assert await s.get("a") == {}
    clock.advance(1)
    assert await s.get("a") is None and len(s) == 0


def test_a_webhook_url_must_name_an_allowed_host() -> None:
    assert check_webhook_url("https://Hooks.example.com/x", ["hooks.example.com"])
    for url, hosts in [("https://evil.example/x", ["hooks.example.com"]), ("file:///etc/passwd", ["x"]),
                       ("https://hooks.example.com/x", [])]:
        with pytest.raises(InvalidRequest) as caught:
            check_webhook_url(url, hosts)
        assert caught.value.field == "webhook_url"


def test_a_signature_binds_body_time_and_secret() -> None:
    header = sign("s3cret", 1_700_000_000, b"{}")
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert not verify("s3cret", header, b"{}")  # too old for the default tolerance
    assert verify("s3cret", header, b"{}", tolerance_s=10**10)
    assert not verify("s3cret", "garbage", b"{}")
