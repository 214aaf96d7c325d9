"""Async jobs in Redis: every instance sees every job, and a job outlives its instance.

The :class:`~imagegate.server.jobstore.JobStore` interface, plus a queue:

- ``{p}{id}:rec`` the record (JSON), ``{p}{id}:ev`` its events as a Redis Stream whose entry
  ids are ``0-1``, ``0-2``, ... (the job's own event ids, which ``Last-Event-ID`` resumes
  from); a Lua script appends an event and its record at once, and refuses anything after
  the final event, so a job that runs twice still has one result; both keys expire
  ``ttl_s`` after the job ended. ``{p}running`` counts running jobs fleet-wide (``jobs_max``).
- ``{p}queue``: submitted jobs, a Redis Stream read by the consumer group ``runners``: any
  instance takes a job; the taker keeps it alive by re-claiming its entries every
  ``lease_s / 3`` (``XCLAIM ... JUSTID`` resets their idle time); an entry idle longer than
  ``lease_s`` belongs to an instance that died, and another takes it (``XAUTOCLAIM``): the
  job runs again (at least once), and its run count says so.
- a cancel is a flag plus a message on ``{p}cancel``: the instance running the job hears it
  at once (and re-checks the flag every few seconds, in case a message was missed).

Every call is bounded (``timeout_s``; the blocking reads by their own block time); a store
that does not answer raises :class:`JobStoreUnavailable`, which the HTTP layer answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from imagegate.logging import get_logger
from imagegate.server.jobstore import JobsFull, JobStoreUnavailable, StoredEvent

__all__ = ["Delivery", "RedisJobStore"]

log = get_logger(__name__)
T = TypeVar("T")

BLOCK_MS = 1000  # one blocking read's wait: the queue consumer wakes this often at most
FOLLOW_MS = 200  # the followers' read: a stream a listener joins is read within this
GROUP = "runners"

# KEYS: rec, ev, running; ARGV: job_id, type, data, record, final (0/1), ttl_ms
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then
  local f = last[1][2]
  for i = 1, #f, 2 do if f[i] == 'f' and f[i + 1] == '1' then return -2 end end
end
local n = redis.call('XLEN', KEYS[2]) + 1
redis.call('XADD', KEYS[2], '0-' .. n, 't', ARGV[2], 'd', ARGV[3], 'f', ARGV[5])
redis.call('SET', KEYS[1], ARGV[4])
if ARGV[5] == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return n
"""
# KEYS: rec, running; ARGV: job_id, record, max_jobs, now
_CREATE = """
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
"""
# KEYS: rec, ev, cancel; ARGV: job_id, channel
_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then
  local f = last[1][2]
  for i = 1, #f, 2 do if f[i] == 'f' and f[i + 1] == '1' then return 0 end end
end
redis.call('SET', KEYS[3], '1', 'EX', 86400)
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Delivery:
    """A queued job handed to this instance."""

    entry: str  # the queue entry (acknowledged when the job ended)
    job_id: str
    spec: str  # what to run (JSON: the generation and the answer's base URL)


