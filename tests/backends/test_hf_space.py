"""The Space backend against a real Gradio app on loopback (one per test session).

Nothing is mocked: gradio_client talks to a real Gradio 6 server, the Hub is an aiohttp
stand-in with the Hub's own paths, the TLS black hole is a real listener. Timeouts are
fractions of a second, set through the same config keys users set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from imagegate.backends.hf_space.backend import HFSpaceBackend
from imagegate.errors import (
    AuthFailed,
    BadResponse,
    ConnectFailed,
    GenerationTimeout,
    HandshakeTimeout,
    QuotaExhausted,
    RateLimited,
    Rejected,
    ServerError,
    Unavailable,
)
from imagegate.models import Deadline, ImageFormat
from imagegate.testing import hub as hub_emulator
from imagegate.testing import serve_app
from imagegate.testing.gradio_space import RunningSpace, launch_space
from structlog.testing import capture_logs

from tests.backends.support import BackendCase, cli_generate
from tests.conftest import write_config
from tests.routing.support import eventually
from tests.server.kit import closed_port_url

MAPPING = {
    "prompt": "text",
    "negative_prompt": "negative",
    "steps": "num_inference_steps",
    "width": "w",
    "height": "h",
    "guidance_scale": "cfg",
}
SPACE_ID = "owner/standin"
# gradio_client functions that run while a prediction is in flight
PREDICTION_FRAMES = {"get_pred_from_sse_v1plus", "stream_sse_v1plus", "check_for_cancel", "_inner"}


@pytest.fixture(scope="session")
def space() -> Iterator[RunningSpace]:
    """The stand-in Space, launched once for the whole session (/busy: 1 waiting event)."""
    running = launch_space(queue_size=1)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
async def hub() -> AsyncIterator[tuple[str, hub_emulator.HubState]]:
    state = hub_emulator.HubState()
    state.set_space(SPACE_ID, "RUNNING")
    async with serve_app(hub_emulator.create_app(hub=state)) as url:
        yield url, state


SPACE = BackendCase(
    name="standin", kind="hf_space", cls=HFSpaceBackend, deadline_s=20.0,
    request={"prompt": "a red fox", "width": 64, "height": 64},
)
generate = SPACE.generate


def space_backend(
    tmp_path: Path, *, environ: dict[str, str] | None = None, **keys: Any
) -> contextlib.AbstractAsyncContextManager[HFSpaceBackend]:
    """The backend "standin", built from a real config file, inside a running service."""
    return SPACE.backend(None, tmp_path, environ=environ, **keys)


def generate_table(app: RunningSpace, **keys: Any) -> dict[str, Any]:
    return {"src": app.url, "api_name": "/generate", "inputs": MAPPING, **keys}


def prompt_table(src: str, api_name: str, **keys: Any) -> dict[str, Any]:
    """Endpoint ``api_name`` of the app at ``src``, sent the prompt only."""
    return {"src": src, "api_name": api_name, "inputs": {"prompt": "text"}, **keys}


def seed_table(app: RunningSpace, **keys: Any) -> dict[str, Any]:
    """/generate_seed, sent the prompt and the seed, told not to pick its own seed."""
    inputs = {"prompt": "text", "seed": "seed"}
    return {"src": app.url, "api_name": "/generate_seed", "inputs": inputs,
            "fixed": {"randomize_seed": False}, **keys}


def busy_prediction_threads() -> list[str]:
    """Names of threads whose stack is inside a gradio_client prediction right now."""
    names = {t.ident: t.name for t in threading.enumerate()}
    busy = []
    for ident, frame in sys._current_frames().items():
        funcs = {f.f_code.co_name for f, _ in traceback.walk_stack(frame)}
        if funcs & PREDICTION_FRAMES:
            busy.append(names.get(ident, str(ident)))
    return busy


async def wait_for(condition: Any, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return bool(condition())


# --- the happy path ---------------------------------------------------------------------------


async def test_request_fields_reach_the_apps_differently_named_parameters(
    space: RunningSpace, tmp_path: Path
) -> None:
    table = generate_table(space, fixed={"style": "watercolor"})
    async with space_backend(tmp_path, **table) as backend:
        (image,) = await generate(
            backend,
            prompt="a fox at dawn",
            negative_prompt="blurry",
            steps=7,
            width=96,
            height=72,
            guidance_scale=3.5,
        )
    sent = space.calls.last("/generate")
    assert sent == {
        "text": "a fox at dawn",
        "negative": "blurry",
        "num_inference_steps": 7,
        "w": 96,
        "h": 72,
        "cfg": 3.5,
        "style": "watercolor",
    }
    assert (image.width, image.height, image.format) == (96, 72, ImageFormat.PNG)


async def test_unset_request_fields_leave_the_spaces_defaults(
    space: RunningSpace, tmp_path: Path
) -> None:
    async with space_backend(tmp_path, **generate_table(space)) as backend:
        await generate(backend)
    sent = space.calls.last("/generate")
    assert (sent["num_inference_steps"], sent["cfg"], sent["negative"], sent["style"]) == (
        4,
        7.0,
        "",
        "none",
    )


async def test_seed_returned_by_the_space_is_reported(space: RunningSpace, tmp_path: Path) -> None:
    inputs = {"prompt": "text", "seed": "seed", "width": "w", "height": "h"}
    table = seed_table(space, inputs=inputs)
    async with space_backend(tmp_path, **table) as backend:
        (image,) = await generate(backend, seed=4242)
        assert image.seed == 4242 and space.calls.last("/generate_seed")["seed"] == 4242
    table["fixed"] = {"randomize_seed": True}  # the Space picks its own seed: we report that one
    async with space_backend(tmp_path, **table) as backend:
        (image,) = await generate(backend, seed=1)
    assert image.seed is not None and image.seed != 1


async def test_no_seed_given_sends_a_drawn_seed_and_reports_it(
    space: RunningSpace, tmp_path: Path
) -> None:
    async with space_backend(tmp_path, **seed_table(space)) as backend:
        (image,) = await generate(backend)
    assert image.seed == space.calls.last("/generate_seed")["seed"]


async def test_n_images_are_n_calls_with_consecutive_seeds(
    space: RunningSpace, tmp_path: Path
) -> None:
    async with space_backend(tmp_path, **seed_table(space)) as backend:
        images = await generate(backend, seed=10, n=3)
    assert [i.seed for i in images] == [10, 11, 12]


@pytest.mark.parametrize(
    ("api_name", "inputs", "seed"),
    [("/gallery", {"prompt": "text"}, None), ("/captioned", {"prompt": "text"}, 7)],
)
async def test_gallery_and_tuple_with_a_caption_first_yield_the_image(
    space: RunningSpace, tmp_path: Path, api_name: str, inputs: dict[str, str], seed: int | None
) -> None:
    async with space_backend(tmp_path, src=space.url, api_name=api_name, inputs=inputs) as backend:
        (image,) = await generate(backend)
    assert image.format == ImageFormat.PNG and image.seed == seed


async def test_api_name_defaults_to_the_first_endpoint_returning_an_image(
    space: RunningSpace, tmp_path: Path
) -> None:
    async with space_backend(tmp_path, src=space.url, inputs={"prompt": "text"}) as backend:
        (image,) = await generate(backend)
    assert image.info["api_name"] == "/generate"


async def test_mapping_to_a_parameter_the_space_lacks_is_rejected_before_sending(
    space: RunningSpace, tmp_path: Path
) -> None:
    before = space.calls.count("/generate")
    table = generate_table(space, inputs={"prompt": "text", "steps": "steps"})
    async with space_backend(tmp_path, **table) as backend:
        with pytest.raises(Rejected, match="no parameter 'steps'.*num_inference_steps"):
            await generate(backend, steps=3)
    assert space.calls.count("/generate") == before


# --- the app's own errors ---------------------------------------------------------------------


async def test_app_error_is_server_error_with_the_apps_message(
    space: RunningSpace, tmp_path: Path
) -> None:
    table = prompt_table(space.url, "/fail", fixed={"message": "CUDA out of memory"})
    async with space_backend(tmp_path, **table) as backend:
        with pytest.raises(ServerError, match="CUDA out of memory"):
            await generate(backend)


async def test_zero_gpu_quota_text_is_quota_exhausted_with_retry_after(
    space: RunningSpace, tmp_path: Path
) -> None:
    message = (
        "You have exceeded your free GPU quota (60s requested vs. 12s left). "
        "<a href='https://huggingface.co/join'>Create a free account</a> Try again in 0:12:30"
    )
    table = prompt_table(space.url, "/fail", fixed={"message": message})
    async with space_backend(tmp_path, **table) as backend:
        with pytest.raises(QuotaExhausted) as info:
            await generate(backend)
    assert info.value.retry_after == 750.0 and "<a" not in str(info.value)


# --- timeouts, queue, connection faults -------------------------------------------------------


async def test_answer_slower_than_read_timeout_is_generation_timeout(
    space: RunningSpace, tmp_path: Path
) -> None:
    table = prompt_table(space.url, "/slow", fixed={"delay": 3.0}, read_timeout_s=0.5)
    async with space_backend(tmp_path, **table) as backend:
        start = time.monotonic()
        with pytest.raises(GenerationTimeout):
            await generate(backend, deadline_s=30)
        assert time.monotonic() - start < 0.5 + 1.0  # building the client takes ~0.1 s more


async def test_full_queue_is_rate_limited(space: RunningSpace, tmp_path: Path) -> None:
    table = prompt_table(space.busy_url, "/busy", fixed={"delay": 1.2}, max_concurrency=3)
    async with space_backend(tmp_path, **table) as backend, aiohttp.ClientSession() as http:

        async def one_waiting() -> bool:  # an event in the app's queue, not yet running
            async with http.get(f"{space.busy_url}/gradio_api/queue/status") as resp:
                return int((await resp.json())["queue_size"]) >= 1

        first = asyncio.create_task(generate(backend, prompt="first"))  # runs (concurrency limit 1)
        await wait_for(lambda: space.calls.count("/busy") >= 1)
        second = asyncio.create_task(generate(backend, prompt="second"))  # waits: the queue is full
        await eventually(one_waiting)
        assert space.calls.count("/busy") == 1  # "first" still runs, "second" waits
        with pytest.raises(RateLimited, match="busy"):
            await generate(backend, prompt="third")
        assert len(await first) == 1 and len(await second) == 1


async def test_tls_black_hole_is_handshake_timeout_without_blocking_the_loop(
    blackhole_url: str, tmp_path: Path
) -> None:
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - before - 0.01)

    # a 1 s handshake budget: a loop blocked by it would lag ~1 s, far from a busy CPU's lags
    async with space_backend(tmp_path, src=blackhole_url, connect_timeout_s=1.0) as backend:
        tick = asyncio.create_task(ticker())
        start = time.monotonic()
        with pytest.raises(HandshakeTimeout):
            await generate(backend)
        elapsed = time.monotonic() - start
        tick.cancel()
    assert 0.9 < elapsed < 1.0 + 1.0
    assert max(lags) < 0.5


async def test_closed_port_is_connect_failed_refused(tmp_path: Path) -> None:
    async with space_backend(tmp_path, src=closed_port_url()) as backend:
        with pytest.raises(ConnectFailed) as info:
            await generate(backend)
    assert info.value.refused


# --- the Hub runtime stage --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "retry_after", "text"),
    [
        ("SLEEPING", 120.0, "cold start takes minutes"),
        ("STOPPED", 120.0, "cold start takes minutes"),
        ("BUILDING", 30.0, "not ready"),
        ("APP_STARTING", 30.0, "not ready"),
        ("RUNTIME_ERROR", 1800.0, "owner"),
        ("BUILD_ERROR", 1800.0, "owner"),
        ("CONFIG_ERROR", 1800.0, "owner"),
        ("PAUSED", 1800.0, "owner"),
    ],
)
async def test_space_that_is_not_running_is_unavailable_before_any_gradio_call(
    space: RunningSpace,
    hub: tuple[str, hub_emulator.HubState],
    tmp_path: Path,
    stage: str,
    retry_after: float,
    text: str,
) -> None:
    hub_url, state = hub
    state.set_space(
        SPACE_ID, stage, error_message="ImportError: torch" if "ERROR" in stage else None
    )
    table = generate_table(space, space=SPACE_ID, hub_url=hub_url)
    async with space_backend(tmp_path, **table) as backend:
        with pytest.raises(Unavailable, match=text) as info:
            await generate(backend)
        health = await backend.probe()
    assert info.value.retry_after == retry_after
    assert backend._session is None  # no client was built
    assert health.ok is False and health.last_error_kind == "unavailable"


@pytest.mark.parametrize("stage", ["RUNNING", "RUNNING_BUILDING", "RUNNING_APP_STARTING"])
async def test_running_space_generates_through_src_and_probes_ok(
    space: RunningSpace, hub: tuple[str, hub_emulator.HubState], tmp_path: Path, stage: str
) -> None:
    hub_url, state = hub
    state.set_space(SPACE_ID, stage, hardware="zero-a10g")
    async with space_backend(
        tmp_path, **generate_table(space, space=SPACE_ID, hub_url=hub_url)
    ) as backend:
        (image,) = await generate(backend)
        health = await backend.probe()
    assert image.width == 64
    assert health.ok and health.detail == f"{stage} on zero-a10g"


async def test_sleeping_space_with_wake_up_opens_its_hub_page(
    space: RunningSpace, hub: tuple[str, hub_emulator.HubState], tmp_path: Path
) -> None:
    hub_url, state = hub
    state.set_space(SPACE_ID, "SLEEPING")
    table = generate_table(space, space=SPACE_ID, hub_url=hub_url, wake_up=True)
    async with space_backend(tmp_path, **table) as backend:
        with pytest.raises(Unavailable, match="wake-up requested"):
            await generate(backend)
    assert state.wake_requests == [SPACE_ID] and state.spaces[SPACE_ID].stage == "APP_STARTING"


async def test_private_space_needs_the_token_and_a_missing_space_is_auth_failed(
    space: RunningSpace, hub: tuple[str, hub_emulator.HubState], tmp_path: Path
) -> None:
    hub_url, state = hub
    state.token = "hf_secret_value"
    state.set_space(SPACE_ID, "RUNNING", private=True)
    table = generate_table(space, space=SPACE_ID, hub_url=hub_url, token_env="SPACE_TOKEN")
    async with space_backend(
        tmp_path, environ={"SPACE_TOKEN": "hf_secret_value"}, **table
    ) as backend:
        assert len(await generate(backend)) == 1
    with capture_logs() as logs:
        async with space_backend(tmp_path, environ={"SPACE_TOKEN": "hf_wrong"}, **table) as backend:
            with pytest.raises(AuthFailed):
                await generate(backend)
    assert "hf_wrong" not in json.dumps(logs, default=str)
    table["space"] = "owner/missing"
    async with space_backend(tmp_path, **table) as backend:
        with pytest.raises(AuthFailed, match="404"):
            await generate(backend)


async def test_unreachable_hub_does_not_stop_generation_but_fails_the_probe(
    space: RunningSpace, tmp_path: Path
) -> None:
    table = generate_table(space, space=SPACE_ID, hub_url=closed_port_url())
    async with space_backend(tmp_path, **table) as backend:
        with capture_logs() as logs:
            assert len(await generate(backend)) == 1
        health = await backend.probe()
    assert any(e["event"] == "space_runtime_unknown" for e in logs)
    assert health.ok is False and health.last_error_kind == "connect_failed"


async def test_probe_of_a_bare_url_reads_the_gradio_config(
    space: RunningSpace, tmp_path: Path
) -> None:
    async with space_backend(tmp_path, **generate_table(space)) as backend:
        health = await backend.probe()
    assert health.ok and health.detail is not None and health.detail.startswith("gradio 6")


# --- threads, cancellation, the client's life -------------------------------------------------


async def test_cancelled_caller_leaves_no_thread_running_and_no_pending_task(
    space: RunningSpace, tmp_path: Path
) -> None:
    table = prompt_table(space.url, "/slow", fixed={"delay": 0.05})
    async with space_backend(tmp_path, **table) as backend:
        await generate(backend)  # warm: the client and its thread pools exist
        await asyncio.sleep(0.2)
        baseline = threading.active_count()
        before = space.calls.count("/slow")
        backend._fixed = {"delay": 30.0}
        others = {t for t in asyncio.all_tasks() if not t.done()}  # e.g. the service's prober
        task = asyncio.create_task(generate(backend))
        assert await wait_for(lambda: space.calls.count("/slow") > before)
        assert busy_prediction_threads()  # the prediction is in flight in a worker thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await wait_for(lambda: not busy_prediction_threads(), timeout=2.0), (
            busy_prediction_threads()
        )
        assert await wait_for(lambda: threading.active_count() <= baseline, timeout=2.0)
        assert {t for t in asyncio.all_tasks() if not t.done()} <= others


async def test_concurrent_calls_are_bounded_by_max_concurrency(
    space: RunningSpace, tmp_path: Path
) -> None:
    table = prompt_table(space.url, "/slow", fixed={"delay": 0.2}, max_concurrency=2)
    space.calls.peak_in_flight = 0
    async with space_backend(tmp_path, **table) as backend:
        results = await asyncio.gather(*(generate(backend, prompt=f"p{i}") for i in range(6)))
    assert len(results) == 6 and space.calls.peak_in_flight == 2


async def test_caller_waiting_for_a_slot_past_its_deadline_times_out_without_sending(
    space: RunningSpace, tmp_path: Path
) -> None:
    table = prompt_table(space.url, "/slow", fixed={"delay": 3.0}, max_concurrency=1)
    async with space_backend(tmp_path, **table) as backend:
        holder = asyncio.create_task(generate(backend, prompt="holder"))
        assert await wait_for(lambda: space.calls.count("/slow") > 0 and backend._slots.locked())
        start = time.monotonic()
        with pytest.raises(GenerationTimeout, match="max_concurrency=1"):
            await generate(backend, deadline_s=0.3, prompt="waiter")
        assert time.monotonic() - start < 0.3 + 1.5  # not the holder's 3 s
        assert len(await holder) == 1
    assert all(c[1]["text"] != "waiter" for c in space.calls.calls)


async def test_client_is_built_once_reused_and_closed_on_aclose(
    space: RunningSpace, tmp_path: Path
) -> None:
    with capture_logs() as logs:
        async with space_backend(tmp_path, **generate_table(space)) as backend:
            await generate(backend)
            client = backend._session.client if backend._session else None
            # Distinct prompts: gradio caches an output under the hash of its bytes and
            # rewrites that file for every identical output, so a download that overlaps the
            # rewrite reads it truncated (gradio's processing_utils.save_pil_to_cache).
            await asyncio.gather(generate(backend, prompt="one"), generate(backend, prompt="two"))
            assert backend._session is not None and backend._session.client is client
    assert [e["event"] for e in logs].count("space_client_built") == 1
    assert client is not None and not client.heartbeat.is_alive()
    assert client.executor._shutdown and backend._executor._shutdown


async def test_client_is_rebuilt_after_a_connection_level_failure(
    space: RunningSpace, tmp_path: Path
) -> None:
    async with tcp_switch(space.url) as (url, switch):
        with capture_logs() as logs:
            async with space_backend(tmp_path, **generate_table(space, src=url)) as backend:
                await generate(backend)
                switch["drop"] = True
                with pytest.raises(ConnectFailed):
                    await generate(backend)
                switch["drop"] = False
                await generate(backend)
    events = [e["event"] for e in logs]
    assert events.count("space_client_built") == 2 and "space_client_dropped" in events


@contextlib.asynccontextmanager
async def tcp_switch(target: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A loopback TCP forwarder to ``target``: closes new connections while ``drop`` is set;
    ``cut()`` closes every open one (a connection lost mid-answer)."""
    host, port = target.removeprefix("http://").split(":")
    open_writers: set[asyncio.StreamWriter] = set()

    def cut() -> None:
        for writer in list(open_writers):
            writer.transport.abort()

    switch: dict[str, Any] = {"drop": False, "cut": cut}

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_writers.add(writer)
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        open_writers.discard(writer)
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if switch["drop"]:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", switch
    finally:
        cut()
        server.close()


