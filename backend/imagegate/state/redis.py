"""Shared state in Redis (or Valkey), through redis-py's asyncio client.

Keys, under ``imagegate:`` (all with expiry, so a dead instance leaves nothing for ever):

- ``breaker:{backend}``: the fleet's verdict on a backend that is not closed (JSON
  :class:`BreakerNews`), expiring when its cool-down ends; channel ``breakers`` carries every
  transition at once, so peers react in milliseconds instead of on a poll;
- ``lease:{key}``: ``SET NX PX``: the half-open trial, probe leadership;
- ``slots:{backend}``: a sorted set of slot tokens scored by expiry (server time, ms); a Lua
  script drops expired tokens and admits one if fewer than the limit are held; this instance
  refreshes its tokens every ``SLOT_TTL_S / 3``, so a killed instance's slots free themselves
  within ``SLOT_TTL_S``; channel ``slots`` wakes waiters;
- ``hedge``: the fleet's hedge tokens; requests earn locally and are added in batches (once a
  second, and before a spend), so a request costs no round trip for the budget;
- channel ``probes``: the probing instance's result.

Every call goes through :class:`~imagegate.state.guard.StoreGuard`: bounded to
``timeout_s``, answered by the in-process fallback while Redis is away, resynchronised when
it is back (our non-closed breakers re-published, the fleet's re-read, our slots re-taken).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from imagegate.logging import get_logger
from imagegate.models import BackendHealth
from imagegate.state.base import BreakerListener, BreakerNews, ProbeListener, SharedState
from imagegate.state.guard import StoreGuard
from imagegate.state.memory import MemoryState

__all__ = ["SLOT_TTL_S", "RedisState"]

log = get_logger(__name__)

SLOT_TTL_S = 10.0
FLUSH_S = 1.0
HEDGE_BURST = 10.0  # as the in-process HedgeBudget
POOL = 16  # connections to Redis at most (the pub/sub listener holds one of them)

# KEYS[1] slots zset; ARGV: limit, ttl_ms, token. Server time, so instances' clocks do not matter.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
"""
# KEYS[1] slots zset; ARGV: ttl_ms, token...: keep our tokens alive (only those still there).
_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""
# KEYS[1] hedge tokens; ARGV: earned, burst, spend (0/1). Returns 1 when a hedge was spent.
_HEDGE = """
local tokens = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[1])
tokens = math.min(tokens, tonumber(ARGV[2]))
local spent = 0
if tonumber(ARGV[3]) == 1 and tokens >= 1 then tokens = tokens - 1; spent = 1 end
redis.call('SET', KEYS[1], tostring(tokens), 'EX', 3600)
return spent
"""
# KEYS[1] lease; ARGV[1] holder: delete only our own lease.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisState(SharedState):
    """The fleet's state in one Redis database (see the module docstring)."""

    distributed = True

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        ca_file: str | None = None,
        timeout_s: float = 0.25,
        instance: str | None = None,
        prefix: str = "imagegate:",
        slot_ttl_s: float = SLOT_TTL_S,
        retry_s: float = 1.0,
    ) -> None:
        self._local = MemoryState(instance)
        self.instance = self._local.instance
        self._p = prefix
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": True,
            "health_check_interval": 0,
        }
        if password:
            options["password"] = password
        if url.startswith("rediss://"):  # the system trust store, plus SSL_CERT_FILE / state_ca_bundle
            options["ssl_cert_reqs"] = "required"
            if ca_file:
                options["ssl_ca_certs"] = ca_file
        # a bounded pool (a call waits at most timeout_s for a free connection): however many
        # requests run at once, this instance holds at most POOL connections to Redis
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL, timeout=timeout_s, **options)
        self._redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._slot_ttl_s = slot_ttl_s
        self._guard = StoreGuard(
            self._redis.ping, timeout_s=timeout_s, retry_s=retry_s, on_up=self._resync,
            reset=self._redis.connection_pool.disconnect,
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._refresh = self._redis.register_script(_REFRESH)
        self._hedge = self._redis.register_script(_HEDGE)
        self._release = self._redis.register_script(_RELEASE)
        self._held: dict[str, set[str]] = {}
        self._freed: dict[str, asyncio.Event] = {}
        self.listening = asyncio.Event()  # subscribed to the peers' news (and snapshot taken)
        self._on_breaker: BreakerListener | None = None
        self._on_probe: ProbeListener | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def shared(self) -> bool:
        return self._guard.up

    @property
    def guard(self) -> StoreGuard:
        return self._guard

    def _key(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, on_breaker: BreakerListener, on_probe: ProbeListener) -> None:
        self._on_breaker, self._on_probe = on_breaker, on_probe
        if await self._guard.connect():
            log.info("state_store_connected", kind="redis", instance=self.instance)
        self._tasks = [
            asyncio.create_task(self._listen(), name="imagegate-state-listen"),
            asyncio.create_task(self._heartbeat(), name="imagegate-state-heartbeat"),
        ]

    def begin_close(self) -> None:
        self._guard.closing = True  # a request's call that meets the shutdown is no outage

    async def aclose(self) -> None:
        self.begin_close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._guard.up:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._guard.timeout_s):
                    for backend, tokens in self._held.items():
                        if tokens:
                            await self._redis.zrem(self._key("slots", backend), *tokens)
        await self._guard.aclose()
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()

    # -- breakers -------------------------------------------------------------------------

    async def publish_breaker(self, news: BreakerNews) -> None:
        await self._local.publish_breaker(news)

        async def send() -> None:
            key, doc = self._key("breaker", news.backend), json.dumps(news.to_json())
            async with self._redis.pipeline(transaction=True) as pipe:
                if news.state == "closed":
                    pipe.delete(key)
                else:
                    pipe.set(key, doc, px=_ttl_ms(news))
                pipe.publish(self._key("breakers"), doc)
                await pipe.execute()

        await self._guard.call(send, _nothing)

    async def breakers(self) -> dict[str, BreakerNews]:
        return await self._guard.call(self._read_breakers, self._local.breakers)

    async def _read_breakers(self) -> dict[str, BreakerNews]:
        keys = [k async for k in self._redis.scan_iter(match=self._key("breaker", "*"), count=200)]
        docs = await self._redis.mget(keys) if keys else []
        found = [BreakerNews.from_json(json.loads(d)) for d in docs if isinstance(d, str)]
        return {n.backend: n for n in found}

    # -- leases ---------------------------------------------------------------------------

    async def lease(self, key: str, ttl_s: float) -> bool:
        async def take() -> bool:
            got = await self._redis.set(self._key("lease", key), self.instance, nx=True,
                                        px=max(1, int(ttl_s * 1000)))
            return bool(got)

        return await self._guard.call(take, lambda: self._local.lease(key, ttl_s))

    async def release(self, key: str) -> None:
        await self._local.release(key)

        async def give() -> None:
            await self._release(keys=[self._key("lease", key)], args=[self.instance])

        await self._guard.call(give, _nothing)

    # -- slots ----------------------------------------------------------------------------

    async def acquire_slot(self, backend: str, limit: int) -> str | None:
        token = f"{self.instance}:{uuid.uuid4().hex[:12]}"

        async def take() -> str | None:
            ok = await self._acquire(keys=[self._key("slots", backend)],
                                     args=[limit, int(self._slot_ttl_s * 1000), token])
            if not ok:
                return None
            self._held.setdefault(backend, set()).add(token)
            return token

        return await self._guard.call(take, lambda: self._local.acquire_slot(backend, limit))

    async def release_slot(self, backend: str, token: str) -> None:
        if token.startswith(self.instance) and token not in self._held.get(backend, set()):
            await self._local.release_slot(backend, token)  # taken while Redis was away
            return
        self._held.get(backend, set()).discard(token)

        async def give() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._key("slots", backend), token)
                pipe.publish(self._key("slots"), json.dumps({"backend": backend, "origin": self.instance}))
                await pipe.execute()

        await self._guard.call(give, _nothing)
        self._wake(backend)

    async def slot_freed(self, backend: str, timeout: float) -> None:
        if not self._guard.up:
            await self._local.slot_freed(backend, timeout)
            return
        event = self._freed.setdefault(backend, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(timeout, 0.0)):
                await event.wait()

    def _wake(self, backend: str) -> None:
        event = self._freed.pop(backend, None)
        if event is not None:
            event.set()

    # -- hedge budget ---------------------------------------------------------------------

    def hedge_earn(self, ratio: float) -> None:
        self._local.hedge_earn(ratio)

    async def hedge_spend(self, burst: float) -> bool:
        if not self._guard.up:
            return await self._local.hedge_spend(burst)
        earned = self._local.take_pending()

        async def spend() -> bool:
            return bool(await self._hedge(keys=[self._key("hedge")], args=[earned, max(burst, 1.0), 1]))

        async def locally() -> bool:
            self._local.hedge_earn(earned)
            return await self._local.hedge_spend(burst)

        return await self._guard.call(spend, locally)

    # -- probes ---------------------------------------------------------------------------

    async def publish_probe(self, health: BackendHealth) -> None:
        async def send() -> None:
            doc = {"origin": self.instance, "health": health.model_dump(mode="json")}
            await self._redis.publish(self._key("probes"), json.dumps(doc))

        await self._guard.call(send, _nothing)

    # -- background -----------------------------------------------------------------------

    async def _listen(self) -> None:
        """Peers' news, as it happens; a broken subscription is re-made once Redis is back."""
        while True:
            if not self._guard.up:
                await asyncio.sleep(self._guard.retry_s / 2)
                continue
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._key("breakers"), self._key("probes"), self._key("slots"))
                # subscribed: what is published from now on arrives as a message; what was
                # decided before (while we were away, or starting) is in the snapshot
                await self._adopt_snapshot()
                self.listening.set()
                while self._guard.up:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(str(message["channel"]), str(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a lost subscription is a store outage
                self._guard.down(exc)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _dispatch(self, channel: str, data: str) -> None:
        try:
            doc = json.loads(data)
        except ValueError:
            return
        if doc.get("origin") == self.instance:
            return
        if channel == self._key("breakers") and self._on_breaker is not None:
            self._on_breaker(BreakerNews.from_json(doc))
        elif channel == self._key("probes") and self._on_probe is not None:
            self._on_probe(BackendHealth.model_validate(doc["health"]))
        elif channel == self._key("slots"):
            self._wake(str(doc.get("backend")))

    async def _heartbeat(self) -> None:
        """Keep our slots alive; add the hedge earnings of the last interval."""
        refresh_every = self._slot_ttl_s / 3
        last_refresh = 0.0
        while True:
            await asyncio.sleep(min(FLUSH_S, refresh_every))
            if not self._guard.up:
                continue
            earned = self._local.take_pending()
            if earned:
                await self._guard.call(self._flusher(earned), _nothing)
            if time.monotonic() - last_refresh >= refresh_every:
                last_refresh = time.monotonic()
                for backend, tokens in list(self._held.items()):
                    if tokens:
                        await self._guard.call(self._refresher(backend, sorted(tokens)), _nothing)

    def _flusher(self, earned: float) -> Callable[[], Awaitable[None]]:
        async def flush() -> None:
            await self._hedge(keys=[self._key("hedge")], args=[earned, HEDGE_BURST, 0])

        return flush

    def _refresher(self, backend: str, tokens: list[str]) -> Callable[[], Awaitable[None]]:
        async def refresh() -> None:
            await self._refresh(keys=[self._key("slots", backend)], args=[int(self._slot_ttl_s * 1000), *tokens])

        return refresh

    async def _resync(self) -> None:
        """Redis is back: publish what was decided here meanwhile (the listener re-reads what the
        fleet decided when it subscribes again)."""
        for news in (await self._local.breakers()).values():
            if news.origin == self.instance:
                doc = json.dumps(news.to_json())
                await self._redis.set(self._key("breaker", news.backend), doc, px=_ttl_ms(news))
                await self._redis.publish(self._key("breakers"), doc)
        # the fleet's verdicts are read by the listener when it subscribes again

    async def _adopt_snapshot(self) -> None:
        if self._on_breaker is not None:
            for news in (await self._read_breakers()).values():
                if news.origin != self.instance:
                    self._on_breaker(news)


def _ttl_ms(news: BreakerNews) -> int:
    """How long the fleet remembers a non-closed breaker: until its cool-down ends (a
    disabled one: an hour, renewed by every instance that sees the failure again)."""
    if news.until is None:
        return 3_600_000
    return max(1, int((news.until - time.time()) * 1000))


async def _nothing() -> None:
    return None
