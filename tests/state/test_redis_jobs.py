"""RedisJobStore against a real redis-server: the JobStore contract shared by two instances
(replay and follow, resume after an id, one result per job, a cancel heard elsewhere,
jobs_max across the fleet, expiry), and the queue (any instance takes a job; a job whose
instance stops renewing its lease is taken by another)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from imagegate.server.jobstore import JobsFull, StoredEvent
from imagegate.server.jobstore_redis import RedisJobStore


def store(url: str, instance: str, **options: float) -> RedisJobStore:
    return RedisJobStore(url, instance=instance, max_jobs=int(options.pop("max_jobs", 10)),
                         ttl_s=options.pop("ttl_s", 60.0), lease_s=options.pop("lease_s", 10.0))


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[RedisJobStore, RedisJobStore]]:
    a, b = store(redis_url, "aaaaaaaaaaaa"), store(redis_url, "bbbbbbbbbbbb")
    await a.start()
    await b.start()
    await asyncio.wait_for(asyncio.gather(a.listening.wait(), b.listening.wait()), 10)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def collect(events: AsyncIterator[StoredEvent]) -> list[tuple[int, str, bool]]:
    return [(e.id, e.type, e.final) async for e in events]


async def test_a_job_written_on_one_instance_is_read_and_followed_on_another(pair: tuple) -> None:
    a, b = pair
    await a.create("job_1", {"id": "job_1", "status": "queued"})
    assert await b.get("job_1") == {"id": "job_1", "status": "queued"}
    assert await a.append("job_1", "started", '{"type": "started"}', {"status": "running"}) == 1
    follower = asyncio.create_task(collect(b.events("job_1")))
    await asyncio.sleep(0.05)
    assert await a.append("job_1", "progress", "{}", {"status": "running"}) == 2
    assert await a.append("job_1", "completed", "{}", {"status": "succeeded"}, final=True) == 3
    assert await asyncio.wait_for(follower, 5) == [(1, "started", False), (2, "progress", False),
                                                   (3, "completed", True)]
    assert await collect(b.events("job_1", after=2)) == [(3, "completed", True)]  # Last-Event-ID
    assert (await b.get("job_1"))["status"] == "succeeded"


async def test_nothing_is_written_after_the_final_event(pair: tuple) -> None:
    a, b = pair
    await a.create("job_2", {"status": "queued"})
    await a.append("job_2", "completed", "{}", {"status": "succeeded"}, final=True)
    with pytest.raises(KeyError):  # a second run of the job: its result never counts
        await b.append("job_2", "completed", "{}", {"status": "succeeded"}, final=True)
    with pytest.raises(KeyError):
        await b.append("job_unknown", "started", "{}", {})
    assert [e.id async for e in a.events("job_2")] == [1]


async def test_a_cancel_asked_on_one_instance_is_heard_on_the_other(pair: tuple) -> None:
    a, b = pair
    await a.create("job_3", {"status": "running"})
    waiting = asyncio.create_task(a.cancel_requested("job_3"))
    await asyncio.sleep(0.05)
    assert await b.request_cancel("job_3")
    await asyncio.wait_for(waiting, 1.5)  # the message, not the 2 s re-check
    await a.append("job_3", "cancelled", "{}", {"status": "cancelled"}, final=True)
    assert not await b.request_cancel("job_3")  # ended: nothing to cancel
    assert not await b.request_cancel("job_none")


async def test_jobs_max_counts_the_fleet_and_an_ended_job_expires(redis_url: str) -> None:
    a, b = store(redis_url, "a" * 12, max_jobs=2, ttl_s=0.2), store(redis_url, "b" * 12, max_jobs=2, ttl_s=0.2)
    try:
        await a.create("j1", {})
        await b.create("j2", {})
        with pytest.raises(JobsFull):
            await a.create("j3", {})
        await a.append("j1", "completed", "{}", {"status": "succeeded"}, final=True)
        await b.create("j3", {})  # j1 ended: room again
        await asyncio.sleep(0.3)
        assert await b.get("j1") is None  # kept jobs_ttl_s after it ended
    finally:
        await a.aclose()
        await b.aclose()


async def test_any_instance_takes_a_queued_job_and_a_dead_one_s_job_is_taken_again(redis_url: str) -> None:
    a, b = store(redis_url, "a" * 12, lease_s=1.5), store(redis_url, "b" * 12, lease_s=1.5)
    try:
        await a.enqueue("job_q", '{"spec": 1}')
        (first,) = await b.take(5)
        assert (first.job_id, first.spec) == ("job_q", '{"spec": 1}')
        assert await a.take(5) == []  # taken: nobody else gets it while b renews its lease
        await b.keep_alive()
        await asyncio.sleep(0.3)
        await b.keep_alive()
        await asyncio.sleep(0.3)
        assert await a.take(5) == []
        await asyncio.sleep(1.8)  # b stops renewing: dead as far as the fleet can tell
        (again,) = await a.take(5)
        assert again.job_id == "job_q"
        await a.ack(again)
        await asyncio.sleep(1.8)
        assert await b.take(5) == []  # acknowledged: gone for good
    finally:
        await a.aclose()
        await b.aclose()


async def test_an_instance_never_takes_again_a_job_it_is_still_running(redis_url: str) -> None:
    """Its own keep-alive came late (a starved loop, Redis away a moment), so the lease
    lapsed: the job is still running here, and a second run of it would be counted as a
    death (found in CI: a third run failed a job whose second run was fine)."""
    a = store(redis_url, "a" * 12, lease_s=0.3)
    try:
        await a.enqueue("job_mine", '{"spec": 1}')
        (first,) = await a.take(5)
        await asyncio.sleep(0.6)  # no keep_alive: the lease lapsed
        assert await a.take(5) == []  # still ours: not handed out a second time
        await a.release(first)  # given up (the run could not finish): now it may run again
        await asyncio.sleep(0.6)
        (again,) = await a.take(5)
        assert again.job_id == "job_mine"
        await a.ack(again)
    finally:
        await a.aclose()
