"""RedisState against a real redis-server on loopback: breaker news between instances, leases,
fleet-wide slots (and a dead instance's slots freed by expiry), the shared hedge budget, and
Redis going away and coming back (never a hang, one log line each way, a resync)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from imagegate.models import BackendHealth
from imagegate.state import BreakerNews, RedisState
from imagegate.state.guard import StoreGuard
from imagegate.testing.redis import RedisServer
from structlog.testing import capture_logs

from tests.routing.support import eventually

Heard = list[BreakerNews]


async def started(url: str, heard: Heard | None = None, probes: list[BackendHealth] | None = None,
                  **options: float) -> RedisState:
    state = RedisState(url, retry_s=0.05, **options)  # type: ignore[arg-type]
    await state.start((heard if heard is not None else []).append,
                      (probes if probes is not None else []).append)
    return state


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[RedisState, RedisState, Heard, Heard]]:
    heard_a: Heard = []
    heard_b: Heard = []
    a = await started(redis_url, heard_a)
    b = await started(redis_url, heard_b)
    await listening(a, b)
    try:
        yield a, b, heard_a, heard_b
    finally:
        await a.aclose()
        await b.aclose()


async def listening(*states: RedisState) -> None:
    """Until each of ``states`` is subscribed to its peers' news."""
    await asyncio.wait_for(asyncio.gather(*(s.listening.wait() for s in states)), 10)


def news(backend: str, state: str, origin: str, *, until_in: float | None = 30.0) -> BreakerNews:
    until = None if until_in is None else time.time() + until_in
    return BreakerNews(backend, state, until, "test", origin)  # type: ignore[arg-type]


async def test_a_transition_reaches_the_other_instance_and_not_its_own(pair: tuple) -> None:
    a, _, heard_a, heard_b = pair
    await a.publish_breaker(news("space", "open", a.instance))
    await eventually(lambda: len(heard_b) == 1)
    assert heard_b[0].backend == "space" and heard_b[0].state == "open"
    assert heard_b[0].origin == a.instance
    await asyncio.sleep(0.05)
    assert heard_a == []  # nobody hears their own news


async def test_the_fleet_remembers_open_breakers_until_their_cooldown_ends(pair: tuple) -> None:
    a, b, _, _ = pair
    await a.publish_breaker(news("space", "open", a.instance, until_in=1.0))
    await a.publish_breaker(news("novita", "disabled", a.instance, until_in=None))
    assert set(await b.breakers()) == {"space", "novita"}
    await asyncio.sleep(1.2)
    assert set(await b.breakers()) == {"novita"}
    await b.publish_breaker(news("novita", "closed", b.instance, until_in=None))
    assert await a.breakers() == {}


async def test_a_lease_has_one_holder_and_only_the_holder_releases_it(pair: tuple) -> None:
    a, b, _, _ = pair
    assert await a.lease("trial:space", 5.0)
    assert not await b.lease("trial:space", 5.0)
    await b.release("trial:space")  # not b's to give back
    assert not await b.lease("trial:space", 5.0)
    await a.release("trial:space")
    assert await b.lease("trial:space", 5.0)


async def test_slots_are_counted_across_instances_and_a_release_wakes_a_waiter(pair: tuple) -> None:
    a, b, _, _ = pair
    token = await a.acquire_slot("gpu", 1)
    assert token is not None
    assert await b.acquire_slot("gpu", 1) is None
    waiter = asyncio.create_task(b.slot_freed("gpu", 5.0))
    await asyncio.sleep(0.05)
    await a.release_slot("gpu", token)
    await asyncio.wait_for(waiter, 4.0)  # woken by the message, not by its own 5 s timeout
    assert await b.acquire_slot("gpu", 1) is not None