@contextlib.asynccontextmanager
async def spoiled_files(target: str, times: int) -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP proxy to the app at ``target`` that answers its first ``times`` file downloads
    (``/file=``) 200 with an empty body, as gradio does when a download overlaps a rewrite of
    that file (``processing_utils.save_pil_to_cache`` rewrites the file named by the hash of
    the output's bytes for every identical output). Yields its URL and the spoiled paths."""
    spoiled: list[str] = []
    hop = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
    async with aiohttp.ClientSession(auto_decompress=False) as upstream:

        async def handle(request: web.Request) -> web.StreamResponse:
            if "/file=" in request.path and len(spoiled) < times:
                spoiled.append(request.path)
                return web.Response(body=b"", content_type="image/webp")
            headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
            headers["Host"] = request.host  # gradio builds its URLs from it: they stay ours
            async with upstream.request(
                request.method, target + request.path_qs, headers=headers,
                data=await request.read(), allow_redirects=False,
            ) as resp:
                answer = web.StreamResponse(status=resp.status, headers={
                    k: v for k, v in resp.headers.items() if k.lower() not in hop
                })
                await answer.prepare(request)
                async for chunk in resp.content.iter_any():
                    await answer.write(chunk)
                await answer.write_eof()
                return answer

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        async with serve_app(app) as url:
            yield url, spoiled


@pytest.mark.parametrize(("spoil", "ok"), [(1, True), (5, False)])
async def test_a_download_the_app_spoils_is_fetched_once_more_not_generated_again(
    space: RunningSpace, tmp_path: Path, spoil: int, ok: bool
) -> None:
    """The image is made (and on a paid Space, paid for): a download that comes back empty
    is fetched once more instead of failing over to another generation; twice is an error."""
    async with (
        spoiled_files(space.url, times=spoil) as (url, spoiled),
        space_backend(tmp_path, **generate_table(space, src=url)) as backend,
    ):
        before = space.calls.count("/generate")
        with capture_logs() as logs:
            if ok:
                [image] = await generate(backend, prompt=f"spoiled {spoil}")
                assert image.format is ImageFormat.PNG and image.data
            else:
                with pytest.raises(BadResponse, match="empty body"):
                    await generate(backend, prompt=f"spoiled {spoil}")
        assert space.calls.count("/generate") == before + 1  # one generation either way
    assert len(spoiled) == (1 if ok else 2) and len(set(spoiled)) == 1
    assert [e["event"] for e in logs].count("space_download_retried") == 1


async def test_connection_lost_mid_generation_is_connect_failed(
    space: RunningSpace, tmp_path: Path
) -> None:
    async with (
        tcp_switch(space.url) as (url, switch),
        space_backend(tmp_path, **prompt_table(url, "/slow", fixed={"delay": 5.0})) as backend,
    ):
        before = space.calls.count("/slow")
        task = asyncio.create_task(generate(backend))
        assert await wait_for(lambda: space.calls.count("/slow") > before)
        await asyncio.sleep(0.3)  # the result stream is open too
        start = time.monotonic()
        switch["cut"]()
        with pytest.raises(ConnectFailed):
            await task
        assert time.monotonic() - start < 3.0  # not the 5 s the app would have taken
        assert backend._session is None  # dropped: the next call builds a new client


# --- connect (what routing races) -------------------------------------------------------------


async def test_connect_builds_the_client_once_and_predicts_nothing(space: RunningSpace, tmp_path: Path) -> None:
    async with space_backend(tmp_path, **generate_table(space)) as backend:
        calls, generated = len(space.calls.calls), space.calls.count("/generate")
        with capture_logs() as logs:
            cold = await backend.connect(Deadline.after(20))
            warm = await backend.connect(Deadline.after(20))
            assert len(space.calls.calls) == calls  # the app's config was read; no job ran
            await generate(backend)
        built = [e for e in logs if e["event"] == "space_client_built"]
        assert len(built) == 1  # the generation used the client connect() built
        assert not cold.reused and cold.handshake_s > 0 and warm.reused
        assert space.calls.count("/generate") == generated + 1


async def test_connect_to_a_tls_black_hole_is_a_handshake_timeout(blackhole_url: str, tmp_path: Path) -> None:
    async with space_backend(tmp_path, src=blackhole_url, connect_timeout_s=0.3) as backend:
        with pytest.raises(HandshakeTimeout):
            await backend.connect(Deadline.after(5))


# --- the CLI ----------------------------------------------------------------------------------


async def test_cli_generate_through_a_space_backend(space: RunningSpace, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        f'[[backend]]\nname = "standin"\nkind = "hf_space"\nsrc = "{space.url}"\n'
        'api_name = "/generate"\n'
        '[backend.inputs]\nprompt = "text"\nwidth = "w"\nheight = "h"\n',
    )
    doc = await cli_generate(
        "a lighthouse", "--backend", "standin", "--width", "128", "--height", "64",
        config=config, env={"NO_PROXY": "127.0.0.1,localhost"}, cwd=tmp_path, timeout=60,
    )
    (image,) = doc["images"]  # its file opens at 128x64
    assert doc["backend"] == "standin" and (image["width"], image["height"]) == (128, 64)
    assert space.calls.last("/generate")["text"] == "a lighthouse"
