"""The shared HTTP machinery: one exchange (bounded, redacted error bodies), the polling loop
(transient failures polled through, the job's own failure not, the deadline), gather_all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.helpers import calculate_timeout_when
from imagegate.backends.a1111 import A1111Backend, A1111Settings
from imagegate.backends.http import Answer, Failed, Pending, gather_all
from imagegate.backends.transport import client_timeout
from imagegate.config import Timeouts
from imagegate.errors import (
    BackendError,
    GenerationTimeout,
    Rejected,
    ServerError,
    Unavailable,
)
from imagegate.models import Deadline
from imagegate.testing import serve_app

SECRET = "user-pass-9f8e7d6c"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def backend_at(url: str, session: aiohttp.ClientSession) -> A1111Backend:
    settings = A1111Settings(name="b", base_url=url, username_env="U", password_env="P")
    return A1111Backend(settings, secrets={"username": "me", "password": SECRET}, session=session)


async def test_an_error_body_is_read_only_to_its_cap_and_the_secret_is_masked(
    session: aiohttp.ClientSession,
) -> None:
    huge = (f"boom {SECRET} " + "x" * 1024 * 1024) * 20  # 20 MB error body

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text=huge)

    app = web.Application()
    app.router.add_get("/err", handler)
    async with serve_app(app) as url:
        b = backend_at(url, session)
        with pytest.raises(ServerError) as caught:
            await b.send("GET", url + "/err", deadline=Deadline.after(5), cap=1024)
    assert SECRET not in str(caught.value)
    assert "***" in str(caught.value)
    assert caught.value.status == 500


async def test_a_success_over_its_cap_is_bad_response(session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 10_000)

    app = web.Application()
    app.router.add_get("/big", handler)
    async with serve_app(app) as url:
        with pytest.raises(BackendError) as caught:
            await backend_at(url, session).send("GET", url + "/big", deadline=Deadline.after(5), cap=1000)
    assert caught.value.kind == "bad_response"


async def test_errors_reads_a_route_s_own_error_shape(session: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"why": "no such model"}, status=404)

    app = web.Application()
    app.router.add_get("/m", handler)

    def mine(answer: Answer) -> BackendError:
        return Rejected(f"custom: {answer.json(backend='b')['why']}", status=answer.status)

    async with serve_app(app) as url:
        with pytest.raises(Rejected, match="custom: no such model"):
            await backend_at(url, session).send(
                "GET", url + "/m", deadline=Deadline.after(5), cap=1000, errors=mine
            )


async def test_poll_goes_through_transient_failures_until_the_result(session: aiohttp.ClientSession) -> None:
    b = backend_at("http://127.0.0.1:9", session)
    answers: list[object] = [ServerError("flaky"), Pending("QUEUED"), Unavailable("busy"), "done"]

    async def check() -> str | Pending | Failed:
        item = answers.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    assert await b.poll(check, deadline=Deadline.after(5), interval=0.001, what="job 1") == "done"
    assert answers == []


async def test_poll_ends_at_once_on_a_non_transient_error_or_the_job_s_failure(
    session: aiohttp.ClientSession,
) -> None:
    b = backend_at("http://127.0.0.1:9", session)
    calls = 0

    async def refused() -> str | Pending | Failed:
        nonlocal calls
        calls += 1
        raise Rejected("bad parameters")

    with pytest.raises(Rejected):
        await b.poll(refused, deadline=Deadline.after(5), interval=0.001, what="job")
    assert calls == 1

    async def failed() -> str | Pending | Failed:
        return Failed(ServerError("the worker crashed"))  # transient kind, but the job's verdict

    with pytest.raises(ServerError, match="worker crashed"):
        await b.poll(failed, deadline=Deadline.after(5), interval=0.001, what="job")


async def test_poll_times_out_naming_the_job_its_state_and_the_last_error(
    session: aiohttp.ClientSession,
) -> None:
    b = backend_at("http://127.0.0.1:9", session)
    states: list[object] = [Pending("PROCESSING")]

    async def check() -> str | Pending | Failed:
        if states:
            return states.pop()  # type: ignore[return-value]
        raise Unavailable("overloaded")

    started = time.monotonic()
    with pytest.raises(GenerationTimeout) as caught:
        await b.poll(check, deadline=Deadline.after(0.2), interval=0.02, what="task 7")
    assert time.monotonic() - started < 2.0  # generous: the deadline is 0.2 s
    text = str(caught.value)
    assert "task 7 still PROCESSING" in text and "unavailable: overloaded" in text


async def test_gather_all_raises_the_first_backend_error_and_cancels_the_rest() -> None:
    cancelled = asyncio.Event()

    async def slow() -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    async def broken() -> int:
        await asyncio.sleep(0)
        raise Unavailable("down")

    with pytest.raises(Unavailable):
        await gather_all([slow(), broken()])
    assert cancelled.is_set()
    assert await gather_all([asyncio.sleep(0, result=1), asyncio.sleep(0, result=2)]) == [1, 2]


def test_timeouts_above_five_seconds_fire_on_time_not_at_the_next_whole_second() -> None:
    """aiohttp rounds a timeout above ``ceil_threshold`` (5 s by default) up to the next whole
    second of the loop clock: a 10 s connect budget could fire 11 s in. Ours are not rounded;
    checked with aiohttp's own scheduling arithmetic at a loop time just past a whole second."""
    timeout = client_timeout(Timeouts(connect=10.0, read=60.0), None)
    assert timeout.sock_connect == 10.0
    now = 1000.01
    assert calculate_timeout_when(now, timeout.sock_connect, timeout.ceil_threshold) == pytest.approx(now + 10.0)
    assert calculate_timeout_when(now, timeout.sock_read, timeout.ceil_threshold) == pytest.approx(now + 60.0)