class RedisJobStore:
    """Jobs shared through one Redis database (see the module docstring)."""

    shared = True

    def __init__(
        self,
        url: str,
        *,
        instance: str,
        max_jobs: int,
        ttl_s: float,
        lease_s: float = 10.0,
        password: str | None = None,
        ca_file: str | None = None,
        timeout_s: float = 0.25,
        prefix: str = "imagegate:jobs:",
    ) -> None:
        self.instance, self._max, self._ttl_ms = instance, max_jobs, int(ttl_s * 1000)
        self.lease_s, self._timeout = lease_s, timeout_s
        self._p = prefix
        common: dict[str, Any] = {"decode_responses": True, "retry": Retry(NoBackoff(), 0)}
        if password:
            common["password"] = password
        if url.startswith("rediss://"):
            common["ssl_cert_reqs"] = "required"
            if ca_file:
                common["ssl_ca_certs"] = ca_file
        self._r = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=16, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, **common,
        ))
        # blocking reads (one for every followed job stream, the queue consumer, the cancel
        # listener) wait BLOCK_MS on the server: their socket waits a little longer; a small
        # pool, whatever the number of listeners
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=8, timeout=BLOCK_MS / 1000 + 4 * timeout_s,
            socket_timeout=BLOCK_MS / 1000 + 2 * timeout_s, socket_connect_timeout=timeout_s,
            **common,
        )
        self._block = aioredis.Redis(connection_pool=pool)
        self._hub = _Follow(self._block, self._call)
        self._append = self._r.register_script(_APPEND)
        self._create = self._r.register_script(_CREATE)
        self._cancel = self._r.register_script(_CANCEL)
        self._cancels: dict[str, asyncio.Event] = {}
        self.listening = asyncio.Event()  # subscribed to the fleet's cancels
        self._held: set[str] = set()
        self._group_ready = False
        self._listener: asyncio.Task[None] | None = None

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    async def _call(self, make: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        try:
            async with asyncio.timeout(timeout or self._timeout * 2):
                return await make()
        except (TimeoutError, RedisError, OSError) as exc:
            raise JobStoreUnavailable(f"the shared job store did not answer: {type(exc).__name__}") from exc

    # -- the JobStore interface -----------------------------------------------------------

    async def create(self, job_id: str, record: dict[str, Any]) -> None:
        now = await self._call(self._r.time)
        ok = await self._call(lambda: self._create(
            keys=[self._k(job_id, "rec"), self._k("running")],
            args=[job_id, json.dumps(record), self._max, now[0]],
        ))
        if not ok:
            raise JobsFull(f"{self._max} jobs are running in the fleet (the [service] jobs_max)")

    async def get(self, job_id: str) -> dict[str, Any] | None:
        doc = await self._call(lambda: self._r.get(self._k(job_id, "rec")))
        return None if doc is None else dict(json.loads(doc))

    async def append(
        self, job_id: str, type: str, data: str, record: dict[str, Any], *, final: bool = False
    ) -> int:
        n = await self._call(lambda: self._append(
            keys=[self._k(job_id, "rec"), self._k(job_id, "ev"), self._k("running")],
            args=[job_id, type, data, json.dumps(record), "1" if final else "0", self._ttl_ms],
        ))
        if int(n) < 0:  # gone, or ended already: a second run's result never counts
            raise KeyError(job_id)
        return int(n)

    async def events(self, job_id: str, after: int = 0) -> AsyncIterator[StoredEvent]:
        key = self._k(job_id, "ev")
        if not await self._call(lambda: self._r.exists(self._k(job_id, "rec"))):
            return
        queue = self._hub.follow(key, after)  # first: nothing appended from now on is missed
        last = max(0, after)
        try:
            replay: Any = await self._call(lambda: self._r.xrange(key, min=f"({_id(last)}", max="+"))
            pending = list(replay or [])
            while True:
                for entry_id, fields in pending:
                    n = _n(entry_id)
                    if n <= last:
                        continue  # the hub and the replay both had it
                    last = n
                    event = StoredEvent(n, fields["t"], fields["d"], fields.get("f") == "1")
                    yield event
                    if event.final:
                        return
                try:
                    async with asyncio.timeout(2.0):
                        pending = [await queue.get()]
                except TimeoutError:  # quiet: is the job still there?
                    pending = []
                    if not await self._call(lambda: self._r.exists(self._k(job_id, "rec"))):
                        return
                while not queue.empty():
                    pending.append(queue.get_nowait())
        finally:
            self._hub.drop(key, queue)

    async def request_cancel(self, job_id: str) -> bool:
        done = await self._call(lambda: self._cancel(
            keys=[self._k(job_id, "rec"), self._k(job_id, "ev"), self._k(job_id, "cancel")],
            args=[job_id, self._k("cancel")],
        ))
        return bool(done)

    async def cancel_requested(self, job_id: str) -> None:
        event = self._cancels.setdefault(job_id, asyncio.Event())
        try:
            while not event.is_set():
                with contextlib.suppress(JobStoreUnavailable):
                    if await self._call(lambda: self._r.exists(self._k(job_id, "cancel"))):
                        return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):  # a missed message is found by the next look
                        await event.wait()
        finally:
            self._cancels.pop(job_id, None)

    async def aclose(self) -> None:
        await self._hub.aclose()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._r.aclose()
        await self._r.connection_pool.disconnect()
        await self._block.aclose()
        await self._block.connection_pool.disconnect()

    # -- the queue ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for cancels (the runner calls this once)."""
        self._listener = asyncio.create_task(self._listen_cancels(), name="imagegate-jobs-cancels")

    async def enqueue(self, job_id: str, spec: str) -> None:
        await self._call(lambda: self._r.xadd(self._k("queue"), {"id": job_id, "spec": spec}))

    async def take(self, count: int) -> list[Delivery]:
        """Up to ``count`` jobs for this instance: new ones, else ones whose instance died
        (idle past the lease). Waits at most BLOCK_MS for new ones."""
        await self._ensure_group()
        stale: Any = await self._call(lambda: self._r.xautoclaim(
            self._k("queue"), GROUP, self.instance, min_idle_time=int(self.lease_s * 1000),
            start_id="0-0", count=count,
        ))
        # an entry this instance still holds is running here: its lease lapsed only because our
        # own keep-alive was late (a starved loop, Redis away a moment), and this claim renewed
        # it; handing it out again would start a second run of a job that is not dead
        claimed = [self._delivery(e) for e in (stale[1] if stale else []) if e and e[1]]
        found = [d for d in claimed if d.entry not in self._held]
        if found:
            log.warning("jobs_reclaimed", count=len(found), jobs=[d.job_id for d in found])
        else:
            reply: Any = await self._call(
                lambda: self._block.xreadgroup(GROUP, self.instance, {self._k("queue"): ">"},
                                               count=count, block=BLOCK_MS),
                timeout=BLOCK_MS / 1000 + 4 * self._timeout,
            )
            found = [self._delivery(e) for _s, entries in (reply or []) for e in entries]
        self._held |= {d.entry for d in found}
        return found

    async def keep_alive(self) -> None:
        """Reset the idle time of the entries this instance holds (its lease on them)."""
        if self._held:
            held: list[Any] = sorted(self._held)
            await self._call(lambda: self._r.xclaim(
                self._k("queue"), GROUP, self.instance, min_idle_time=0, message_ids=held,
                justid=True,
            ))

    async def ack(self, delivery: Delivery) -> None:
        self._held.discard(delivery.entry)
        await self._call(lambda: self._r.xack(self._k("queue"), GROUP, delivery.entry))
        await self._call(lambda: self._r.xdel(self._k("queue"), delivery.entry))

    async def release(self, delivery: Delivery) -> None:
        """Stop renewing the lease on an entry this instance could not finish: it stays
        pending, and ``take`` hands it to an instance (this one too) once the lease lapses."""
        self._held.discard(delivery.entry)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._call(lambda: self._r.xgroup_create(self._k("queue"), GROUP, id="0", mkstream=True))
        except JobStoreUnavailable as exc:
            if "BUSYGROUP" not in str(exc.__cause__):
                raise
        self._group_ready = True

    @staticmethod
    def _delivery(entry: Any) -> Delivery:
        entry_id, fields = entry
        return Delivery(str(entry_id), str(fields["id"]), str(fields["spec"]))

    async def _listen_cancels(self) -> None:
        while True:
            pubsub = self._block.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._k("cancel"))
                self.listening.set()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        event = self._cancels.get(str(message["data"]))
                        if event is not None:
                            event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: the flag is re-checked anyway
                log.warning("jobs_cancel_listener_lost", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


def _id(n: int) -> str:
    return f"0-{n}"


def _n(entry_id: Any) -> int:
    return int(str(entry_id).split("-")[1])


class _Follow:
    """One blocking read (``XREAD`` of many streams at once) for every job stream this
    instance's listeners follow, so that a thousand listeners hold one Redis connection; each
    listener gets the entries read after it joined (and dedups them against its own replay)."""

    def __init__(self, redis: aioredis.Redis, call: Callable[..., Awaitable[Any]]) -> None:
        self._redis, self._call = redis, call
        self._since: dict[str, int] = {}
        self._queues: dict[str, set[asyncio.Queue[Any]]] = {}
        self._task: asyncio.Task[None] | None = None

    def follow(self, key: str, after: int) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queues.setdefault(key, set()).add(queue)
        self._since[key] = min(self._since.get(key, after), after)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="imagegate-jobs-follow")
        return queue

    def drop(self, key: str, queue: asyncio.Queue[Any]) -> None:
        queues = self._queues.get(key, set())
        queues.discard(queue)
        if not queues:
            self._queues.pop(key, None)
            self._since.pop(key, None)

    async def _run(self) -> None:
        while self._queues:
            streams: dict[Any, Any] = {key: _id(n) for key, n in self._since.items()}
            try:
                reply: Any = await self._call(
                    functools.partial(self._redis.xread, streams, count=100, block=FOLLOW_MS),
                    timeout=FOLLOW_MS / 1000 + 1.0,
                )
            except Exception:  # noqa: BLE001 - Redis away: listeners time out and check
                await asyncio.sleep(0.5)
                continue
            for key, entries in reply or []:
                key = str(key)
                for entry in entries:
                    if key in self._since:
                        self._since[key] = max(self._since[key], _n(entry[0]))
                    for queue in self._queues.get(key, ()):
                        queue.put_nowait(entry)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