async def test_a_dead_instance_s_slots_free_themselves_after_the_lease(redis_url: str) -> None:
    # a slot lives 1.5 s unless refreshed; a's heartbeat refreshes it every 0.5 s
    a = await started(redis_url, slot_ttl_s=1.5)
    b = await started(redis_url, slot_ttl_s=1.5)
    try:
        assert await a.acquire_slot("gpu", 1) is not None
        await asyncio.sleep(2.0)  # a's heartbeat keeps it alive
        assert await b.acquire_slot("gpu", 1) is None
        for task in a._tasks:  # a dies: no heartbeat, no goodbye
            task.cancel()
        await asyncio.sleep(2.0)
        assert await b.acquire_slot("gpu", 1) is not None
    finally:
        await b.aclose()
        a._held.clear()
        await a.aclose()


async def test_hedges_earned_on_one_instance_are_spent_on_another(pair: tuple) -> None:
    a, b, _, _ = pair
    assert not await b.hedge_spend(10)
    for _ in range(20):
        a.hedge_earn(0.1)  # 2 hedges' worth, no round trip per request
    assert await a.hedge_spend(10)  # flushes a's earnings, spends one
    assert await b.hedge_spend(10)  # the second, on the other instance
    assert not await b.hedge_spend(10)


async def test_probe_results_reach_the_other_instance(redis_url: str) -> None:
    probes: list[BackendHealth] = []
    a = await started(redis_url)
    b = await started(redis_url, probes=probes)
    try:
        await listening(b)
        await a.publish_probe(BackendHealth(name="space", kind="hf_space", ok=False, last_error_kind="handshake_timeout"))
        await eventually(lambda: len(probes) == 1)
        assert probes[0].last_error_kind == "handshake_timeout"
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_going_away_never_hangs_a_call_and_it_resyncs_when_back(own_redis: RedisServer) -> None:
    heard_b: Heard = []
    a = await started(own_redis.url, timeout_s=0.2)
    b = await started(own_redis.url, heard_b, timeout_s=0.2)
    try:
        with capture_logs() as logs:
            own_redis.stop()
            begun = time.monotonic()
            await a.publish_breaker(news("space", "open", a.instance))  # decided while Redis is away
            assert await a.lease("trial:x", 1.0)  # answered locally
            assert await a.acquire_slot("gpu", 4) is not None
            assert time.monotonic() - begun < 2.0  # bounded: ~0.2 s for the first failure, then at once
            assert not a.shared
            await a.publish_breaker(news("other", "open", a.instance))
            unavailable = [e for e in logs if e["event"] == "state_store_unavailable"]
            assert len(unavailable) == 1  # logged once per outage, not per call
            own_redis.start()
            await eventually(lambda: a.shared and b.shared, timeout=5.0)
            await eventually(lambda: {n.backend for n in heard_b} >= {"space", "other"}, timeout=5.0)
        assert any(e["event"] == "state_store_recovered" for e in logs)
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_closed_store_answers_locally_and_opens_no_connection_again(redis_url: str) -> None:
    a = await started(redis_url)
    await a.aclose()
    with capture_logs() as logs:
        assert await a.lease("trial:after-close", 1.0)  # answered locally
    assert logs == []
    async with aioredis.from_url(redis_url) as peer:
        assert await peer.keys("*after-close*") == []  # nothing reached Redis


async def test_a_call_that_meets_the_shutdown_is_answered_locally_and_is_no_outage() -> None:
    """Found by the fleet test: a request's last call, cut by the store's own close, was
    logged as an outage (state_store_unavailable) at every shutdown under load."""

    async def ping() -> None:
        return None

    async def cut() -> str:
        raise ConnectionError("Connection closed by server.")

    async def local() -> str:
        return "local"

    guard = StoreGuard(ping, timeout_s=0.2, retry_s=60)
    assert await guard.connect()
    guard.closing = True  # the owner's aclose() has begun
    with capture_logs() as logs:
        assert await guard.call(cut, local) == "local"
    assert logs == [] and guard.downs == 0 and not guard.up
    await guard.aclose()


async def test_an_unreachable_store_at_start_is_not_fatal() -> None:
    state = RedisState("redis://127.0.0.1:9/0", timeout_s=0.1, retry_s=60)
    begun = time.monotonic()
    with capture_logs():
        await state.start(lambda n: None, lambda h: None)
        assert not state.shared
        assert await state.lease("k", 1.0)
    assert time.monotonic() - begun < 2.0
    await state.aclose()
